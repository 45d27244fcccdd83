"""What a request asks for: the text, its voices and how to speak it.

Everything here is checked without the model, so the CLI, the server and
``higgs batch`` can refuse a bad request before loading anything.
"""

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from higgs_cli.prompt import DEFAULT_SCENE, speaker_tags
from higgs_cli.voices import check_name
from higgs_sampling import SamplingParams

# The released checkpoints, the default model and audio tokenizer.
DEFAULT_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"
DEFAULT_CODEC = "bosonai/higgs-audio-v2-tokenizer"
# The longest reference recording taken (the release's examples are 3-15 s): a longer
# one costs its encode time and its prompt length on every request that uses it.
MAX_REF_SECONDS = 30.0
# Frames of audio a second: the Higgs audio tokenizer's (higgs_codec's frame_rate).
FRAME_RATE = 25
# Most [SPEAKERn] tags a text may use when no voices are named (SPEAKER0..SPEAKER7).
MAX_SPEAKERS = 8
SEED_LIMIT = 2**64
# The tokenizer's control tokens (<|eot_id|>, <|AUDIO_OUT|>, ...): in a text to speak
# they would restructure the prompt, so they are refused. The sound-event tags
# (<SE>, <SE_s>, ...) are the release's way to ask for laughter or music: allowed.
CONTROL_TOKEN = re.compile(r"<\|[^|<>\s]{1,64}\|>")


def check_text(text: str, what: str = "the text"):
    """Refuse text that holds control tokens or that is not valid Unicode text."""
    if (m := CONTROL_TOKEN.search(text)) is not None:
        raise HiggsError(f"{what} holds the control token {m.group()}, which cannot be spoken")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise HiggsError(f"{what} is not valid Unicode text ({e.reason} at {e.start})") from None


class HiggsError(Exception):
    """A problem the user can fix: the message says what and how."""


class ReferenceTooLong(HiggsError):
    """A reference recording over the limit on its length."""


class NoAudio(HiggsError):
    """Generation ended before any audio: nothing to return."""


@dataclass(frozen=True)
class Settings:
    """How to speak: sampling, the seed, budgets and long-text handling.

    The one set of defaults for the library, the CLI and the server; the
    sampling defaults are :class:`higgs_sampling.SamplingParams`' (the release's).
    """

    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    max_seconds: float = 300.0  # the whole text
    chunk_words: int = 60  # long text is split into chunks of about this many words
    context_chunks: int = 2  # earlier chunks replayed as context (references always are)
    scene: str | None = DEFAULT_SCENE
    ref_in_system: bool = False  # references as audio in the system turn (release mode)

    def __post_init__(self):
        if not (isinstance(self.seed, int) and 0 <= self.seed < SEED_LIMIT):
            raise ValueError(f"seed must be an integer in 0..2**64-1, got {self.seed}")
        if not (self.max_seconds * FRAME_RATE >= 1 and np.isfinite(self.max_seconds)):
            raise ValueError(
                f"max_seconds must hold one frame of audio ({1 / FRAME_RATE:g} s) at least, "
                f"got {self.max_seconds:g}"
            )
        if not (isinstance(self.chunk_words, int) and self.chunk_words >= 1):
            raise ValueError(f"chunk_words must be an integer >= 1, got {self.chunk_words}")
        if not (isinstance(self.context_chunks, int) and self.context_chunks >= 0):
            raise ValueError(f"context_chunks must be an integer >= 0, got {self.context_chunks}")

    def but(self, **changes) -> "Settings":
        """A copy with some settings changed; sampling fields (``temperature``,
        ``top_k``, ...) may be given by name."""
        names = {f.name for f in fields(SamplingParams)}
        sampling = {k: changes.pop(k) for k in list(changes) if k in names}
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        if sampling:
            changes["sampling"] = replace(changes.get("sampling", self.sampling), **sampling)
        return replace(self, **changes)

    def chunk_seed(self, chunk: int) -> int:
        """Each chunk draws from its own seed, derived from the run's."""
        return (self.seed + 1000003 * chunk) % SEED_LIMIT


@dataclass(frozen=True)
class Request:
    """One text to speak, with its voices and settings: what ``say``, ``stream``,
    the server and ``higgs batch`` all hand the pipeline.

    ``voices`` name stored voices for SPEAKER0, SPEAKER1, ...; ``refs`` are
    ``(audio file, transcript)`` recordings cloned without storing, after them;
    ``clones`` are ``(transcript, codes [K, T])`` voices already encoded (what
    ``higgs batch`` ships to Ray workers, which have no voice store), last.
    """

    text: str
    voices: tuple[str, ...] = ()
    refs: tuple[tuple[str, str], ...] = ()
    settings: Settings = field(default_factory=Settings)
    clones: tuple[tuple[str, np.ndarray], ...] = ()

    def check(self) -> "Request":
        """Everything that can be checked without the model; raises HiggsError."""
        if not self.text or not self.text.strip():
            raise HiggsError("there is no text to speak")
        check_text(self.text)
        for name in self.voices:
            check_name(name)
        for audio, transcript in self.refs:
            if not Path(audio).is_file():
                raise HiggsError(f"reference audio {audio} does not exist")
            if not " ".join((transcript or "").split()):
                raise HiggsError(f"reference audio {audio} needs its transcript (--ref-text)")
            check_text(transcript, f"the transcript of {audio}")
        for transcript, codes in self.clones:
            check_text(transcript, "a voice's transcript")
            if not (isinstance(codes, np.ndarray) and codes.ndim == 2 and codes.size):
                raise HiggsError("a cloned voice's codes must be a [K, T] array")
        voices = len(self.voices) + len(self.refs) + len(self.clones)
        check_speakers(self.text, voices)
        if self.settings.ref_in_system and not voices:
            raise HiggsError(
                "--ref-in-system puts the voices' reference audio in the system turn, but "
                "no voice or reference recording was given"
            )
        return self


def check_speakers(text: str, voices: int):
    """The text's [SPEAKERn] tags against the voices given for them (named voices and
    reference recordings alike): one voice per speaker, none unused."""
    tags = speaker_tags(text)
    numbers = sorted(int(t.removeprefix("SPEAKER")) for t in tags)
    if not numbers:
        if voices > 1:
            raise HiggsError(
                f"{voices} voices (named or recorded) were given for a text with no "
                "[SPEAKERn] tags, which one voice speaks; give one, or tag a dialogue "
                "[SPEAKER0] ... [SPEAKER1] ..."
            )
        return
    if voices:
        if numbers[-1] >= voices:
            raise HiggsError(
                f"the text has [SPEAKER{numbers[-1]}] but {voices} voice(s) were given, "
                f"for SPEAKER0..SPEAKER{voices - 1}; give one voice per speaker"
            )
        if voices > numbers[-1] + 1:
            raise HiggsError(
                f"{voices} voices (named or recorded) were given for SPEAKER0..SPEAKER"
                f"{numbers[-1]}: give one voice per speaker (the others would go unused)"
            )
    elif numbers[-1] >= MAX_SPEAKERS:
        raise HiggsError(
            f"the text has [SPEAKER{numbers[-1]}]: without named voices, use at most "
            f"{MAX_SPEAKERS} speakers, SPEAKER0..SPEAKER{MAX_SPEAKERS - 1}"
        )


def speaker_gaps(text: str) -> list[str]:
    """The SPEAKERn tags below the text's highest that it never uses (a voice is still
    taken for each, in order)."""
    numbers = {int(t.removeprefix("SPEAKER")) for t in speaker_tags(text)}
    return [f"SPEAKER{n}" for n in range(max(numbers, default=0)) if n not in numbers]
