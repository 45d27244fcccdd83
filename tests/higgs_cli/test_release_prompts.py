"""Our prompts, token for token, against prompts made by the release's own code.

``tests/fixtures/prompts/release.json`` was written by
``scripts/make_prompt_fixtures.py``, which runs Boson AI's prompt code
(``examples/generation.py``, ``prepare_chatml_sample``, the collator and the
model's placeholder merge) on each case; this test reads only the JSON.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from higgs_cli.prompt import Speaker, conversation, encode_prompt, speaker_tags
from higgs_cli.text import chunk_text, normalize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOK = Tokenizer.from_file(str(FIXTURES / "tokenizer/tokenizer.json"))
CONFIG = json.loads((FIXTURES / "tiny-model/config.json").read_text())
CASES = json.loads((FIXTURES / "prompts/release.json").read_text(encoding="utf-8"))["cases"]
K = CONFIG["audio_num_codebooks"]
# The fixture's chunk texts are sentences of at most six words: what our chunker
# makes of the whole text at this size.
CHUNK_WORDS = 6


def params(cases):
    return [pytest.param(c, id=c["name"]) for c in cases]


def codes(rows) -> np.ndarray:
    return np.array(rows, dtype=np.int32).reshape(K, -1)


def our_prompt(case):
    """The prompt through our own path, as ``Generation.prompt`` builds it."""
    speakers = [
        Speaker(transcript=v["transcript"], codes=codes(v["codes"])) for v in case["voices"]
    ]
    messages = conversation(
        case["chunk"],
        speakers,
        scene=case["scene"],
        context=[(c["text"], codes(c["codes"])) for c in case["context"]],
        refs_in_system=case["refs_in_system"],
        # the whole text's tags, as the pipeline gives every chunk (the release's rule)
        tags=speaker_tags(case["text"]),
    )
    return encode_prompt(
        TOK,
        messages,
        audio_out_id=CONFIG["audio_out_token_idx"],
        audio_in_id=CONFIG["audio_in_token_idx"],
        stream_bos=CONFIG["audio_stream_bos_id"],
        stream_eos=CONFIG["audio_stream_eos_id"],
    )


def first_difference(ours: list[int], theirs: list[int]) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
        min(len(ours), len(theirs)),
    )

    def show(ids):
        return repr(TOK.decode(ids[at : at + 12], skip_special_tokens=False))

    return (
        f"first difference at position {at} (ours {len(ours)} ids, the release's "
        f"{len(theirs)}): ours {ours[at : at + 12]} {show(ours)}, "
        f"the release's {theirs[at : at + 12]} {show(theirs)}"
    )


@pytest.mark.parametrize("case", params(CASES))
def test_normalisation_matches_the_release(case):
    # Cases hold no blank lines: there ours keeps one paragraph break on purpose
    # (our chunker ends a chunk there) where the release drops it.
    assert normalize(case["text"]) == case["normalized"]


@pytest.mark.parametrize("case", params([c for c in CASES if c["context"]]))
def test_context_chunks_are_our_chunks(case):
    # Long texts: the release chunks by word count (ending a paragraph's last
    # chunk with "\n\n"), we chunk at sentences. That is by design, so the
    # fixture gives the release's generate loop our chunks rather than testing
    # its chunker; here they are checked to be what our chunker makes.
    chunks = [c["text"] for c in case["context"]] + [case["chunk"]]
    assert chunk_text(case["normalized"], CHUNK_WORDS) == chunks


@pytest.mark.parametrize("case", params(CASES))
def test_prompt_matches_the_release(case):
    prompt = our_prompt(case)
    assert prompt.input_ids == case["input_ids"], first_difference(
        prompt.input_ids, case["input_ids"]
    )
    # One placeholder per clip, as the release's collator sees the prompt.
    assert prompt.text == case["prompt"]
    # The audio rows: delayed codes with stream BOS/EOS, audio in and out in order.
    expected = np.array(case["audio"], dtype=np.int32).reshape(-1, K)
    np.testing.assert_array_equal(prompt.audio_ids.reshape(-1, K), expected)
    np.testing.assert_array_equal(prompt.audio_out, np.array(case["audio_out"], dtype=bool))
