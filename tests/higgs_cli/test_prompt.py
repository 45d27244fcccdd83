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
ABOS, AEOS, AOBOS, AIN, AOUT = 395, 396, 397, 399, 400
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


# The release's MULTISPEAKER_DEFAULT_SYSTEM_MESSAGE, copied from
# boson-ai/higgs-audio examples/generation.py (the reference's own string).
RELEASE_MULTISPEAKER = """You are an AI assistant designed to convert text into speech.
If the user's message includes a [SPEAKER*] tag, do not read out the tag and generate speech for the following text, using the specified voice.
If no speaker tag is present, select a suitable voice on your own."""  # noqa: E501


def test_multi_speaker_message_is_the_releases():
    assert MULTI_SPEAKER_INSTRUCTION == RELEASE_MULTISPEAKER


def test_dialogue_without_voices_is_the_releases_smart_multi_speaker_mode():
    # generation.py: no ref_audio and more than one tag -> the multi-speaker system
    # message, scene and "SPEAKERn: feminine/masculine" alternating over the sorted tags.
    text = "[SPEAKER1] Hi!\n[SPEAKER0] Hello.\n[SPEAKER2] Hey."
    messages = conversation(text, [], scene="Room.")
    assert messages == [
        Message(
            "system",
            f"{RELEASE_MULTISPEAKER}\n\n<|scene_desc_start|>\nRoom.\n\n"
            "SPEAKER0: feminine\nSPEAKER1: masculine\nSPEAKER2: feminine\n<|scene_desc_end|>",
        ),
        Message("user", text),
    ]
    assert conversation(text, [], scene=None)[0].text == (
        f"{RELEASE_MULTISPEAKER}\n\n<|scene_desc_start|>\n"
        "SPEAKER0: feminine\nSPEAKER1: masculine\nSPEAKER2: feminine\n<|scene_desc_end|>"
    )


def test_one_tag_is_not_a_dialogue():
    # len(speaker_tags) > 1 starts the multi-speaker mode; one tag is smart voice.
    messages = conversation("[SPEAKER0] Hello there.", [], scene=None)
    assert messages[0] == Message("system", "Generate audio following instruction.")


def test_one_reference_gets_no_speaker_prefix_even_in_a_tagged_text():
    ref = np.zeros((8, 2), np.int32)
    text = "[SPEAKER0] Hello.\n[SPEAKER0] Again."
    messages = conversation(text, [Speaker(transcript="I am A.", codes=ref)], scene=None)
    assert [m.text for m in messages if m.role == "user"] == ["I am A.", text]


def test_described_voices_are_the_releases_profile_layout():
    # generation.py's "profile:" voices: the plain instruction (not the multi-speaker
    # one), "SPEAKERn: description" lines after the scene, no reference turns.
    text = "[SPEAKER0] Hello.\n[SPEAKER1] Hi!"
    messages = conversation(
        text,
        [Speaker(description="A bright voice."), Speaker(description="A low voice.")],
        scene="Room.",
    )
    assert messages == [
        Message(
            "system",
            "Generate audio following instruction.\n\n<|scene_desc_start|>\nRoom.\n\n"
            "SPEAKER0: A bright voice.\nSPEAKER1: A low voice.\n<|scene_desc_end|>",
        ),
        Message("user", text),
    ]


def test_references_in_the_system_turn_are_audio_in():
    # generation.py --ref_audio_in_system_message: "SPEAKERn: <audio>" lines in the
    # scene block, split into text and audio contents; prepare_chatml_sample renders
    # audio in a system turn as <|audio_bos|><|AUDIO|><|audio_eos|>, each content
    # tokenized on its own.
    K = 8
    a, b = np.full((K, 2), 5, np.int32), np.full((K, 3), 6, np.int32)
    text = "[SPEAKER0] Hello.\n[SPEAKER1] Hi!"
    speakers = [Speaker(transcript="I am A.", codes=a), Speaker(transcript="I am B.", codes=b)]
    messages = conversation(text, speakers, scene="Room.", refs_in_system=True)
    assert render(messages) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Generate audio following instruction.\n\n<|scene_desc_start|>\nRoom.\n\n"
        "SPEAKER0: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
        "SPEAKER1: <|audio_bos|><|AUDIO|><|audio_eos|>\n<|scene_desc_end|><|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>"
    )
    p = encode_prompt(TOK, messages, audio_out_id=AOUT, audio_in_id=AIN, stream_bos=B, stream_eos=E)
    na, nb = 2 + 2 + K - 1, 3 + 2 + K - 1
    assert p.input_ids == [
        BOT,
        *header("system"),
        *enc("Generate audio following instruction.\n\n<|scene_desc_start|>\nRoom.\n\nSPEAKER0: "),
        ABOS,
        *[AIN] * na,
        AEOS,
        *enc("\nSPEAKER1: "),
        ABOS,
        *[AIN] * nb,
        AEOS,
        *enc("\n<|scene_desc_end|>"),
        EOT,
        *header("user"),
        *enc(text),
        EOT,
        *header("assistant"),
        AOBOS,
    ]
    assert p.audio_ids.shape == (na + nb, K)
    assert (p.audio_ids[na:, 0][1:4] == 6).all()
    # The release's RAS window reads audio-out codes only.
    assert not p.audio_out.any() and p.history.shape == (0, K)
    # With no scene the block holds just the speaker lines.
    assert conversation(text, speakers, scene=None, refs_in_system=True)[0].parts[0] == (
        "Generate audio following instruction.\n\n<|scene_desc_start|>\nSPEAKER0: "
    )


def test_audio_out_rows_are_the_history():
    ref = np.zeros((8, 2), np.int32)
    messages = conversation("New.", [Speaker(transcript="Old.", codes=ref)], scene=None)
    p = encode_prompt(TOK, messages, audio_out_id=AOUT, audio_in_id=AIN, stream_bos=B, stream_eos=E)
    assert p.audio_out.all() and np.array_equal(p.history, p.audio_ids)


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
    with pytest.raises(ValueError, match="parts"):
        Message("system", "x", parts=("y",))
    with pytest.raises(ValueError, match="audio_in_id"):
        encode_prompt(
            TOK,
            [Message("user", audio=np.zeros((8, 1), np.int32))],
            audio_out_id=AOUT,
            stream_bos=B,
            stream_eos=E,
        )
