from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from higgs_cli.prompt import (
    DEFAULT_SCENE,
    MULTI_SPEAKER_INSTRUCTION,
    Message,
    Speaker,
    conversation,
    encode_prompt,
    render,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOK = Tokenizer.from_file(str(FIXTURES / "tokenizer/tokenizer.json"))
# Special ids of the tiny tokenizer: 384 + (Llama-3 id - 128000).
BOT, SH, EH, EOM, EOT = 384, 390, 391, 392, 393
AEOS, AOBOS, AOUT = 396, 397, 400
SCENE_START, SCENE_END = 402, 403
B, E = 1024, 1025


def enc(text):
    return TOK.encode(text, add_special_tokens=False).ids


def header(role):
    return [SH, *enc(role), EH, *enc("\n\n")]


def test_smart_voice_with_scene():
    messages = conversation("Good morning.", [], scene="A quiet room.")
    assert render(messages) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Generate audio following instruction.\n\n"
        "<|scene_desc_start|>\nA quiet room.\n<|scene_desc_end|><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nGood morning.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>"
    )
    p = encode_prompt(TOK, messages, audio_out_id=AOUT, stream_bos=B, stream_eos=E)
    assert p.input_ids == [
        BOT,
        *header("system"),
        *enc("Generate audio following instruction.\n\n"),
        SCENE_START,
        *enc("\nA quiet room.\n"),
        SCENE_END,
        EOT,
        *header("user"),
        *enc("Good morning."),
        EOT,
        *header("assistant"),
        AOBOS,
    ]
    assert p.audio_ids.shape == (0, 0)


def test_smart_voice_without_scene_keeps_the_instruction():
    assert render(conversation("Hi.", [], scene=None)).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Generate audio following instruction.<|eot_id|>"
    )


def test_described_voice_goes_in_the_scene_block():
    messages = conversation("Hi.", [Speaker(description="A deep voice.")], scene=DEFAULT_SCENE)
    assert messages[0].text == (
        "Generate audio following instruction.\n\n<|scene_desc_start|>\n"
        f"{DEFAULT_SCENE}\n\nSPEAKER0: A deep voice.\n<|scene_desc_end|>"
    )
    messages = conversation("Hi.", [Speaker(description="A deep voice.")], scene=None)
    assert messages[0].text == (
        "Generate audio following instruction.\n\n<|scene_desc_start|>\n"
        "SPEAKER0: A deep voice.\n<|scene_desc_end|>"
    )


def test_voice_clone_layout_and_audio_positions():
    K, T = 8, 5
    ref = np.arange(K * T).reshape(K, T) % 1024
    messages = conversation(
        "New words.", [Speaker(transcript="Old words.", codes=ref)], scene="Room."
    )
    assert render(messages) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Generate audio following instruction.\n\n"
        "<|scene_desc_start|>\nRoom.\n<|scene_desc_end|><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nOld words.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        "<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nNew words.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>"
    )
    p = encode_prompt(TOK, messages, audio_out_id=AOUT, stream_bos=B, stream_eos=E)
    n = T + 2 + K - 1  # [BOS, codes, EOS] wrapped and delayed
    assert p.input_ids.count(AOUT) == n
    start = p.input_ids.index(AOUT)
    assert p.input_ids[start - 1] == AOBOS and p.input_ids[start + n] == AEOS
    assert p.audio_ids.shape == (n, K)
    # Row k of the delayed clip: k + 1 BOS, the codes, then K - k EOS.
    for k in range(K):
        col = p.audio_ids[:, k]
        assert (col[: k + 1] == B).all()
        assert col[k + 1 : k + 1 + T].tolist() == ref[k].tolist()
        assert (col[k + 1 + T :] == E).all()


def test_voice_clone_without_scene_has_no_system_turn():
    ref = np.zeros((8, 3), np.int32)
    messages = conversation("New.", [Speaker(transcript="Old.", codes=ref)], scene=None)
    assert [m.role for m in messages] == ["user", "assistant", "user"]
    assert render(messages).startswith(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nOld.<|eot_id|>"
    )


def test_several_references_are_tagged():
    a, b = np.zeros((8, 2), np.int32), np.ones((8, 3), np.int32)
    text = "[SPEAKER0] Hello.\n[SPEAKER1] Hi!"
    messages = conversation(
        text,
        [Speaker(transcript="I am A.", codes=a), Speaker(transcript="I am B.", codes=b)],
        scene="Room.",
    )
    assert [m.text for m in messages if m.role == "user"] == [
        "[SPEAKER0] I am A.",
        "[SPEAKER1] I am B.",
        text,
    ]
    p = encode_prompt(TOK, messages, audio_out_id=AOUT, stream_bos=B, stream_eos=E)
    assert p.audio_ids.shape == ((2 + 2 + 7) + (3 + 2 + 7), 8)


def test_multi_speaker_without_references():
    text = "[SPEAKER0] Hello.\n[SPEAKER1] Hi!"
    messages = conversation(
        text,
        [Speaker(description="A bright voice."), Speaker(description="A low voice.")],
        scene="Room.",
    )
    assert messages[0] == Message(
        "system",
        f"{MULTI_SPEAKER_INSTRUCTION}\n\n<|scene_desc_start|>\nRoom.\n\n"
        "SPEAKER0: A bright voice.\nSPEAKER1: A low voice.\n<|scene_desc_end|>",
    )
    assert messages[1:] == [Message("user", text)]
    # Tags alone make it a dialogue, even with no voices at all.
    assert conversation(text, [], scene=None)[0].text == MULTI_SPEAKER_INSTRUCTION


def test_context_chunks_are_replayed_and_assistant_turns_join_with_eom():
    ref = np.zeros((8, 2), np.int32)
    ctx = [("First part.", np.ones((8, 4), np.int32))]
    messages = conversation(
        "Second part.", [Speaker(transcript="Ref.", codes=ref)], scene=None, context=ctx
    )
    assert [(m.role, m.text) for m in messages] == [
        ("user", "Ref."),
        ("assistant", ""),
        ("user", "First part."),
        ("assistant", ""),
        ("user", "Second part."),
    ]
    p = encode_prompt(TOK, messages, audio_out_id=AOUT, stream_bos=B, stream_eos=E)
    assert p.audio_ids.shape == ((2 + 9) + (4 + 9), 8)
    two = [Message("assistant", audio=ref), Message("assistant", audio=ref)]
    assert "<|audio_eos|><|eom_id|><|start_header_id|>assistant" in render(two)


def test_bad_messages():
    with pytest.raises(ValueError, match="role"):
        Message("narrator", "x")
    with pytest.raises(ValueError, match="assistant"):
        Message("user", audio=np.zeros((8, 1)))
