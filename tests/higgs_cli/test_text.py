import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from higgs_cli.text import chunk_text, count_words, normalize, sound_events, split_sentences


def test_normalize_like_the_release_examples():
    assert normalize("It was 20°C (warm) [laugh]") == (
        "It was 20 degrees Celsius warm <SE>[Laughter]</SE>"
    )
    assert normalize("no punctuation") == "no punctuation."
    assert normalize("Question?") == "Question?"
    assert normalize("[music start] la la [music end]") == (
        "<SE_s>[Music]</SE_s> la la <SE_e>[Music]</SE_e>"
    )
    assert normalize("你好，世界！") == "你好, 世界!"
    # Blank lines stay as one paragraph break (the release drops them; chunks end there).
    assert normalize("  a   b \n\n\n  c  ") == "a b\n\nc."


# normalize_chinese_punctuation's table in boson-ai/higgs-audio examples/generation.py,
# as (full-width, replacement) pairs in its order.
RELEASE_FULL_WIDTH = [
    ("，", ", "), ("。", "."), ("：", ":"), ("；", ";"), ("？", "?"), ("！", "!"),
    ("（", "("), ("）", ")"), ("【", "["), ("】", "]"), ("《", "<"), ("》", ">"),
    ("“", '"'), ("”", '"'), ("‘", "'"), ("’", "'"), ("、", ","), ("—", "-"),
    ("…", "..."), ("·", "."), ("「", '"'), ("」", '"'), ("『", '"'), ("』", '"'),
]  # fmt: skip


@pytest.mark.parametrize(("zh", "en"), RELEASE_FULL_WIDTH)
def test_full_width_punctuation_as_the_release_maps_it(zh, en):
    # After the table, the release turns ( ) into spaces; "x" keeps the end from
    # taking a final period.
    want = f"a{en}b x".replace("(", " ").replace(")", " ")
    assert normalize(f"a{zh}b x") == " ".join(want.split()) + "."


def test_the_final_period_goes_at_the_end_of_the_whole_text_only():
    # generation.py normalises the transcript once (adding "." only if the whole text
    # ends without punctuation), then chunks: a sentence split between words or at a
    # clause gets no falling ending in the middle.
    text = "one two three four five six seven eight nine ten eleven twelve"
    chunks = chunk_text(normalize(text), max_words=4)
    assert chunks == ["one two three four", "five six seven eight", "nine ten eleven twelve."]
    chunks = chunk_text(normalize("alpha beta, gamma delta, epsilon zeta"), max_words=2)
    assert chunks == ["alpha beta,", "gamma delta,", "epsilon zeta."]


def test_a_sound_event_span_is_never_split():
    text = normalize(
        "Short intro. [music start] I will remember this, thought Ender, when I am "
        "defeated. To keep dignity. [music end] After. More words here now."
    )
    chunks = chunk_text(text, max_words=4)
    span = [c for c in chunks if "<SE_s>" in c]
    assert len(span) == 1 and "<SE_e>[Music]</SE_e>" in span[0]
    assert span[0].startswith("<SE_s>[Music]</SE_s> I will remember this,")
    assert " ".join(chunks).split() == text.split()  # nothing lost, order kept
    # Across lines and speaker turns too.
    text = normalize(
        "[SPEAKER0] [humming start] la la.\n[SPEAKER1] la [humming end] See? Done now."
    )
    assert chunk_text(text, max_words=2) == [
        "[SPEAKER0] <SE_s>[Humming]</SE_s> la la.\n[SPEAKER1] la <SE_e>[Humming]</SE_e> See?",
        "[SPEAKER1] Done now.",
    ]


def test_sound_events_are_counted():
    assert sound_events(normalize("[laugh] Hi [music start] la [music end] [cough]")) == 3


def test_sentences_keep_abbreviations_and_numbers_whole():
    assert split_sentences("Dr. Smith paid 3.50 dollars. Then he left! Why? Because.") == [
        "Dr. Smith paid 3.50 dollars.",
        "Then he left!",
        "Why?",
        "Because.",
    ]
    assert split_sentences('He said "Stop." She stopped.') == ['He said "Stop."', "She stopped."]
    assert split_sentences("你好。我很好！") == ["你好。", "我很好！"]


def test_short_text_is_one_chunk():
    assert chunk_text("Good morning. How are you?") == ["Good morning. How are you?"]


def test_chunks_end_at_sentences_and_paragraphs():
    text = "One two three. Four five six. Seven eight.\n\nNine ten."
    assert chunk_text(text, max_words=6) == [
        "One two three. Four five six.",
        "Seven eight.",
        "Nine ten.",
    ]


def test_long_sentences_break_at_clauses_then_words():
    text = "alpha beta gamma, delta epsilon zeta, eta theta iota kappa lambda mu nu xi"
    chunks = chunk_text(text, max_words=4)
    assert chunks == [
        "alpha beta gamma,",
        "delta epsilon zeta,",
        "eta theta iota kappa",
        "lambda mu nu xi",
    ]


def test_speaker_turns_carry_their_tag_into_new_chunks():
    text = "[SPEAKER0] One two three. Four five six.\n[SPEAKER1] Seven. Eight nine."
    assert chunk_text(text, max_words=4) == [
        "[SPEAKER0] One two three.",
        "[SPEAKER0] Four five six.\n[SPEAKER1] Seven.",
        "[SPEAKER1] Eight nine.",
    ]


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="max_words"):
        chunk_text("x", max_words=0)


words = st.text(alphabet="abcdefgh", min_size=1, max_size=8)
sentence = st.builds(
    lambda ws, end: " ".join(ws) + end,
    st.lists(words, min_size=1, max_size=15),
    st.sampled_from(".!?,"),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(sentence, min_size=1, max_size=6), min_size=1, max_size=4), st.integers(1, 20)
)
def test_chunking_never_loses_or_splits_words(paragraphs, max_words):
    text = "\n\n".join(" ".join(p) for p in paragraphs)
    chunks = chunk_text(text, max_words)
    assert all(count_words(c) <= max_words for c in chunks)
    # Every word survives, in order, whole.
    assert " ".join(chunks).split() == text.split()
    # No chunk spans a paragraph break.
    assert len(chunks) >= len(paragraphs)
    assert all(re.fullmatch(r"[^\n]+", c) for c in chunks)
