"""The whole pipeline behind one object: text in, 24 kHz speech out.

>>> tts = Higgs.from_pretrained()
>>> speech = tts.say("Good morning.", voice="en_woman")
>>> for pcm in tts.stream("A longer text ...", voice="en_man"): ...
"""

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import mlx.core as mx
import numpy as np

from higgs_cli.prompt import DEFAULT_SCENE, SPEAKER_TAG, Speaker, conversation, encode_prompt
from higgs_cli.text import chunk_text, count_words, normalize
from higgs_cli.voices import BUILTINS, PIN_TEXT, VoiceError, VoiceStore, check_name, fingerprint
from higgs_sampling import SamplingParams, revert_delay

DEFAULT_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"
DEFAULT_CODEC = "bosonai/higgs-audio-v2-tokenizer"
# Frames of codes handed to the stream decoder at a time.
PUSH_FRAMES = 4
# Voices given to [SPEAKERn] tags that no --voice names, in turn.
DEFAULT_SPEAKERS = ("en_woman", "en_man", "en_man_deep")


class HiggsError(Exception):
    """A problem the user can fix: the message says what and how."""


@dataclass
class Settings:
    """How to speak: sampling, budgets and long-text handling."""

    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.95
    ras_window: int = 7
    ras_max_repeat: int = 2
    seed: int = 0
    max_seconds: float = 300.0  # the whole text
    chunk_words: int = 60  # long text is split into chunks of at most this many words
    context_chunks: int = 2  # earlier chunks replayed as context (references always are)
    scene: str | None = DEFAULT_SCENE

    def params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            ras_window=self.ras_window,
            ras_max_repeat=self.ras_max_repeat,
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


