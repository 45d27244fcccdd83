"""The whole pipeline behind one object: text in, 24 kHz speech out.

>>> tts = Higgs.from_pretrained()
>>> speech = tts.say("Good morning.", voice="en_woman")
>>> stream = tts.stream("A longer text ...", voice="en_man")
>>> for pcm in stream: ...
>>> stream.speech  # the whole Speech, once the stream is exhausted
>>> speeches = tts.say_many(["One text.", Request("Another.", voices=("en_man",))])

A request's work is a job (:mod:`higgs_cli.runner`) that waits on a
:class:`higgs_core.Batch`: ``say`` runs one job, ``say_many`` many at once,
decoded together one frame per model step, and ``higgs serve`` keeps a runner
going for its clients.
"""

import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import mlx.core as mx
import numpy as np

from higgs_cli.prefixes import PrefixCache, load_prefix, model_identity, prefix_key, save_prefix
from higgs_cli.prompt import Prompt, Speaker, conversation, encode_prompt, speaker_tags
from higgs_cli.runner import Job, Runner, Work
from higgs_cli.settings import (
    DEFAULT_CODEC,
    DEFAULT_MODEL,
    MAX_REF_SECONDS,
    MAX_SPEAKERS,
    HiggsError,
    NoAudio,
    ReferenceTooLong,
    Request,
    Settings,
    check_speakers,
)
from higgs_cli.speech import ManyStream, Progress, Speech, SpeechStream
from higgs_cli.text import chunk_text, count_words, normalize, sound_events
from higgs_cli.voices import BUILTINS, PIN_TEXT, VoiceError, VoiceStore, check_name, fingerprint
from higgs_core import Batch, Finished, Frames, LogitsProcessor, PrefixReady, Status
from higgs_sampling import CodeColumns, frames_for_codes

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
    "check_speakers",
    "encode_file",
]

# Frames of codes handed to the stream decoder at a time.
PUSH_FRAMES = 4
# Prompt positions prefilled per model step: alone, and in the server while other
# streams run (the longest they wait for a newcomer is one join chunk: at full size on
# the 2-core CPU 4.1 s, against 15.7 s for a 300-position prompt at once). Offline
# batches join in whole chunks, so each row is exactly its own say (see higgs_core.Batch).
PREFILL_CHUNK, JOIN_CHUNK = 512, 64
# Voice prefixes: the least kept, the memory they may take by default, the files per voice.
MIN_PREFIX, PREFIX_CACHE_MB, PREFIX_FILES = 16, 512, 8
# A chunk's frame budget guards against runaway generation: ~1 s per word is 2-3x a
# natural pace. Sound events (humming, music, laughter) are not words: each gets its
# own allowance, up to the 2048 frames the release allows one call (max_new_tokens).
BASE_SECONDS, WORD_SECONDS, EVENT_SECONDS, EVENT_FRAMES_CAP = 5.0, 1.0, 20.0, 2048
# A built-in voice's pin is kept only if the model ended it itself, at a sane length;
# otherwise the next seed is tried, this many times in all.
PIN_ATTEMPTS, PIN_SECONDS = 4, (2.0, 12.0)

# For the most positions a row can hold: a text turn's tokens at most, per word and
# of markup (English takes ~1.3 a word), and the system turn with a scene.
TURN_TOKENS_PER_WORD, TURN_TOKENS, SYSTEM_TOKENS = 3, 16, 256

Warn = Callable[[str], None]


