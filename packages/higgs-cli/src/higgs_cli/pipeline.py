"""The whole pipeline behind one object: text in, 24 kHz speech out.

>>> tts = Higgs.from_pretrained()
>>> speech = tts.say("Good morning.", voice="en_woman")
>>> stream = tts.stream("A longer text ...", voice="en_man")
>>> for pcm in stream: ...
>>> stream.speech  # the whole Speech, once the stream is exhausted
"""

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path

import mlx.core as mx
import numpy as np

from higgs_cli.prompt import (
    DEFAULT_SCENE,
    Prompt,
    Speaker,
    conversation,
    encode_prompt,
    speaker_tags,
)
from higgs_cli.text import chunk_text, count_words, normalize, sound_events
from higgs_cli.voices import BUILTINS, PIN_TEXT, VoiceError, VoiceStore, check_name, fingerprint
from higgs_sampling import CodeColumns, SamplingParams

DEFAULT_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"
DEFAULT_CODEC = "bosonai/higgs-audio-v2-tokenizer"
# Frames of codes handed to the stream decoder at a time.
PUSH_FRAMES = 4
# Most [SPEAKERn] tags a text may use when no voices are named (SPEAKER0..SPEAKER7).
MAX_SPEAKERS = 8
# A chunk's frame budget guards against runaway generation: ~1 s per word is 2-3x a
# natural pace. Sound events (humming, music, laughter) are not words: each gets its
# own allowance, up to the 2048 frames the release allows one call (max_new_tokens).
BASE_SECONDS, WORD_SECONDS, EVENT_SECONDS, EVENT_FRAMES_CAP = 5.0, 1.0, 20.0, 2048
# A built-in voice's pin is kept only if the model ended it itself, at a sane length;
# otherwise the next seed is tried, this many times in all.
PIN_ATTEMPTS, PIN_SECONDS = 4, (2.0, 12.0)
SEED_LIMIT = 2**64


class HiggsError(Exception):
    """A problem the user can fix: the message says what and how."""


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
        if not (self.max_seconds > 0 and np.isfinite(self.max_seconds)):
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
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
    ``(audio file, transcript)`` recordings cloned without storing, after them.
    """

    text: str
    voices: tuple[str, ...] = ()
    refs: tuple[tuple[str, str], ...] = ()
    settings: Settings = field(default_factory=Settings)

    def check(self) -> "Request":
        """Everything that can be checked without the model; raises HiggsError."""
        if not self.text or not self.text.strip():
            raise HiggsError("there is no text to speak")
        for name in self.voices:
            check_name(name)
        for audio, transcript in self.refs:
            if not Path(audio).is_file():
                raise HiggsError(f"reference audio {audio} does not exist")
            if not " ".join((transcript or "").split()):
                raise HiggsError(f"reference audio {audio} needs its transcript (--ref-text)")
        check_speakers(self.text, len(self.voices) + len(self.refs))
        return self


def check_speakers(text: str, voices: int):
    """The text's [SPEAKERn] tags against the voices given for them."""
    tags = speaker_tags(text)
    numbers = sorted(int(t.removeprefix("SPEAKER")) for t in tags)
    if not numbers:
        return
    if voices:
        if numbers[-1] >= voices:
            raise HiggsError(
                f"the text has [SPEAKER{numbers[-1]}] but {voices} voice(s) were given, "
                f"for SPEAKER0..SPEAKER{voices - 1}; give one voice per speaker"
            )
    elif numbers[-1] >= MAX_SPEAKERS:
        raise HiggsError(
            f"the text has [SPEAKER{numbers[-1]}]: without named voices, use at most "
            f"{MAX_SPEAKERS} speakers, SPEAKER0..SPEAKER{MAX_SPEAKERS - 1}"
        )


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
    frames: int = 0
    seconds: float = 0.0  # processing time

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        """Processing time / audio duration (below 1 is faster than real time)."""
        return self.seconds / self.duration if self.duration else float("inf")

    def stops(self) -> str:
        """The chunks' stop reasons in a few words: "eos", "3 eos, 1 max_frames"."""
        counts: dict[str, int] = {}
        for reason in self.stop_reasons:
            counts[reason] = counts.get(reason, 0) + 1
        if len(counts) == 1 and len(self.stop_reasons) == 1:
            return self.stop_reasons[0]
        return ", ".join(f"{n} {reason}" for reason, n in counts.items())