@dataclass
class _Chunk:
    text: str
    codes: np.ndarray
    stop: str
    prompt_tokens: int
    frames: int


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
        return f"pin-{fingerprint(self.model_path)}-{fingerprint(self.codec.path)}"

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
                self.voices.save_codes(name, key, codes)
            return Speaker(transcript=voice.transcript, codes=codes)
        if codes is None:
            codes = self._pin(name)
        return Speaker(transcript=PIN_TEXT, codes=codes)

    def _pin(self, name: str) -> np.ndarray:
        """Speak the pin sentence once in the described voice, with the voice's seed."""
        builtin = BUILTINS[name]
        chunk = self._generate_chunk(
            PIN_TEXT,
            [Speaker(description=builtin.description)],
            [],
            Settings(seed=builtin.seed),
            15 * self.frame_rate,  # the pin sentence takes about 5 s
        )
        for event in chunk:
            if isinstance(event, _Chunk):
                self.voices.pin(name, self.pin_key, event.codes, PIN_TEXT)
                return event.codes
        raise AssertionError("generation ended without a result")

    def speakers(self, text, voices=(), refs=(), warn=lambda _: None) -> list[Speaker]:
        """Voices for SPEAKER0, SPEAKER1, ...: named voices, then (audio, text) references;
        tags that nothing names get the default voices in turn."""
        out = [self.speaker(v, warn) for v in voices]
        for audio, transcript in refs:
            transcript = " ".join((transcript or "").split())
            if not transcript:
                raise HiggsError(f"reference audio {audio} needs its transcript (--ref-text)")
            out.append(Speaker(transcript=transcript, codes=self.encode_file(audio)))
        tags = {int(n) for n in SPEAKER_TAG.findall(text)}
        for i in range(len(out), max(tags, default=-1) + 1):
            out.append(self.speaker(DEFAULT_SPEAKERS[i % len(DEFAULT_SPEAKERS)], warn))
        return out

    # speech out -----------------------------------------------------------------

    def say(
        self, text: str, *, voice=None, voices=(), refs=(), progress=None, warn=None, **settings
    ) -> Speech:
        """Speak ``text``; all chunks' codes are decoded together at the end."""
        start = time.perf_counter()
        chunks = []
        for event in self._generate(text, voice, voices, refs, progress, warn, settings):
            if isinstance(event, _Chunk):
                chunks.append(event)
        codes = np.concatenate([c.codes for c in chunks], axis=1)
        samples = np.array(self.codec.decode(mx.array(codes)), dtype=np.float32)
        return self._speech(samples, codes, chunks, time.perf_counter() - start)

    def stream(
        self,
        text: str,
        *,
        voice=None,
        voices=(),
        refs=(),
        progress=None,
        warn=None,
        result: list | None = None,
        **settings,
    ) -> Iterator[np.ndarray]:
        """Speak ``text``, yielding float32 PCM as soon as the codec has it final.

        Pass a list as ``result`` to receive the :class:`Speech` (whose
        ``samples`` are everything yielded) once the stream ends.
        """
        start = time.perf_counter()
        decoder = self.codec.stream_decoder()
        K = self.num_codebooks
        chunks, pieces = [], []
        bos = mx.full((K,), self.model.config.audio_stream_bos_id, dtype=mx.int32)
        frames, sent = [bos], 0  # this chunk's delayed frames; its code columns pushed

        def push(codes):
            pcm = np.array(decoder.push(mx.array(codes)), dtype=np.float32)
            if pcm.size:
                pieces.append(pcm)
            return pcm

        for event in self._generate(text, voice, voices, refs, progress, warn, settings):
            if isinstance(event, _Chunk):
                # The chunk's exact codes, minus the columns already sent.
                if event.codes.shape[1] > sent and (pcm := push(event.codes[:, sent:])).size:
                    yield pcm
                chunks.append(event)
                frames, sent = [bos], 0
                continue
            frames.append(event)
            # Code column c is reverted column c + 1 (column 0 is BOS), final once frame
            # c + 1 + (K - 1) exists. Hold the newest final column back: when the chunk
            # ends on EOS it is the EOS column, not audio.
            ready = len(frames) - K - 1
            # Push a few columns at a time: the stream decoder's cost per push is mostly
            # fixed (5 frames a push run 2x faster than 1), for 160 ms more latency.
            if ready - sent >= PUSH_FRAMES:
                window = mx.stack(frames[sent + 1 : ready + K], axis=1)  # [K, ready - sent + K - 1]
                codes = mx.clip(revert_delay(window), 0, self.codec.codebook_size - 1)
                if (pcm := push(codes)).size:
                    yield pcm
                sent = ready
        tail = np.array(decoder.flush(), dtype=np.float32)
        if tail.size:
            pieces.append(tail)
            yield tail
        if result is not None:
            codes = np.concatenate([c.codes for c in chunks], axis=1)
            samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
            result.append(self._speech(samples, codes, chunks, time.perf_counter() - start))

    def _speech(self, samples, codes, chunks, seconds) -> Speech:
        return Speech(
            samples=samples,
            sample_rate=self.sample_rate,
            codes=codes,
            chunks=[c.text for c in chunks],
            stop_reasons=[c.stop for c in chunks],
            prompt_tokens=sum(c.prompt_tokens for c in chunks),
            frames=sum(c.frames for c in chunks),
            seconds=seconds,
        )

    def _generate(self, text, voice, voices, refs, progress, warn, overrides):
        """Yield every sampled frame ([K] arrays) and, after each chunk, a _Chunk."""
        settings = Settings(**overrides)
        warn = warn or (lambda _: None)
        text = (text or "").strip()
        if not text:
            raise HiggsError("there is no text to speak")
        voices = ([voice] if voice else []) + list(voices)
        speakers = self.speakers(text, voices, refs, warn)
        pieces = chunk_text(text, settings.chunk_words)
        budget = settings.max_seconds
        context: list[tuple[str, np.ndarray]] = []
        audio_seconds, start = 0.0, time.perf_counter()

        def report(chunk, frames, max_frames, seconds, done=False):
            if progress:
                elapsed = time.perf_counter() - start
                progress(Progress(chunk, len(pieces), frames, max_frames, seconds, elapsed, done))

        for i, piece in enumerate(pieces):
            piece = normalize(piece)
            if budget <= 0:
                warn(f"--max-seconds reached: {len(pieces) - i} chunk(s) left unspoken")
                break
            # Guard against runaway generation: ~1 s per word is 2-3x a natural pace.
            limit = min(budget, 5.0 + 1.0 * count_words(piece))
            frames, max_frames = 0, max(1, int(limit * self.frame_rate))
            for event in self._generate_chunk(
                piece, speakers, context, replace_seed(settings, i), max_frames
            ):
                if isinstance(event, _Chunk):
                    seconds = event.codes.shape[1] / self.frame_rate
                    audio_seconds += seconds
                    budget -= seconds
                    keep = max(settings.context_chunks, 0)
                    context = [*context, (piece, event.codes)][-keep:] if keep else []
                    report(i, frames, max_frames, audio_seconds, done=True)
                else:
                    frames += 1
                    if frames % 5 == 0:
                        report(i, frames, max_frames, audio_seconds + frames / self.frame_rate)
                yield event
            mx.clear_cache()

    def _generate_chunk(self, text, speakers, context, settings, max_frames):
        from higgs_core import generate_frames

        cfg = self.model.config
        messages = conversation(text, speakers, scene=settings.scene, context=context)
        prompt = encode_prompt(
            self.tokenizer,
            messages,
            audio_out_id=cfg.audio_out_token_id,
            stream_bos=cfg.audio_stream_bos_id,
            stream_eos=cfg.audio_stream_eos_id,
        )
        gen = generate_frames(
            self.model,
            mx.array(prompt.input_ids, dtype=mx.int32),
            mx.array(prompt.audio_ids) if len(prompt.audio_ids) else None,
            params=settings.params(),
            max_frames=max_frames,
            seed=settings.seed,
        )
        yield from gen
        res = gen.result
        yield _Chunk(
            text,
            np.array(res.codes, dtype=np.int32),
            res.stop_reason,
            len(prompt.input_ids),
            res.num_frames,
        )


def replace_seed(settings: Settings, chunk: int) -> Settings:
    """Each chunk draws from its own seed, derived from the run's."""
    from dataclasses import replace

    return replace(settings, seed=settings.seed + 1000003 * chunk)


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