def _quiet(_: str):
    pass


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
        self.voices = voices or VoiceStore()
        self._encoder = None
        self._pins: dict[str, np.ndarray] = {}  # pins made here that could not be stored
        self.prefixes = PrefixCache(int(prefix_cache_mb * 2**20))
        self.max_ref_seconds = MAX_REF_SECONDS  # longest reference recording taken
        self._unwritable: set[Path] = set()  # voice folders a prefix could not be saved to
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
        prefix_cache_mb: float = PREFIX_CACHE_MB,
    ) -> "Higgs":
        """Load from hub ids or local folders (defaults: $HIGGS_MODEL, $HIGGS_CODEC,
        else Boson AI's released checkpoints). ``prefix_cache_mb``: memory for
        voice prefixes (0 keeps none in memory)."""
        from tokenizers import Tokenizer

        from higgs_codec import load_codec
        from higgs_codec import resolve_path as resolve_codec
        from higgs_core import load_model, resolve_path

        model = model or os.environ.get("HIGGS_MODEL") or DEFAULT_MODEL
        codec = codec or os.environ.get("HIGGS_CODEC") or DEFAULT_CODEC
        # Both found (or fetched) before either loads: a missing codec is not
        # discovered after the model's seconds of loading.
        model_path = resolve_path(model)
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
        return encode_file(self.encoder(), path, self.max_ref_seconds)

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

    def speaker(self, name: str, warn: Warn = _quiet) -> Speaker:
        """The prompt speaker for voice ``name``, pinning a built-in voice on first use."""
        return self._run(lambda batch: self._speaker(name, batch, warn), max_batch=1)

    def _speaker(self, name: str, batch: Batch, warn: Warn) -> Work:
        voice = self.voices.get(name)
        key = self.pin_key if voice.kind == "builtin" else self.codec_key
        try:
            codes = self.voices.codes(name, key, self.num_codebooks)
        except VoiceError as e:
            warn(f"{e}; making it again")
            codes = None
        if voice.kind == "recording":
            assert voice.audio is not None  # the store checks a recording has its copy
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
            codes = yield from self._pin(name, batch, warn)
        return Speaker(transcript=PIN_TEXT, codes=codes)

    def _pin(self, name: str, batch: Batch, warn: Warn) -> Work:
        """Speak the pin sentence in the described voice until the model ends it
        itself at a sane length (the voice's seed, then the next ones), and keep it."""
        builtin = BUILTINS[name]
        low, high = PIN_SECONDS
        # one column past the longest take kept, so a take that runs on stops past it
        max_frames = frames_for_codes(int(high * self.frame_rate) + 1, self.num_codebooks)
        speakers = [Speaker(description=builtin.description)]
        tries = []
        for attempt in range(PIN_ATTEMPTS):
            seed = builtin.seed + attempt
            settings = Settings(seed=seed)
            prompt = self._prompt(PIN_TEXT, speakers, [], settings)
            res = yield from self._frames(batch, prompt, settings, seed, max_frames)
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

    def _speakers(self, request: Request, batch: Batch, warn: Warn) -> Work:
        """Voices for SPEAKER0, SPEAKER1, ...: named voices, then the references.
        With none, the prompt lets the model pick (one voice, or for a dialogue
        the release's alternating feminine/masculine descriptions)."""
        out = []
        for name in request.voices:
            out.append((yield from self._speaker(name, batch, warn)))
        for audio, transcript in request.refs:
            codes = self.encode_file(audio)
            out.append(Speaker(transcript=" ".join(transcript.split()), codes=codes))
        for transcript, codes in request.clones:
            if codes.shape[0] != self.num_codebooks:
                raise HiggsError(
                    f"a cloned voice has {codes.shape[0]} codebooks, the model {self.num_codebooks}"
                )
            out.append(Speaker(transcript=transcript, codes=np.asarray(codes, np.int32)))
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
        request = self.request(text, **options)
        return self._run(lambda batch: self._speak(request, batch, None, progress, warn), 1)

    def stream(self, text, *, progress=None, warn=None, **options) -> SpeechStream:
        """Speak ``text`` (or a :class:`Request`), yielding float32 PCM as soon as
        the codec has it final; the stream's ``speech`` is set once it ends."""
        request = self.request(text, **options)
        out = SpeechStream(iter(()))
        many = self._many([request], 1, progress, warn, streaming=True)

        def pieces():
            for _, pcm in many:
                yield pcm
            out.speech = many.speeches[0]

        out._pieces = pieces()
        return out

    def say_many(
        self, requests: Iterable, *, max_batch: int = 8, progress=None, warn=None
    ) -> list[Speech]:
        """Speak many texts (or :class:`Request` objects) at once, up to
        ``max_batch`` streams decoded together; the speeches, in order. Each one
        equals its own ``say``."""
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
        requests = [r if isinstance(r, Request) else self.request(r) for r in requests]
        for r in requests:
            r.check()
        out = ManyStream(iter(()))

        def pieces():
            runner = Runner(self.new_batch(max_batch))
            ready: deque[tuple[int, np.ndarray]] = deque()
            jobs = []
            for i, r in enumerate(requests):
                emit = (lambda pcm, i=i: ready.append((i, pcm))) if streaming else None
                jobs.append(runner.add(self._speak(r, runner.batch, emit, progress, warn)))
            try:
                while runner.jobs:
                    runner.tick()
                    while ready:
                        yield ready.popleft()
                    for job in jobs:
                        if job.error is not None:
                            raise job.error
            finally:
                for job in jobs:
                    job.cancel()
            out.speeches = [job.result for job in jobs]

        out._pieces = pieces()
        return out

    def new_batch(self, max_batch: int = 8, join_chunk: int = PREFILL_CHUNK) -> Batch:
        return Batch(
            self.model, max_batch=max_batch, prefill_chunk=PREFILL_CHUNK, join_chunk=join_chunk
        )

    def _run(self, work: Callable[[Batch], Work], max_batch: int):
        """Run one job to its end on a batch of its own; its result (or its error)."""
        runner = Runner(self.new_batch(max_batch))
        job: Job = runner.add(work(runner.batch))
        try:
            runner.run()
        finally:
            job.cancel()
        if job.error is not None:
            raise job.error
        return job.result

    def max_row_positions(self, settings: Settings) -> int:
        """About the most positions one request's row holds at once: the system turn,
        a reference of the longest recording taken with its transcript (a served
        request has one voice), then the chunks replayed as context and the one being
        spoken, each at its frame budget (which the model seldom reaches)."""
        words = settings.chunk_words
        turn = TURN_TOKENS + TURN_TOKENS_PER_WORD * words
        chunk = turn + self.chunk_frames(" ".join(["word"] * words))
        ref = turn + int(self.max_ref_seconds * self.frame_rate)
        return SYSTEM_TOKENS + ref + (settings.context_chunks + 1) * chunk

    def chunk_frames(self, text: str) -> int:
        """A chunk's frame budget: time for its words, and for its sound events."""
        words = BASE_SECONDS + WORD_SECONDS * count_words(text)
        events = EVENT_SECONDS * sound_events(text)
        seconds = max(words, min(words + events, EVENT_FRAMES_CAP / self.frame_rate))
        return max(1, int(seconds * self.frame_rate))

    def job(self, request: Request, batch: Batch, *, emit=None, progress=None, warn=None) -> Work:
        """The work of one request, for a :class:`~higgs_cli.runner.Runner` on
        ``batch``: PCM to ``emit`` as it is made (or decoded whole at the end, when
        ``emit`` is None); returns the :class:`Speech`."""
        return self._speak(request.check(), batch, emit, progress, warn)

    def _speak(self, request: Request, batch: Batch, emit, progress, tell) -> Work:
        settings = request.settings
        warnings: list[str] = []
        tell = tell or _quiet

        def warn(message: str):
            warnings.append(message)
            tell(message)

        start = time.perf_counter()
        speakers = yield from self._speakers(request, batch, warn)
        tags = speaker_tags(request.text)  # the whole text's, for every chunk's prompt
        pieces = chunk_text(normalize(request.text), settings.chunk_words)
        budget = int(settings.max_seconds * self.frame_rate)  # audio frames left for the text
        context: list[tuple[str, np.ndarray]] = []
        decoder = self.codec.stream_decoder() if emit else None
        done: list[tuple] = []  # (piece, prompt, result, host codes) of each chunk spoken
        sent: list[np.ndarray] = []
        audio_seconds = 0.0

        def report(i, frames, max_frames, seconds, finished=False):
            if progress:
                elapsed = time.perf_counter() - start
                before = sum(res.num_frames for _, _, res, _ in done[:i])  # the chunks spoken
                progress(
                    Progress(
                        i,
                        len(pieces),
                        frames,
                        max_frames,
                        seconds,
                        elapsed,
                        finished,
                        text_frames=before + frames,
                    )
                )

        def push(codes):
            pcm = np.array(decoder.push(codes), dtype=np.float32)
            if pcm.size:
                sent.append(pcm)
                emit(pcm)

        for i, piece in enumerate(pieces):
            if budget < 1:
                warn(
                    f"--max-seconds {settings.max_seconds:g} reached: {len(pieces) - i} of "
                    f"{len(pieces)} chunks left unspoken"
                )
                break
            own = self.chunk_frames(piece)
            # What is left of --max-seconds is audio: the delay ramp and the column the
            # release drops are frames to sample on top of it.
            max_frames = min(own, frames_for_codes(budget, self.num_codebooks))
            prompt = self._prompt(piece, speakers, context, settings, tags)
            columns = CodeColumns(self.num_codebooks, self.codec.codebook_size)
            columns.push(mx.full((self.num_codebooks,), self.model.config.audio_stream_bos_id))

            def on_frames(frames, n, last, i=i, m=max_frames, s=audio_seconds, columns=columns):
                for frame in frames:
                    columns.push(frame)
                columns.last_frame = last  # so no final column waits to see if it is the last
                if n // 5 > (n - len(frames)) // 5:
                    # Audio is the columns that are final (the delay ramp's frames are
                    # not yet audio), so the figure only grows, into the chunk's total.
                    report(i, n, m, s + max(columns.ready, 0) / self.frame_rate)
                if not decoder:
                    return
                # A few columns a push: the stream decoder's cost per push is mostly
                # fixed (5 frames a push run 2x faster than 1), for 160 ms more latency;
                # until audio first comes out, as soon as the decoder can give some.
                want = PUSH_FRAMES
                if not sent:
                    want = max(1, min(want, decoder.first_audio_frames - decoder.frames_in))
                if (ready := columns.take(want)) is not None:
                    push(ready)

            res = yield from self._frames(
                batch,
                prompt,
                settings,
                settings.chunk_seed(i),
                max_frames,
                on_frames,
                folder=self._prefix_folder(request),
                warn=warn,
            )
            columns.last_frame = res.num_frames  # whatever ended it
            if decoder and (rest := columns.take()) is not None:
                push(rest)
            codes = np.array(res.codes, dtype=np.int32)  # on the host, for prompts and Speech
            done.append((piece, prompt, res, codes))
            audio_seconds += codes.shape[1] / self.frame_rate
            budget -= codes.shape[1]
            keep = settings.context_chunks
            context = [*context, (piece, codes)][-keep:] if keep else []
            report(i, res.num_frames, max_frames, audio_seconds, finished=True)
            if res.stop_reason == "max_frames":
                where = f"chunk {i + 1}/{len(pieces)} ({_opening(piece)})"
                if max_frames < own:
                    left = len(pieces) - i - 1
                    warn(
                        f"--max-seconds {settings.max_seconds:g} reached in {where}: it is cut "
                        f"short" + (f" and {left} more chunk(s) left unspoken" if left else "")
                    )
                    break
                warn(
                    f"{where} reached its budget of {own / self.frame_rate:.1f} s before the "
                    "model ended it; it may be cut short"
                )
        host = [c for *_, c in done] or [np.zeros((self.num_codebooks, 0), np.int32)]
        codes = np.concatenate(host, axis=1)
        if codes.shape[1] == 0:  # the same answer whether it streams or not
            raise NoAudio(
                "no audio was made: the model ended the speech before its first whole frame "
                "(try another seed or a longer text)"
            )
        if decoder:
            tail = np.array(decoder.flush(), dtype=np.float32)
            if tail.size:
                sent.append(tail)
                emit(tail)
            samples = np.concatenate(sent) if sent else np.zeros(0, np.float32)
        else:
            # the device's own copies of the codes, not the host's
            whole = mx.concatenate([res.codes for _, _, res, _ in done], axis=1)
            samples = np.array(self.codec.decode(whole), dtype=np.float32)
        return Speech(
            samples=samples,
            sample_rate=self.sample_rate,
            codes=codes,
            chunks=[piece for piece, *_ in done],
            stop_reasons=[res.stop_reason for _, _, res, _ in done],
            prompt_tokens=sum(len(p.input_ids) for _, p, *_ in done),
            cached_tokens=sum(res.cached_tokens for _, _, res, _ in done),
            frames=sum(res.num_frames for _, _, res, _ in done),
            seconds=time.perf_counter() - start,
            warnings=warnings,
        )

    def _frames(
        self,
        batch,
        prompt: Prompt,
        settings,
        seed,
        max_frames,
        on_frames=None,
        *,
        folder: Path | None = None,
        warn: Warn = _quiet,
    ) -> Work:
        """Generate one prompt's frames in ``batch``, waiting on it; hands each
        step's new frames to ``on_frames(frames, count, last)`` (``last``: the
        index of the stream's last frame as far as it is known); returns the result.

        The prompt's constant beginning comes from the prefix cache (memory, then
        ``folder`` on disk) when it is there, and is kept there when it is not.
        """
        ids = np.array(prompt.input_ids, dtype=np.int32)
        audio = prompt.audio_ids if len(prompt.audio_ids) else None
        key, prefix, keep = None, None, 0
        if prompt.prefix_tokens >= MIN_PREFIX:
            P = prompt.prefix_tokens
            n_audio = int(self.model.audio_mask(ids[:P]).sum())
            prefix_audio = audio[:n_audio] if audio is not None and n_audio else None
            key = prefix_key(self.model_identity, ids[:P], prefix_audio)
            prefix = self.prefixes.get(key) or self._read_prefix(key, folder, prefix_audio, warn)
            keep = 0 if prefix is not None else P
        ticket = batch.submit(
            ids,
            audio,
            history=prompt.history,  # audio out only, as the release's RAS window
            params=settings.sampling,
            max_frames=max_frames,
            seed=seed,
            prefix=prefix,
            keep_prefix=keep,
            logits_processor=self._processor(),
        )
        try:
            while True:
                for event in (yield ticket):
                    if isinstance(event, PrefixReady):
                        self._keep_prefix(key, event.prefix, folder, warn)
                    elif isinstance(event, Frames):
                        if on_frames:
                            on_frames(event.frames, event.count, event.last)
                    elif isinstance(event, Finished):
                        return event.result
        finally:
            if ticket.status is not Status.FINISHED:
                ticket.cancel()

    def _processor(self) -> LogitsProcessor | None:
        make = type(self).logits_processors
        return make(self) if make else None

    def _prefix_folder(self, request: Request) -> Path | None:
        """Where a request's voice prefixes are stored: beside its voice, when its
        speakers are stored voices."""
        if not request.voices or request.refs or request.clones:
            return None
        folder = self.voices.root / request.voices[0]
        return folder if folder.is_dir() else None

    def _read_prefix(self, key, folder, audio, warn: Warn):
        if folder is None:
            return None
        path = folder / f"prefix-{key}.safetensors"
        if not path.is_file():
            return None
        try:
            prefix = load_prefix(path, key, self.model, None if audio is None else mx.array(audio))
        except ValueError as e:
            warn(f"the stored prefix {path.name} of voice {folder.name!r} is {e}; making it again")
            path.unlink(missing_ok=True)
            return None
        self.prefixes.loaded += 1
        self.prefixes.put(key, prefix)
        return prefix

    def _keep_prefix(self, key, prefix, folder, warn: Warn):
        self.prefixes.put(key, prefix)
        if folder is None or folder in self._unwritable:
            return
        try:
            save_prefix(folder / f"prefix-{key}.safetensors", key, prefix)
            files = sorted(folder.glob("prefix-*.safetensors"), key=lambda p: p.stat().st_mtime)
            for old in files[:-PREFIX_FILES]:
                old.unlink(missing_ok=True)
        except OSError as e:
            self._unwritable.add(folder)
            warn(f"cannot store the prefix of voice {folder.name!r} ({e}); keeping it in memory")

    def _prompt(self, text, speakers, context, settings, tags=None) -> Prompt:
        cfg = self.model.config
        messages = conversation(
            text,
            speakers,
            scene=settings.scene,
            context=context,
            refs_in_system=settings.ref_in_system,
            tags=tags,
        )
        refs_in = settings.ref_in_system and any(s.cloned for s in speakers)
        if refs_in and not cfg.encode_audio_in_tokens:
            raise HiggsError(
                "this model does not read audio in its system turn "
                "(encode_audio_in_tokens is off in its config); clone without --ref-in-system"
            )
        return encode_prompt(
            self.tokenizer,
            messages,
            audio_out_id=cfg.audio_out_token_id,
            audio_in_id=cfg.audio_in_token_id,
            stream_bos=cfg.audio_stream_bos_id,
            stream_eos=cfg.audio_stream_eos_id,
            # The system and reference turns: all but the context turns and the text.
            prefix_messages=len(messages) - 2 * len(context) - 1,
        )


