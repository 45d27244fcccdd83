"""What comes out: speech, progress reports, and streams of PCM."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Progress:
    """Where generation stands; handed to the ``progress`` callback every few frames."""

    chunk: int  # 0-based
    chunks: int
    frames: int  # frames of this chunk so far
    max_frames: int  # this chunk's frame budget
    audio_seconds: float  # audio of the whole text so far, this chunk included
    elapsed: float
    done: bool = False  # this chunk is finished
    text_frames: int = 0  # frames of the whole text so far (the span audio_seconds counts)

    @property
    def fraction(self) -> float:
        """How much of the text is done (a chunk counts as done at its budget)."""
        within = 1.0 if self.done else min(self.frames / max(self.max_frames, 1), 1.0)
        return (self.chunk + within) / self.chunks


@dataclass
class Speech:
    """Generated audio and how it was made."""

    samples: np.ndarray  # float32 [N]
    sample_rate: int
    codes: np.ndarray  # [K, T] of the whole text
    chunks: list[str] = field(default_factory=list)
    stop_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those a cached voice prefix held
    frames: int = 0
    seconds: float = 0.0  # processing time
    warnings: list[str] = field(default_factory=list)  # what was reported while it was made

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        """Processing time / audio duration (below 1 is faster than real time)."""
        return self.seconds / self.duration if self.duration else float("inf")

    def save(self, path, format: str | None = None) -> Path:
        """Write the speech to ``path`` (wav, flac, mp3, opus or raw pcm, from its
        extension unless ``format`` says; a ``.wav`` with ``format="flac"`` is an error,
        as on the command line); returns the path."""
        from higgs_cli.output import check_writable, format_for, write_clip

        target = str(path)
        fmt = format_for(target, format)
        check_writable(target)
        write_clip(target, self.samples, self.sample_rate, fmt)
        return Path(target)

    def stops(self) -> str:
        """The chunks' stop reasons in a few words: "eos", "3 eos, 1 max_frames"."""
        counts: dict[str, int] = {}
        for reason in self.stop_reasons:
            counts[reason] = counts.get(reason, 0) + 1
        if len(counts) == 1 and len(self.stop_reasons) == 1:
            return self.stop_reasons[0]
        return ", ".join(f"{n} {reason}" for reason, n in counts.items())


class SpeechStream:
    """Float32 PCM pieces as the codec makes them final; ``speech`` once exhausted."""

    def __init__(self, pieces: Iterator[np.ndarray]):
        self._pieces = pieces
        self.speech: Speech | None = None

    def __iter__(self) -> "SpeechStream":
        return self

    def __next__(self) -> np.ndarray:
        return next(self._pieces)


class ManyStream:
    """``(index, pcm)`` pieces of several requests as they are made, interleaved;
    ``speeches`` (one per request, in order: its :class:`Speech`, or the exception
    that failed it) once exhausted."""

    def __init__(self, pieces: Iterator[tuple[int, np.ndarray]]):
        self._pieces = pieces
        self.speeches: list[Speech | Exception] | None = None

    def __iter__(self) -> "ManyStream":
        return self

    def __next__(self) -> tuple[int, np.ndarray]:
        return next(self._pieces)
