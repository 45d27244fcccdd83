"""Prompts in Higgs Audio's chat layout: token ids plus the codes of their audio.

A conversation is a list of :class:`Message`; :func:`encode_prompt` renders it
the way the release does (Llama-3 turns, one ``<|AUDIO_OUT|>`` position per
delayed frame of each clip) and ends with the assistant header and
``<|audio_out_bos|>``, where generation starts.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INSTRUCTION = "Generate audio following instruction."
# The release's MULTISPEAKER_DEFAULT_SYSTEM_MESSAGE (examples/generation.py), verbatim.
MULTI_SPEAKER_INSTRUCTION = (
    "You are an AI assistant designed to convert text into speech.\n"
    "If the user's message includes a [SPEAKER*] tag, do not read out the tag and generate "
    "speech for the following text, using the specified voice.\n"
    "If no speaker tag is present, select a suitable voice on your own."
)
# examples/scene_prompts/quiet_indoor.txt, the release's default scene.
DEFAULT_SCENE = "Audio is recorded from a quiet room."
# The release's smart multi-speaker voices, alternating over the sorted tags.
SMART_VOICES = ("feminine", "masculine")

AUDIO_OUT = "<|AUDIO_OUT|>"
AUDIO_IN = "<|AUDIO|>"
AUDIO_OUT_BOS = "<|audio_out_bos|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
GENERATION_PREFIX = f"<|start_header_id|>assistant<|end_header_id|>\n\n{AUDIO_OUT_BOS}"

Clip = np.ndarray  # codes [K, T] of one piece of audio


@dataclass
class Message:
    """One turn: ``text`` then ``audio`` (codes ``[K, T]``), or interleaved ``parts``.

    Audio in an assistant turn is audio out (``<|audio_out_bos|><|AUDIO_OUT|>
    <|audio_eos|>``), anywhere else audio in (``<|audio_bos|><|AUDIO|>
    <|audio_eos|>``), as the release's ``prepare_chatml_sample`` renders them.
    """

    role: str
    text: str = ""
    audio: Clip | None = None
    parts: tuple[str | Clip, ...] = ()

    def __post_init__(self):
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {self.role!r}")
        if self.parts and (self.text or self.audio is not None):
            raise ValueError("give a message either text and audio, or parts")

    def content(self) -> tuple[str | Clip, ...]:
        if self.parts:
            return self.parts
        return tuple(p for p in (self.text or None, self.audio) if p is not None)

    def __eq__(self, other):
        if not isinstance(other, Message):
            return NotImplemented
        mine, theirs = self.content(), other.content()
        return (
            self.role == other.role
            and len(mine) == len(theirs)
            and all(
                a == b if isinstance(a, str) else not isinstance(b, str) and np.array_equal(a, b)
                for a, b in zip(mine, theirs, strict=True)
            )
        )


@dataclass
class Prompt:
    """What the model is fed: ``input_ids`` and the codes of its audio positions."""

    text: str  # rendered, with one <|AUDIO_OUT|> or <|AUDIO|> per clip
    input_ids: list[int]
    audio_ids: np.ndarray  # [N, K] delayed codes, one row per audio position, in order
    audio_out: np.ndarray  # [N] bool: which rows are audio out (the rest audio in)
    prefix_tokens: int = 0  # the leading positions that belong to the constant turns

    @property
    def history(self) -> np.ndarray:
        """``[N_out, K]`` the audio-out rows: what repetition-aware sampling looks back on.

        The release's RAS window reads its ``audio_out_ids`` only, never audio-in codes.
        """
        return self.audio_ids[self.audio_out]


def scene_block(scene: str | None, lines: list) -> list:
    """The scene description and ``SPEAKERn: ...`` lines, as parts.

    A line is a string, or a list of parts when it holds a reference clip.
    """
    body: list = [scene] if scene else []
    if lines and body:
        body.append("\n\n")
    for i, line in enumerate(lines):
        body += (["\n"] if i else []) + (line if isinstance(line, list) else [line])
    return ["<|scene_desc_start|>\n", *body, "\n<|scene_desc_end|>"] if body else []


def system_message(instruction: str, scene: str | None, speakers: list) -> Message:
    block = scene_block(scene, speakers)
    parts = _join_text([instruction, "\n\n", *block] if block else [instruction])
    if all(isinstance(p, str) for p in parts):
        return Message("system", "".join(parts))
    return Message("system", parts=tuple(parts))


def _join_text(parts: list) -> list:
    """Merge neighbouring strings (and drop empty ones), so each text run is tokenized once."""
    out: list = []
    for p in parts:
        if isinstance(p, str):
            if not p:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += p
                continue
        out.append(p)
    return out


def _pieces(messages: list[Message], numbered: bool = False):
    """Yield ``(text, clip)`` pieces in order (``(message index, text, clip)`` when
    ``numbered``); clip is the codes of one audio placeholder."""

    def out(i, text, clip=None):
        return (i, text, clip) if numbered else (text, clip)

    for i, m in enumerate(messages):
        start = "<|begin_of_text|>" if i == 0 else ""
        yield out(i, f"{start}<|start_header_id|>{m.role}<|end_header_id|>\n\n")
        for part in m.content():
            if isinstance(part, str):
                yield out(i, part)
            elif m.role == "assistant":
                yield out(i, AUDIO_OUT_BOS)
                yield out(i, AUDIO_OUT, part)
                yield out(i, AUDIO_EOS)
            else:
                yield out(i, AUDIO_BOS)
                yield out(i, AUDIO_IN, part)
                yield out(i, AUDIO_EOS)
        # Consecutive assistant turns are joined by <|eom_id|>, as in the release.
        nxt = messages[i + 1].role if i + 1 < len(messages) else None
        yield out(i, "<|eom_id|>" if m.role == nxt == "assistant" else "<|eot_id|>")
    yield out(len(messages), GENERATION_PREFIX)


def render(messages: list[Message]) -> str:
    """The prompt as text, each clip shown as a single ``<|AUDIO_OUT|>`` or ``<|AUDIO|>``."""
    return "".join(text for text, _ in _pieces(messages))


def encode_prompt(
    tokenizer,
    messages: list[Message],
    *,
    audio_out_id: int,
    stream_bos: int,
    stream_eos: int,
    audio_in_id: int | None = None,
    prefix_messages: int = 0,
) -> Prompt:
    """Tokenize ``messages`` piece by piece, as the release does.

    Each clip's placeholder (``<|AUDIO_OUT|>``, or ``<|AUDIO|>`` for audio in)
    becomes ``T + 2 + K - 1`` positions: the codes wrapped in stream BOS/EOS and
    delayed, as the release's collator does for both kinds. ``prefix_messages``:
    how many leading messages are the constant part (a voice's system and
    reference turns); ``Prompt.prefix_tokens`` counts their positions. Each piece
    is tokenized alone, so those positions are the same whatever follows.
    """
    import mlx.core as mx  # here, so that the settings' checks need no MLX

    from higgs_sampling import build_delay_pattern

    ids: list[int] = []
    clips: list[np.ndarray] = []
    is_out: list[bool] = []
    prefix_tokens = 0
    for index, text, clip in _pieces(messages, numbered=True):
        if index == prefix_messages and not prefix_tokens:
            prefix_tokens = len(ids)
        if clip is None:
            ids.extend(tokenizer.encode(text, add_special_tokens=False).ids)
            continue
        token = audio_out_id if text == AUDIO_OUT else audio_in_id
        if token is None:
            raise ValueError("the prompt holds audio in, but no audio_in_id was given")
        delayed = np.array(
            build_delay_pattern(mx.array(clip, dtype=mx.int32), stream_bos, stream_eos)
        )
        n = delayed.shape[1]
        ids.extend([token] * n)
        clips.append(delayed.T)
        is_out += [text == AUDIO_OUT] * n
    K = clips[0].shape[1] if clips else 0
    audio_ids = np.concatenate(clips).astype(np.int32) if clips else np.zeros((0, K), np.int32)
    return Prompt(render(messages), ids, audio_ids, np.array(is_out, dtype=bool), prefix_tokens)


SPEAKER_TAG = re.compile(r"\[(SPEAKER(\d+))\]")


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


def speaker_tags(text: str) -> list[str]:
    """The distinct ``SPEAKERn`` tags of a text, sorted as the release sorts them (as strings)."""
    return sorted({m.group(1) for m in SPEAKER_TAG.finditer(text)})


def conversation(
    text: str,
    speakers: list[Speaker],
    *,
    scene: str | None = DEFAULT_SCENE,
    context: Sequence[tuple[str, np.ndarray]] = (),
    refs_in_system: bool = False,
    tags: Sequence[str] | None = None,
) -> list[Message]:
    """The messages that ask for ``text``, as the release's ``prepare_generation_context``
    builds them (``examples/generation.py``).

    - cloned voices: a user turn with each reference transcript (prefixed
      ``[SPEAKERn] `` only when there are several speakers) and an assistant turn
      with its codes; the system turn only when there is a scene;
    - ``refs_in_system`` (the release's ``--ref_audio_in_system_message``), or
      any described voice (the release's ``profile:`` voices, which switch that
      mode on): ``SPEAKERn: <audio in>`` / ``SPEAKERn: description`` lines in
      the scene block, and no reference turns;
    - no speakers and more than one distinct tag: the multi-speaker instruction
      with ``SPEAKERn: feminine`` / ``masculine`` lines, alternating;
    - otherwise (smart voice): the instruction and the optional scene.

    ``context``: earlier ``(text, codes)`` chunks of the same long text, replayed
    as user/assistant turns so the voice carries on. ``tags``: the speaker tags of
    the whole text, when ``text`` is one chunk of it (the release reads them once,
    from the text before it is normalised and chunked); by default ``text``'s own.
    """
    messages = []
    if speakers and (refs_in_system or any(not s.cloned for s in speakers)):
        lines = [
            [f"SPEAKER{i}: ", s.codes] if s.cloned else f"SPEAKER{i}: {s.description}"
            for i, s in enumerate(speakers)
        ]
        messages.append(system_message(INSTRUCTION, scene, lines))
    elif speakers:
        if scene:
            messages.append(system_message(INSTRUCTION, scene, []))
        several = len(speakers) > 1
        for i, s in enumerate(speakers):
            said = f"[SPEAKER{i}] {s.transcript}" if several else s.transcript or ""
            messages += [Message("user", said), Message("assistant", audio=s.codes)]
    elif len(tags := speaker_tags(text) if tags is None else sorted(tags)) > 1:
        lines = [f"{tag}: {SMART_VOICES[i % 2]}" for i, tag in enumerate(tags)]
        messages.append(system_message(MULTI_SPEAKER_INSTRUCTION, scene, lines))
    else:
        messages.append(system_message(INSTRUCTION, scene, []))
    for said, codes in context:
        messages += [Message("user", said), Message("assistant", audio=codes)]
    messages.append(Message("user", text))
    return messages