def _opening(text: str, words: int = 5) -> str:
    head = text.split()
    return '"' + " ".join(head[:words]) + ("…" if len(head) > words else "") + '"'


def codec_key(codec) -> str:
    """The fingerprint under which codes made by ``codec`` are stored."""
    return f"codec-{fingerprint(codec.path)}"


def check_ref_audio(path: str | os.PathLike, max_seconds: float = MAX_REF_SECONDS):
    """A reference recording's length against the limit, from its header alone (no model,
    no decoding): what the CLI and the server check before anything loads."""
    from higgs_codec import CodecError
    from higgs_codec.audio import read_audio_info

    try:
        seconds = read_audio_info(path)
    except CodecError as e:
        raise HiggsError(str(e)) from e
    if seconds > max_seconds:
        raise ReferenceTooLong(
            f"{path} is {seconds:.1f} s long; reference audio may be at most {max_seconds:g} s"
        )


def encode_file(codec, path: str | os.PathLike, max_seconds: float = MAX_REF_SECONDS) -> np.ndarray:
    """Codes ``[K, T]`` of an audio file of at most ``max_seconds`` (checked before decoding)."""
    from higgs_codec import read_audio

    wave, sr = read_audio(path, max_seconds=max_seconds)
    return np.array(codec.encode(wave, sr), dtype=np.int32)


def add_voice(
    store: VoiceStore, codec, name, audio, text, *, force=False, max_seconds=MAX_REF_SECONDS
):
    """Encode a recording once and keep it, with its transcript, as voice ``name``.

    ``codec``: a loaded codec, or a hub id / folder to load one from. The audio
    is read and encoded before anything is written.
    """
    check_name(name)
    if isinstance(codec, str | os.PathLike):
        from higgs_codec import load_codec

        codec = load_codec(codec)
    codes = encode_file(codec, audio, max_seconds)
    return store.add(name, Path(audio), text, codes=codes, key=codec_key(codec), force=force)
