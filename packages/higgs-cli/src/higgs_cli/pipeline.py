"""The whole pipeline behind one object: text in, 24 kHz speech out.

>>> tts = Higgs.from_pretrained()
>>> speech = tts.say("Good morning.", voice="en_woman")
>>> stream = tts.stream("A longer text ...", voice="en_man")
>>> for pcm in stream: ...
>>> stream.speech  # the whole Speech, once the stream is exhausted
>>> speeches = tts.say_many(["One text.", Request("Another.", voices=("en_man",))])

A request's work is a job (:mod:`higgs_cli.speak`) that waits on a
:class:`higgs_core.Batch`, run by the :mod:`higgs_cli.engine`: ``say`` runs one
job, ``say_many`` many at once, decoded together one frame per model step, and
``higgs serve`` keeps an engine going for its clients.
"""

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from higgs_cli.engine import Audio, Done, Engine, Failed
from higgs_cli.generation import Generation, Warn, quiet
from higgs_cli.prefixes import PrefixCache, PrefixStore, model_identity
from higgs_cli.prompt import Speaker
from higgs_cli.runner import Work
from higgs_cli.settings import (
    DEFAULT_CODEC,
    DEFAULT_MODEL,
    MAX_REF_SECONDS,
    MAX_SPEAKERS,
    HiggsError,
    NoAudio,
    Request,
    Settings,
    check_speakers,
)
from higgs_cli.speak import Speaking
from higgs_cli.speech import ManyStream, Progress, Speech, SpeechStream
from higgs_cli.voices import VoiceStore, fingerprint
from higgs_cli.voicing import Voicing, add_voice, check_ref_audio, codec_key, encode_file
from higgs_core import Batch, LogitsProcessor
from higgs_sampling import SamplingParams

__all__ = [
    "MAX_REF_SECONDS",
    "MAX_SPEAKERS",
    "Higgs",
    "HiggsError",
    "ManyStream",
    "NoAudio",
    "Progress",
    "Request",
    "Settings",
    "Speech",
    "SpeechStream",
    "add_voice",
    "check_ref_audio",
    "check_speakers",
    "codec_key",
    "encode_file",
]

# Prompt positions prefilled per model step: alone, and in the server while other
# streams run (the longest they wait for a newcomer is one join chunk: at full size on
# the 2-core CPU 4.1 s, against 15.7 s for a 300-position prompt at once). Offline
# batches join in whole chunks, so each row is exactly its own say (see higgs_core.Batch).
PREFILL_CHUNK, JOIN_CHUNK = 512, 64
# Voice prefixes: the memory they may take by default, the files kept per voice.
PREFIX_CACHE_MB, PREFIX_FILES = 512, 8


