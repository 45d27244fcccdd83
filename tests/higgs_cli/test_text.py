import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from higgs_cli.text import chunk_text, count_words, normalize, split_sentences


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
    assert normalize("  a   b \n\n  c  ") == "a b\nc."


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
