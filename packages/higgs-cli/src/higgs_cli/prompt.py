"""Prompts in Higgs Audio's chat layout: token ids plus the codes of their audio.

A conversation is a list of :class:`Message`; :func:`encode_prompt` renders it
the way the release does (Llama-3 turns, one ``<|AUDIO_OUT|>`` position per
delayed frame of each clip) and ends with the assistant header and
``<|audio_out_bos|>``, where generation starts.
"""

import re
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from higgs_sampling import build_delay_pattern

INSTRUCTION = "Generate audio following instruction."
# Our wording of the release's multi-speaker instruction: tags pick voices and are not read.
MULTI_SPEAKER_INSTRUCTION = (
    "You are an AI assistant that turns text into speech.\n"
    "A [SPEAKER*] tag in the user's message selects the voice for the text after it; "
    "do not read the tag aloud.\n"
    "Where no tag is given, pick a fitting voice yourself."
)
DEFAULT_SCENE = "Audio is recorded from a quiet room."

AUDIO_OUT = "<|AUDIO_OUT|>"
AUDIO_OUT_BOS = "<|audio_out_bos|>"
AUDIO_EOS = "<|audio_eos|>"
GENERATION_PREFIX = f"<|start_header_id|>assistant<|end_header_id|>\n\n{AUDIO_OUT_BOS}"


@dataclass
class Message:
    """One turn. ``audio`` (codes ``[K, T]``) belongs to assistant turns."""

    role: str
    text: str = ""
    audio: np.ndarray | None = None

    def __post_init__(self):
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {self.role!r}")
        if self.audio is not None and self.role != "assistant":
            raise ValueError("only assistant turns carry audio")


@dataclass
class Prompt:
    """What the model is fed: ``input_ids`` and the codes of its audio positions."""

    text: str  # rendered, with one <|AUDIO_OUT|> per clip
    input_ids: list[int]
    audio_ids: np.ndarray  # [N, K] delayed codes, N = input_ids.count(audio_out_id)


def scene_block(scene: str | None, speakers: list[str]) -> str:
    """The scene description, with ``SPEAKERn: ...`` lines for described voices."""
    parts = [p for p in (scene, "\n".join(speakers)) if p]
    if not parts:
        return ""
    return "<|scene_desc_start|>\n" + "\n\n".join(parts) + "\n<|scene_desc_end|>"


def system_message(instruction: str, scene: str | None, speakers: list[str]) -> Message:
    block = scene_block(scene, speakers)
    return Message("system", f"{instruction}\n\n{block}" if block else instruction)


def _pieces(messages: list[Message]):
    """Yield ``(text, clip)`` pieces in order; clip is codes for one audio turn."""
    for i, m in enumerate(messages):
        start = "<|begin_of_text|>" if i == 0 else ""
        yield f"{start}<|start_header_id|>{m.role}<|end_header_id|>\n\n", None
        if m.text:
            yield m.text, None
        if m.audio is not None:
            yield AUDIO_OUT_BOS, None
            yield AUDIO_OUT, m.audio
            yield AUDIO_EOS, None
        # Consecutive assistant turns are joined by <|eom_id|>, as in the release.
        nxt = messages[i + 1].role if i + 1 < len(messages) else None
        yield ("<|eom_id|>" if m.role == nxt == "assistant" else "<|eot_id|>"), None
    yield GENERATION_PREFIX, None


def render(messages: list[Message]) -> str:
    """The prompt as text, each clip shown as a single ``<|AUDIO_OUT|>``."""
    return "".join(text for text, _ in _pieces(messages))


def encode_prompt(
    tokenizer,
    messages: list[Message],
    *,
    audio_out_id: int,
    stream_bos: int,
    stream_eos: int,
) -> Prompt:
    """Tokenize ``messages`` piece by piece, as the release does.

    Each clip's ``<|AUDIO_OUT|>`` becomes ``T + 2 + K - 1`` positions: the codes
    wrapped in stream BOS/EOS and delayed.
    """
    ids: list[int] = []
    clips: list[np.ndarray] = []
    for text, clip in _pieces(messages):
        if clip is None:
            ids.extend(tokenizer.encode(text, add_special_tokens=False).ids)
            continue
        clip = mx.array(clip, dtype=mx.int32)
        delayed = np.array(build_delay_pattern(clip, stream_bos, stream_eos))
        ids.extend([audio_out_id] * delayed.shape[1])
        clips.append(delayed.T)
    K = clips[0].shape[1] if clips else 0
    audio_ids = np.concatenate(clips).astype(np.int32) if clips else np.zeros((0, K), np.int32)
    return Prompt(render(messages), ids, audio_ids)


SPEAKER_TAG = re.compile(r"\[SPEAKER(\d+)\]")


@dataclass
class Speaker:
    """A voice for one speaker: a text description, or a reference clip.

    A reference is its transcript plus its codes ``[K, T]``.
    """

    description: str | None = None
    transcript: str | None = None
    codes: np.ndarray | None = None

    @property
    def cloned(self) -> bool:
        return self.codes is not None


def conversation(
    text: str,
    speakers: list[Speaker],
    *,
    scene: str | None = DEFAULT_SCENE,
    context: list[tuple[str, np.ndarray]] = (),
) -> list[Message]:
    """The messages that ask for ``text`` in the layouts of the release.

    - smart voice (no speakers): the instruction, the optional scene, the text;
    - described voices: ``SPEAKERn: description`` lines in the scene block;
    - cloned voices: a user turn with each reference transcript (tagged
      ``[SPEAKERn]`` when several speakers talk) and an assistant turn with its
      codes; with no scene and no described voice there is no system turn;
    - several speakers and no reference: the multi-speaker instruction.

    ``context``: earlier ``(text, codes)`` chunks of the same long text, replayed
    as user/assistant turns so the voice carries on.
    """
    multi = len(speakers) > 1 or bool(SPEAKER_TAG.search(text))
    refs = [(i, s) for i, s in enumerate(speakers) if s.cloned]
    described = [
        f"SPEAKER{i}: {s.description}"
        for i, s in enumerate(speakers)
        if not s.cloned and s.description
    ]
    messages = []
    if multi and not refs:
        messages.append(system_message(MULTI_SPEAKER_INSTRUCTION, scene, described))
    elif scene or described or not refs:
        messages.append(system_message(INSTRUCTION, scene, described))
    for i, s in refs:
        said = f"[SPEAKER{i}] {s.transcript}" if multi else s.transcript
        messages += [Message("user", said), Message("assistant", audio=s.codes)]
    for said, codes in context:
        messages += [Message("user", said), Message("assistant", audio=codes)]
    messages.append(Message("user", text))
    return messages