class _Keep:
    """The default of an option whose None means something (``scene``: none)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()
# The say/stream options that change Settings: its own fields and SamplingParams'.
SETTING_OPTIONS = frozenset(
    ["settings", *(f.name for f in fields(Settings)), *(f.name for f in fields(SamplingParams))]
) - {"sampling"}


def _chosen(options: dict) -> dict:
    """The setting options a caller gave: None leaves a setting as it is, but for
    ``scene``, where None is no scene and KEEP leaves it."""
    return {
        k: v
        for k, v in options.items()
        if k in SETTING_OPTIONS and v is not KEEP and (v is not None or k == "scene")
    }


class Higgs:
    """Model, codec and text tokenizer, loaded once."""

    # A method making a logits processor (see higgs_core.LogitsProcessor) for each stream
    # generated, or None: a seam to steer generation (tests end streams where they need).
    logits_processors: ClassVar[Callable[["Higgs"], LogitsProcessor | None] | None] = None

    def __init__(
        self,
        model,
        codec,
        tokenizer,
        *,
        model_path: Path,
        codec_path,
        voices=None,
        prefix_cache_mb: float = PREFIX_CACHE_MB,
    ):
        self.model = model
        self.codec = codec
        self.tokenizer = tokenizer
        self.model_path = Path(model_path)
        self.codec_source = codec_path
        self._encoder = None
        cfg = model.config
        self.num_codebooks = cfg.num_codebooks
        self.sample_rate = codec.sample_rate
        self.frame_rate = codec.frame_rate
        # The pieces, each handed its collaborators: the prefix store, prompts and
        # frames, voices into speakers, requests into speech.
        self.store = PrefixStore(PrefixCache(int(prefix_cache_mb * 2**20)), model, PREFIX_FILES)
        self.generation = Generation(
            model, tokenizer, self.store, lambda: self.model_identity, self._processor
        )
        self.voicing = Voicing(
            voices or VoiceStore(),
            self.generation,
            self.encoder,
            pin_key=lambda: self.pin_key,
            codec_key=lambda: self.codec_key,
            model_path=self.model_path,
            frame_rate=self.frame_rate,
            num_codebooks=self.num_codebooks,
        )
        self.speaking = Speaking(
            codec, self.generation, self.voicing, bos_id=cfg.audio_stream_bos_id
        )
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
        prefix_cache_mb: float = PREFIX_CACHE_MB,
    ) -> "Higgs":
        """Load from hub ids or local folders (defaults: $HIGGS_MODEL, $HIGGS_CODEC,
        else Boson AI's released checkpoints). ``prefix_cache_mb``: memory for
        voice prefixes (0 keeps none in memory)."""
        from tokenizers import Tokenizer

        from higgs_codec import load_codec
        from higgs_codec import resolve_path as resolve_codec
        from higgs_core import ModelNotFoundError, load_model, resolve_path

        model = model or os.environ.get("HIGGS_MODEL") or DEFAULT_MODEL
        codec = codec or os.environ.get("HIGGS_CODEC") or DEFAULT_CODEC
        # Both found (or fetched) before either loads: a missing codec is not
        # discovered after the model's seconds of loading.
        try:
            model_path = resolve_path(model)
        except ModelNotFoundError as e:
            # Whether the codec is here, so that the advice asks only for what is missing.
            try:
                resolve_codec(codec)
                e.codec_found = True  # type: ignore[attr-defined]
            except Exception:
                e.codec_found = False  # type: ignore[attr-defined]
            raise
        codec = resolve_codec(codec)
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
            prefix_cache_mb=prefix_cache_mb,
        )

    # keys under which stored codes are valid ----------------------------------

    # what the pieces hold that callers set ------------------------------------------

    @property
    def voices(self) -> VoiceStore:
        return self.voicing.voices

    @voices.setter
    def voices(self, store: VoiceStore):
        self.voicing.voices = store

    @property
    def max_ref_seconds(self) -> float:
        """The longest reference recording taken."""
        return self.voicing.max_ref_seconds

    @max_ref_seconds.setter
    def max_ref_seconds(self, seconds: float):
        self.voicing.max_ref_seconds = seconds

    @property
    def prefixes(self) -> PrefixCache:
        """Voice prefixes in memory (their files are beside the voices)."""
        return self.store.memory

    @prefixes.setter
    def prefixes(self, cache: PrefixCache):
        self.store.memory = cache

    def _processor(self) -> LogitsProcessor | None:
        make = type(self).logits_processors
        return make(self) if make else None

    # keys under which stored codes are valid ----------------------------------

    @cached_property
    def codec_key(self) -> str:
        return codec_key(self.codec)

    @cached_property
    def model_identity(self) -> str:
        return model_identity(self.model, fingerprint(self.model_path))

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
        return self.voicing.encode_file(path)

    # voices ---------------------------------------------------------------------

    def add_voice(self, name: str, audio: str | os.PathLike, text: str, *, force=False):
        """Encode a recording once and keep it (with its transcript) as voice ``name``."""
        return add_voice(
            self.voices,
            self.encoder(),
            name,
            audio,
            text,
            force=force,
            max_seconds=self.max_ref_seconds,
        )

    def speaker(self, name: str, warn: Warn = quiet) -> Speaker:
        """The prompt speaker for voice ``name``, pinning a built-in voice on first use."""
        return self._run(lambda batch: self.voicing.speaker(name, batch, warn), max_batch=1)

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

    def say(
        self,
        text: str | Request,
        *,
        voice: str | None = None,
        voices: Sequence[str] = (),
        refs: Sequence[tuple[str | os.PathLike, str]] = (),
        settings: Settings | None = None,
        seed: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        ras_window: int | None = None,
        ras_max_repeat: int | None = None,
        max_seconds: float | None = None,
        chunk_words: int | None = None,
        context_chunks: int | None = None,
        scene: str | _Keep | None = KEEP,
        ref_in_system: bool | None = None,
        progress: Callable[[Progress], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> Speech:
        """Speak ``text`` (or a :class:`Request`); all chunks' codes are decoded
        together at the end, as the release does.

        ``voice``/``voices``: stored voices for SPEAKER0, SPEAKER1, ...; ``refs``:
        ``(audio file, transcript)`` recordings to clone, after them. The rest change
        ``settings`` (default :class:`Settings`, the release's): a setting left None
        keeps its value there. ``progress`` gets a :class:`Progress` as frames come;
        ``warn`` each warning, as it happens (they are also in the speech)."""
        request = self.request(text, voice=voice, voices=voices, refs=refs, **_chosen(locals()))
        return self._run(lambda batch: self.speaking.job(request, batch, None, progress, warn), 1)

    def stream(
        self,
        text: str | Request,
        *,
        voice: str | None = None,
        voices: Sequence[str] = (),
        refs: Sequence[tuple[str | os.PathLike, str]] = (),
        settings: Settings | None = None,
        seed: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        ras_window: int | None = None,
        ras_max_repeat: int | None = None,
        max_seconds: float | None = None,
        chunk_words: int | None = None,
        context_chunks: int | None = None,
        scene: str | _Keep | None = KEEP,
        ref_in_system: bool | None = None,
        progress: Callable[[Progress], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> SpeechStream:
        """Speak ``text`` (or a :class:`Request`), yielding float32 PCM as soon as
        the codec has it final; the stream's ``speech`` is set once it ends. The
        options are :meth:`say`'s."""
        request = self.request(text, voice=voice, voices=voices, refs=refs, **_chosen(locals()))
        out = SpeechStream(iter(()))
        many = self._many([request], 1, progress, warn, streaming=True)

        def pieces():
            for _, pcm in many:
                yield pcm
            assert many.speeches is not None  # set once the pieces run out
            if isinstance(speech := many.speeches[0], Exception):
                raise speech
            out.speech = speech

        out._pieces = pieces()
        return out

    def say_many(
        self, requests: Iterable, *, max_batch: int = 8, progress=None, warn=None
    ) -> list[Speech | Exception]:
        """Speak many texts (or :class:`Request` objects) at once, up to
        ``max_batch`` streams decoded together; the speeches, in order. Each one
        equals its own ``say``. A request that fails (no text, an unknown voice,
        unreadable reference audio, ...) has its exception in its place, as
        ``higgs batch`` records a bad row, and the others are spoken."""
        many = self._many(list(requests), max_batch, progress, warn, streaming=False)
        for _ in many:
            pass
        assert many.speeches is not None  # set once the pieces run out
        return many.speeches

    def stream_many(
        self, requests: Iterable, *, max_batch: int = 8, progress=None, warn=None
    ) -> ManyStream:
        """:meth:`say_many` as it happens: ``(index, pcm)`` pieces of every request,
        interleaved; ``speeches`` once exhausted."""
        return self._many(list(requests), max_batch, progress, warn, streaming=True)

    def _many(self, requests, max_batch, progress, warn, *, streaming) -> ManyStream:
        checked: list[Request | Exception] = []
        for r in requests:
            try:
                checked.append((r if isinstance(r, Request) else self.request(r)).check())
            except Exception as e:  # this request's own failure, in its place
                checked.append(e)
        out = ManyStream(iter(()))

        def pieces():
            engine = Engine(self.new_batch(max_batch))
            results: list = list(checked)  # a failed check stays in its place
            for i, r in enumerate(checked):
                if isinstance(r, Request):
                    engine.add(
                        i,
                        lambda emit, r=r: self.speaking.job(
                            r, engine.batch, emit if streaming else None, progress, warn
                        ),
                    )
            try:
                while engine.pending:
                    for event in engine.tick():
                        if isinstance(event, Audio):
                            yield event.key, event.pcm
                        elif isinstance(event, Done):
                            results[event.key] = event.result
                        else:
                            results[event.key] = event.error
            finally:
                engine.close()
            out.speeches = results

        out._pieces = pieces()
        return out

    def new_batch(self, max_batch: int = 8, join_chunk: int = PREFILL_CHUNK) -> Batch:
        return Batch(
            self.model, max_batch=max_batch, prefill_chunk=PREFILL_CHUNK, join_chunk=join_chunk
        )

    def _run(self, work: Callable[[Batch], Work], max_batch: int):
        """Run one job to its end on a batch of its own; its result (or its error)."""
        engine = Engine(self.new_batch(max_batch))
        engine.add(0, lambda _: work(engine.batch))
        try:
            while engine.pending:
                for event in engine.tick():
                    if isinstance(event, Failed):
                        raise event.error
                    if isinstance(event, Done):
                        return event.result
        finally:
            engine.close()

    def job(self, request: Request, batch: Batch, *, emit=None, progress=None, warn=None) -> Work:
        """The work of one request, for a :class:`~higgs_cli.engine.Engine` on
        ``batch``: PCM to ``emit`` as it is made (or decoded whole at the end, when
        ``emit`` is None); returns the :class:`Speech`."""
        return self.speaking.job(request.check(), batch, emit, progress, warn)

    def max_row_positions(self, settings: Settings) -> int:
        """About the most positions one request's row holds at once."""
        return self.speaking.max_row_positions(settings)

    def chunk_frames(self, text: str) -> int:
        """A chunk's frame budget: time for its words, and for its sound events."""
        return self.speaking.chunk_frames(text)