@dataclass
class Chunk:
    """One chunk being generated: iterate for its delayed frames ``[K]``; read
    ``result`` (higgs_core's GenerationResult) once they are exhausted."""

    index: int
    count: int
    text: str
    prompt: Prompt
    max_frames: int
    frames: Iterator[mx.array]  # higgs_core's FrameGenerator
    report: Callable[[int], None] | None = None  # called with the frame count every 5 frames

    def __iter__(self) -> Iterator[mx.array]:
        for n, frame in enumerate(self.frames, 1):
            if self.report and n % 5 == 0:
                self.report(n)
            yield frame

    @property
    def result(self):
        return self.frames.result


class SpeechStream:
    """Float32 PCM pieces as the codec makes them final; ``speech`` once exhausted."""

    def __init__(self, pieces: Iterator[np.ndarray]):
        self._pieces = pieces
        self.speech: Speech | None = None

    def __iter__(self) -> "SpeechStream":
        return self

    def __next__(self) -> np.ndarray:
        return next(self._pieces)


class Higgs:
    """Model, codec and text tokenizer, loaded once."""

    def __init__(self, model, codec, tokenizer, *, model_path: Path, codec_path, voices=None):
        self.model = model
        self.codec = codec
        self.tokenizer = tokenizer
        self.model_path = Path(model_path)
        self.codec_source = codec_path
        self.voices = voices or VoiceStore()
        self._encoder = None
        self._pins: dict[str, np.ndarray] = {}  # pins made here that could not be stored
        cfg = model.config
        self.num_codebooks = cfg.num_codebooks
        self.sample_rate = codec.sample_rate
        self.frame_rate = codec.frame_rate
        for name, want in (
            ("<|AUDIO_OUT|>", cfg.audio_out_token_id),
            ("<|audio_out_bos|>", cfg.audio_out_bos_token_id),
        ):
            got = tokenizer.token_to_id(name)
            if got != want:
                raise HiggsError(
                    f"the tokenizer in {self.model_path} maps {name} to {got}, "
                    f"but the model expects {want}: they do not belong together"
                )
        if codec.num_codebooks != cfg.num_codebooks:
            raise HiggsError(
                f"the codec has {codec.num_codebooks} codebooks, the model {cfg.num_codebooks}"
            )

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | None = None,
        codec: str | os.PathLike | None = None,
        *,
        dtype=None,
        voices_dir: Path | None = None,
    ) -> "Higgs":
        """Load from hub ids or local folders (defaults: $HIGGS_MODEL, $HIGGS_CODEC,
        else Boson AI's released checkpoints)."""
        from tokenizers import Tokenizer

        from higgs_codec import load_codec
        from higgs_core import load_model, resolve_path

        model = model or os.environ.get("HIGGS_MODEL") or DEFAULT_MODEL
        codec = codec or os.environ.get("HIGGS_CODEC") or DEFAULT_CODEC
        model_path = resolve_path(model)
        loaded = load_model(model_path, dtype=dtype)
        tok_file = model_path / "tokenizer.json"
        if not tok_file.is_file():
            raise HiggsError(f"no tokenizer.json in {model_path}: the text tokenizer is missing")
        try:
            tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as e:
            raise HiggsError(f"cannot read the text tokenizer {tok_file}: {e}") from e
        voices = VoiceStore(voices_dir) if voices_dir else None
        return cls(
            loaded,
            load_codec(codec, decode_only=True),
            tokenizer,
            model_path=model_path,
            codec_path=codec,
            voices=voices,
        )

    # keys under which stored codes are valid ----------------------------------

    @cached_property
    def codec_key(self) -> str:
        return codec_key(self.codec)

    @cached_property
    def pin_key(self) -> str:
        """A pin is codes plus a transcript, so it depends on the codec alone: any
        model (bf16, q8, another folder) reuses the pin the first one made."""
        return f"pin-{fingerprint(self.codec.path)}"

    # audio in -------------------------------------------------------------------

    def encoder(self):
        """The full codec (with its encoders), loaded on first need."""
        if self._encoder is None:
            from higgs_codec import load_codec

            self._encoder = load_codec(self.codec_source)
        return self._encoder

    def encode_file(self, path: str | os.PathLike) -> np.ndarray:
        return encode_file(self.encoder(), path)

    # voices ---------------------------------------------------------------------

    def add_voice(self, name: str, audio: str | os.PathLike, text: str, *, force=False):
        """Encode a recording once and keep it (with its transcript) as voice ``name``."""
        return add_voice(self.voices, self.encoder(), name, audio, text, force=force)

    def speaker(self, name: str, warn: Callable[[str], None] = lambda _: None) -> Speaker:
        """The prompt speaker for voice ``name``, pinning a built-in voice on first use."""
        voice = self.voices.get(name)
        key = self.pin_key if voice.kind == "builtin" else self.codec_key
        try:
            codes = self.voices.codes(name, key, self.num_codebooks)
        except VoiceError as e:
            warn(f"{e}; making it again")
            codes = None
        if voice.kind == "recording":
            if codes is None:
                codes = self.encode_file(voice.audio)
                try:
                    self.voices.save_codes(name, key, codes)
                except OSError as e:
                    warn(f"cannot store the codes of voice {name!r} ({e}); using them unstored")
            return Speaker(transcript=voice.transcript, codes=codes)
        if codes is None:
            codes = self._pins.get(name)
        if codes is None:
            codes = self._pin(name, warn)
        return Speaker(transcript=PIN_TEXT, codes=codes)

    def _pin(self, name: str, warn: Callable[[str], None]) -> np.ndarray:
        """Speak the pin sentence in the described voice until the model ends it
        itself at a sane length (the voice's seed, then the next ones), and keep it."""
        builtin = BUILTINS[name]
        low, high = PIN_SECONDS
        max_frames = int(high * self.frame_rate) + self.num_codebooks + 1
        tries = []
        for attempt in range(PIN_ATTEMPTS):
            seed = builtin.seed + attempt
            chunk = self._generate_chunk(
                PIN_TEXT,
                [Speaker(description=builtin.description)],
                [],
                Settings(seed=seed),
                seed,
                max_frames,
            )
            for _ in chunk:
                pass
            res = chunk.result
            codes = np.array(res.codes, dtype=np.int32)
            seconds = codes.shape[1] / self.frame_rate
            tries.append((codes, res.stop_reason, seconds))
            if res.stop_reason == "eos" and low <= seconds <= high:
                made_by = {"model": str(self.model_path), "seed": seed, "seconds": seconds}
                try:
                    self.voices.pin(name, self.pin_key, codes, PIN_TEXT, made_by=made_by)
                except OSError as e:
                    warn(f"cannot store the pin of {name!r} ({e}); it lasts until exit")
                    self._pins[name] = codes
                return codes
        codes = next((t for t in tries if t[1] == "eos"), tries[0])[0]
        warn(
            f"{PIN_ATTEMPTS} tries at pinning {name!r} gave no clean take (stopped on "
            f"{', '.join(f'{t[1]} at {t[2]:.1f} s' for t in tries)}); using one for this "
            "run only"
        )
        self._pins[name] = codes
        return codes

    def speakers(self, request: Request, warn=lambda _: None) -> list[Speaker]:
        """Voices for SPEAKER0, SPEAKER1, ...: named voices, then the references.
        With none, the prompt lets the model pick (one voice, or for a dialogue
        the release's alternating feminine/masculine descriptions)."""
        out = [self.speaker(v, warn) for v in request.voices]
        for audio, transcript in request.refs:
            out.append(
                Speaker(transcript=" ".join(transcript.split()), codes=self.encode_file(audio))
            )
        return out

    def request(self, text, *, voice=None, voices=(), refs=(), settings=None, **overrides):
        """The :class:`Request` for keyword arguments (``say``/``stream`` take either)."""
        if isinstance(text, Request):
            if voice or voices or refs or settings or overrides:
                raise TypeError("give either a Request or the text and its options")
            return text.check()
        settings = (settings or Settings()).but(**overrides)
        voices = ((voice,) if voice else ()) + tuple(voices)
        refs = tuple((str(a), t) for a, t in refs)
        return Request((text or "").strip(), voices, refs, settings).check()

    # speech out -----------------------------------------------------------------

    def say(self, text, *, progress=None, warn=None, **options) -> Speech:
        """Speak ``text`` (or a :class:`Request`); all chunks' codes are decoded
        together at the end, as the release does."""
        start = time.perf_counter()
        chunks = []
        for chunk in self.chunks(self.request(text, **options), progress, warn):
            for _ in chunk:
                pass
            chunks.append(chunk)
        codes = self._codes(chunks)
        samples = np.array(self.codec.decode(mx.array(codes)), dtype=np.float32)
        return self._speech(samples, codes, chunks, time.perf_counter() - start)

    def stream(self, text, *, progress=None, warn=None, **options) -> SpeechStream:
        """Speak ``text`` (or a :class:`Request`), yielding float32 PCM as soon as
        the codec has it final; the stream's ``speech`` is set once it ends."""
        request = self.request(text, **options)
        stream = SpeechStream(iter(()))
        stream._pieces = self._stream(request, progress, warn, stream)
        return stream

    def _stream(self, request, progress, warn, stream: SpeechStream):
        start = time.perf_counter()
        decoder = self.codec.stream_decoder()
        chunks, pieces = [], []

        def push(codes):
            pcm = np.array(decoder.push(codes), dtype=np.float32)
            if pcm.size:
                pieces.append(pcm)
            return pcm

        for chunk in self.chunks(request, progress, warn):
            columns = CodeColumns(self.num_codebooks, self.codec.codebook_size)
            columns.push(mx.full((self.num_codebooks,), self.model.config.audio_stream_bos_id))
            for frame in chunk:
                columns.push(frame)
                # A few columns a push: the stream decoder's cost per push is mostly
                # fixed (5 frames a push run 2x faster than 1), for 160 ms more latency.
                if (codes := columns.take(PUSH_FRAMES)) is not None and (pcm := push(codes)).size:
                    yield pcm
            if (codes := columns.take()) is not None and (pcm := push(codes)).size:
                yield pcm
            chunks.append(chunk)
        tail = np.array(decoder.flush(), dtype=np.float32)
        if tail.size:
            pieces.append(tail)
            yield tail
        samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        stream.speech = self._speech(
            samples, self._codes(chunks), chunks, time.perf_counter() - start
        )

    def _codes(self, chunks: list[Chunk]) -> np.ndarray:
        if not chunks:
            return np.zeros((self.num_codebooks, 0), np.int32)
        return np.concatenate([np.array(c.result.codes, dtype=np.int32) for c in chunks], axis=1)

    def _speech(self, samples, codes, chunks, seconds) -> Speech:
        return Speech(
            samples=samples,
            sample_rate=self.sample_rate,
            codes=codes,
            chunks=[c.text for c in chunks],
            stop_reasons=[c.result.stop_reason for c in chunks],
            prompt_tokens=sum(len(c.prompt.input_ids) for c in chunks),
            frames=sum(c.result.num_frames for c in chunks),
            seconds=seconds,
        )

    def chunk_frames(self, text: str) -> int:
        """A chunk's frame budget: time for its words, and for its sound events."""
        words = BASE_SECONDS + WORD_SECONDS * count_words(text)
        events = EVENT_SECONDS * sound_events(text)
        seconds = max(words, min(words + events, EVENT_FRAMES_CAP / self.frame_rate))
        return max(1, int(seconds * self.frame_rate))

    def chunks(self, request: Request, progress=None, warn=None) -> Iterator[Chunk]:
        """The request's chunks in order, each ready to be iterated for its frames.

        A chunk must be exhausted before the next is asked for: its codes become
        the next one's context.
        """
        settings = request.settings
        warn = warn or (lambda _: None)
        speakers = self.speakers(request, warn)
        pieces = chunk_text(normalize(request.text), settings.chunk_words)
        budget = int(settings.max_seconds * self.frame_rate)  # frames left for the text
        context: list[tuple[str, np.ndarray]] = []
        audio_seconds, start = 0.0, time.perf_counter()

        def report(i, frames, max_frames, seconds, done=False):
            if progress:
                elapsed = time.perf_counter() - start
                progress(Progress(i, len(pieces), frames, max_frames, seconds, elapsed, done))

        for i, piece in enumerate(pieces):
            if budget < 1:
                warn(
                    f"--max-seconds {settings.max_seconds:g} reached: {len(pieces) - i} of "
                    f"{len(pieces)} chunks left unspoken"
                )
                return
            own = self.chunk_frames(piece)
            max_frames = min(budget, own)
            chunk = self._generate_chunk(
                piece,
                speakers,
                context,
                settings,
                settings.chunk_seed(i),
                max_frames,
                i,
                len(pieces),
            )
            chunk.report = lambda n, i=i, m=max_frames, s=audio_seconds: report(
                i, n, m, s + n / self.frame_rate
            )
            yield chunk
            res = chunk.result
            seconds = res.codes.shape[1] / self.frame_rate
            audio_seconds += seconds
            budget -= res.num_frames
            keep = settings.context_chunks
            context = [*context, (piece, np.array(res.codes, np.int32))][-keep:] if keep else []
            report(i, res.num_frames, max_frames, audio_seconds, done=True)
            if res.stop_reason == "max_frames":
                where = f"chunk {i + 1}/{len(pieces)} ({_opening(piece)})"
                if max_frames < own:
                    left = len(pieces) - i - 1
                    warn(
                        f"--max-seconds {settings.max_seconds:g} reached in {where}: it is cut "
                        f"short" + (f" and {left} more chunk(s) left unspoken" if left else "")
                    )
                    return
                warn(
                    f"{where} reached its budget of {own / self.frame_rate:.1f} s before the "
                    "model ended it; it may be cut short"
                )
            mx.clear_cache()

    def _generate_chunk(
        self, text, speakers, context, settings, seed, max_frames, index=0, count=1
    ) -> Chunk:
        from higgs_core import generate_frames

        cfg = self.model.config
        messages = conversation(
            text,
            speakers,
            scene=settings.scene,
            context=context,
            refs_in_system=settings.ref_in_system,
        )
        refs_in = settings.ref_in_system and any(s.cloned for s in speakers)
        if refs_in and not cfg.encode_audio_in_tokens:
            raise HiggsError(
                "this model does not read audio in its system turn "
                "(encode_audio_in_tokens is off in its config); clone without --ref-in-system"
            )
        prompt = encode_prompt(
            self.tokenizer,
            messages,
            audio_out_id=cfg.audio_out_token_id,
            audio_in_id=cfg.audio_in_token_id,
            stream_bos=cfg.audio_stream_bos_id,
            stream_eos=cfg.audio_stream_eos_id,
        )
        frames = generate_frames(
            self.model,
            np.array(prompt.input_ids, dtype=np.int32),
            mx.array(prompt.audio_ids) if len(prompt.audio_ids) else None,
            history=prompt.history,  # audio out only, as the release's RAS window
            params=settings.sampling,
            max_frames=max_frames,
            seed=seed,
        )
        return Chunk(index, count, text, prompt, max_frames, frames)


def _opening(text: str, words: int = 5) -> str:
    head = text.split()
    return '"' + " ".join(head[:words]) + ("…" if len(head) > words else "") + '"'


def codec_key(codec) -> str:
    """The fingerprint under which codes made by ``codec`` are stored."""
    return f"codec-{fingerprint(codec.path)}"


def encode_file(codec, path: str | os.PathLike) -> np.ndarray:
    """Codes ``[K, T]`` of an audio file."""
    from higgs_codec import read_audio

    wave, sr = read_audio(path)
    return np.array(codec.encode(wave, sr), dtype=np.int32)


def add_voice(store: VoiceStore, codec, name, audio, text, *, force=False):
    """Encode a recording once and keep it, with its transcript, as voice ``name``.

    ``codec``: a loaded codec, or a hub id / folder to load one from. The audio
    is read and encoded before anything is written.
    """
    check_name(name)
    if isinstance(codec, str | os.PathLike):
        from higgs_codec import load_codec

        codec = load_codec(codec)
    codes = encode_file(codec, audio)
    return store.add(name, Path(audio), text, codes=codes, key=codec_key(codec), force=force)
