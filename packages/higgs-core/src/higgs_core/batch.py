"""Many streams, one model step per frame: the batched frame loop.

A :class:`Batch` runs streams (a prompt each, with its own sampling settings,
seed and frame budget) together. Each :meth:`Batch.step` queues one decode
step for every stream in the batch (the weights read once for all of them,
each stream attending over its own KV cache), reads the previous step back,
and prefills one chunk of a waiting stream, which joins at the next frame
boundary. Streams leave when they finish or are cancelled, and their cache
goes with them. So continuous batching is just calling ``step`` while
:attr:`Batch.busy`; one stream alone is the single-stream loop.

:meth:`Batch.submit` hands back a :class:`Ticket`; each ``step`` returns what
happened to the streams, as events naming their tickets: :class:`Frames` (new
frames, with the stream's last frame once known), :class:`PrefixReady` (a
prompt prefix to keep) and :class:`Finished` (its result). A caller routes them
to whoever waits on each ticket.

The reads are one step behind the device: step t+1 is queued before step t is
read, so the device never waits on Python. A stream's last frame is known
ahead (its budget, or its EOS column plus the largest delay once its ramp-out
shows), so no step is queued past it, except when a ramp-out starts and ends in
the same frame (the extra frame is dropped).
"""

import enum
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache

from higgs_core.model import HiggsAudioModel
from higgs_core.prefix import Prefix
from higgs_sampling import RowSampler, RowState, SamplingParams, StopReason


@dataclass(frozen=True)
class GenerationResult:
    """What a finished stream produced.

    frames: ``[K, F]`` delayed codes; frame 0 is the synthetic all-BOS frame.
    codes: ``[K, T]`` the audio codes (delay reverted, first and last columns
        dropped, as the release does).
    stop_reason: "eos", "max_frames" or "cancelled".
    num_frames: sampled frames (``F - 1``).
    prefill_seconds: the prompt's prefill and the first frame's sampling.
    decode_seconds: wall time from there to the end, including the time the
        caller spent between frames.
    """

    frames: mx.array
    codes: mx.array
    stop_reason: str
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    cached_tokens: int = 0  # prompt positions taken from a prefix cache

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1] - 1

    @property
    def frames_per_second(self) -> float:
        return self.num_frames / self.decode_seconds if self.decode_seconds > 0 else 0.0


# logits_processor(frame, logits): the audio logits ``[K, V]`` from which frame number
# ``frame`` (1 is the first after the synthetic one) is sampled, as the sampler is to
# see them. A seam for steering generation (tests end streams where they need to).
LogitsProcessor = Callable[[int, mx.array], mx.array]


class Status(enum.Enum):
    WAITING = "waiting"  # queued, or its prompt going in chunk by chunk
    RUNNING = "running"  # a row of the batch, a frame each step
    FINISHED = "finished"  # its result is out (a Finished event)


@dataclass(eq=False)
class _Stream:
    """One stream in a :class:`Batch`: the batch's own record, behind a :class:`Ticket`.
    ``frames`` grows as frames are read back (``frames[0]`` is the synthetic BOS frame)."""

    ids: np.ndarray  # the prompt, plus the synthetic frame's placeholder
    audio: mx.array | None  # its audio positions' frames, the synthetic one last
    history: mx.array | None
    params: SamplingParams
    seed: int
    max_frames: int
    prompt_tokens: int
    cache: list[KVCache]
    processor: LogitsProcessor | None = None
    status: Status = Status.WAITING
    done: int = 0  # prompt positions in the cache
    cached: int = 0  # of which from a prefix
    keep_prefix: int = 0  # hand out a PrefixReady once this many positions are in
    frames: list[mx.array] = field(default_factory=list)
    state: RowState | None = None  # its own, until it joins the batch
    end: int = 0  # the last frame that can exist (tightened when EOS shows)
    queued: int = 0  # frames queued so far (the synthetic one counts)
    last: mx.array | None = None  # the newest frame queued
    result: GenerationResult | None = None
    cancelled: bool = False
    error: BaseException | None = None
    t0: float = 0.0
    t1: float = 0.0
    ticket: "Ticket" = field(init=False)  # what its caller holds, made with it

    def __post_init__(self):
        self.ticket = Ticket(self)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


class Ticket:
    """A submitted stream, as its caller sees it: the name its events carry."""

    __slots__ = ("_stream",)

    def __init__(self, stream: _Stream):
        self._stream = stream

    @property
    def status(self) -> Status:
        return self._stream.status

    @property
    def result(self) -> GenerationResult | None:
        """What it made, once finished (as its :class:`Finished` event says)."""
        return self._stream.result

    @property
    def prefilled(self) -> int:
        """Prompt positions in its cache so far (those of a prefix included)."""
        return self._stream.done

    @property
    def cached(self) -> int:
        """Prompt positions taken from a prefix."""
        return self._stream.cached

    def cancel(self):
        """Leave the batch at the next step, which finishes it with what was made."""
        self._stream.cancelled = True


@dataclass(frozen=True)
class Frames:
    """New frames of a stream (``[K]`` each, delayed layout, in order). ``count``:
    its frames so far, the synthetic one not counted; ``last``: the number of its
    last frame as far as it is known (its budget until its EOS shows)."""

    ticket: Ticket
    frames: tuple[mx.array, ...]
    count: int
    last: int


@dataclass(frozen=True)
class PrefixReady:
    """The stream's first ``keep_prefix`` positions, to start other prompts from."""

    ticket: Ticket
    prefix: Prefix


@dataclass(frozen=True)
class Finished:
    """The stream ended (after its last :class:`Frames`): on EOS, its budget or a cancel."""

    ticket: Ticket
    result: GenerationResult


Event = Frames | PrefixReady | Finished


class Batch:
    """Streams decoded together, joining and leaving at frame boundaries.

    Args:
        model: the model.
        max_batch: the most streams decoded at once; the others wait.
        prefill_chunk: prompt positions prefilled per step when no stream runs.
        join_chunk: prompt positions prefilled per step while streams run: the
            longest a running stream waits for a newcomer is one such chunk.
            By default ``prefill_chunk``, so that a prompt splits as it does
            alone and its frames are exactly its single run's (kernels round a
            chunk's rows alike only for chunks of one size). Smaller stalls the
            others less for a little prefill speed: at full size on the 2-core
            CPU, while a 300-position prompt joins, 64 a step keeps the others
            waiting at most 4.1 s for a frame against 15.7 s, and the newcomer
            is in after 19.1 s against 15.7 s (``benchmarks/bench_join.py``).
    """

    def __init__(
        self,
        model: HiggsAudioModel,
        *,
        max_batch: int = 8,
        prefill_chunk: int = 512,
        join_chunk: int | None = None,
    ):
        join_chunk = prefill_chunk if join_chunk is None else join_chunk
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        for name, value in (("prefill_chunk", prefill_chunk), ("join_chunk", join_chunk)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        cfg = model.config
        self.model = model
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.join_chunk = join_chunk
        self.sampler = RowSampler(
            cfg.num_codebooks, cfg.audio_stream_bos_id, cfg.audio_stream_eos_id
        )
        self._waiting: deque[_Stream] = deque()
        self._live: list[_Stream] = []  # in the order of the batch's rows
        self._state: RowState | None = None
        self._queued: tuple[list[_Stream], mx.array, RowState] | None = None
        self._draining: list[_Stream] = []
        self._events: list[Event] = []
        self.steps = 0

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self.running or self._queued or self._draining)

    # -- streams in -------------------------------------------------------------

    def submit(
        self,
        input_ids: Sequence[int] | np.ndarray | mx.array,
        audio_ids=None,
        *,
        params: SamplingParams,
        max_frames: int,
        seed: int = 0,
        history=None,
        prefix: Prefix | None = None,
        keep_prefix: int = 0,
        logits_processor: LogitsProcessor | None = None,
    ) -> Ticket:
        """Queue a stream: ``input_ids`` ends with ``<|audio_out_bos|>``; each audio
        placeholder takes the next row of ``audio_ids [N, K]``; RAS looks back
        over ``history [M, K]`` (default: all of ``audio_ids``). ``prefix``: the
        cached state of the prompt's first positions. ``keep_prefix``: hand out a
        :class:`PrefixReady` of the first this many positions on the way (a chunk
        of the prefill ends there). ``logits_processor``: see
        :data:`LogitsProcessor`."""
        model, cfg = self.model, self.model.config
        ids = np.asarray(input_ids.tolist() if isinstance(input_ids, mx.array) else input_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"input_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
        if int(ids[-1]) != cfg.audio_out_bos_token_id:
            raise ValueError(
                f"input_ids must end with <|audio_out_bos|> ({cfg.audio_out_bos_token_id}), "
                f"got {int(ids[-1])}"
            )
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        K = cfg.num_codebooks
        audio = None if audio_ids is None else mx.array(audio_ids).astype(mx.int32)
        if audio is not None and audio.size == 0:
            audio = None
        if audio is not None and (audio.ndim != 2 or audio.shape[1] != K):
            raise ValueError(f"audio_ids must be [N, {K}], got shape {tuple(audio.shape)}")
        model.route(ids, audio)  # every audio position has a frame, every code is in range
        if history is not None:
            history = mx.array(history).astype(mx.int32)
            if history.size == 0:  # nothing to look back on
                history = None
            elif history.ndim != 2 or history.shape[1] != K:
                raise ValueError(f"history must be [N, {K}], got shape {tuple(history.shape)}")
        elif audio is not None:
            history = audio
        cache, done = model.make_cache(), 0
        if prefix is not None:
            self._check_prefix(prefix, ids, audio)
            cache, done = prefix.fresh_cache(), prefix.length
        if not 0 <= keep_prefix < len(ids):
            raise ValueError(f"keep_prefix must lie in 0..{len(ids) - 1}, got {keep_prefix}")
        # The synthetic BOS frame rides at the end of the prefill: its logits give frame 1.
        first = mx.full((1, K), cfg.audio_stream_bos_id, dtype=mx.int32)
        stream = _Stream(
            ids=np.append(ids.astype(np.int64), cfg.audio_out_token_id),
            audio=first if audio is None else mx.concatenate([audio, first]),
            history=history,
            params=params,
            seed=seed,
            max_frames=max_frames,
            prompt_tokens=len(ids),
            cache=cache,
            done=done,
            cached=done,
            end=max_frames,
            keep_prefix=keep_prefix if keep_prefix > done else 0,
            processor=logits_processor,
        )
        self._waiting.append(stream)
        return stream.ticket

    def _check_prefix(self, prefix: Prefix, ids: np.ndarray, audio: mx.array | None):
        n = prefix.length
        if n >= len(ids) or not np.array_equal(ids[:n], prefix.ids):
            raise ValueError("the prefix is not the beginning of this prompt")
        n_audio = int(self.model.audio_mask(prefix.ids).sum())
        if n_audio and (
            audio is None
            or prefix.audio is None
            or not mx.array_equal(audio[:n_audio], prefix.audio)
        ):
            raise ValueError("the prefix's audio is not this prompt's")

    # -- the loop -----------------------------------------------------------------

    def step(self) -> list[Event]:
        """Queue a decode step for the batch, read the previous one back, and
        prefill a chunk of a waiting stream; what happened, in order."""
        self._drop_cancelled()
        queued = self._queue_decode()
        self._read_back()
        self._queued = queued
        self._prefill_some()
        self.steps += 1
        if self.steps % 256 == 0:  # KV caches grow in 256-position blocks: drop the old ones
            mx.clear_cache()
        events, self._events = self._events, []
        return events

    def run(self):
        """Step until every stream has finished."""
        while self.busy:
            self.step()

    @property
    def running(self) -> int:
        """Streams in the batch (not finished, not waiting)."""
        return sum(not s.finished for s in self._live)

    @property
    def waiting(self) -> int:
        """Streams waiting for a row, or with their prompt going in."""
        return len(self._waiting)

    def _drop_cancelled(self):
        now = time.perf_counter()
        for s in [s for s in self._waiting if s.cancelled]:
            self._waiting.remove(s)
            s.t1 = s.t1 or now
            self._finish(s, "cancelled", now)
        for s in self._live:
            if s.cancelled and not s.finished:
                self._finish(s, "cancelled", now)

    def _queue_decode(self):
        """Queue the next frame of every stream that has one to come."""
        rows = [s for s in self._live if not s.finished and s.queued <= s.end]
        # Streams whose last frame is queued but not yet read leave the batch's rows
        # and wait for that read.
        self._draining = [s for s in self._live if not s.finished and s not in rows]
        if not rows:
            self._live, self._state = [], None
            return None
        if rows != self._live:
            assert self._state is not None  # rows are live, so the state has them
            self._state = self._state.take([self._live.index(s) for s in rows])
        logits = self.model.step_rows(mx.stack([s.last for s in rows]), [s.cache for s in rows])
        if any(s.processor for s in rows):
            logits = mx.stack(
                [
                    s.processor(s.queued, logits[b]) if s.processor else logits[b]
                    for b, s in enumerate(rows)
                ]
            )
        assert self._state is not None
        codes, self._state = self.sampler.step(logits, self._state)
        mx.async_eval(codes, *self._state.arrays())
        for b, s in enumerate(rows):
            s.last = codes[b]
            s.queued += 1
        self._live = list(rows)  # joins append to live, never to the rows queued
        return rows, codes, self._state

    def _read_back(self):
        """Hand out the frames of the step queued last time; end the streams it ended."""
        if self._queued is None:
            return
        rows, codes, state = self._queued
        self._queued = None
        stop, last = np.array(state.stop), self.sampler.last_frames(state)
        now = time.perf_counter()
        for b, s in enumerate(rows):
            if s.finished:
                continue
            # Not new: a frame past a ramp-out that began and ended at once.
            new = len(s.frames) <= s.end
            if new:
                s.frames.append(codes[b])
            if last[b] is not None:
                s.end = min(s.end, last[b])
            if new:
                self._frames_out(s, [codes[b]])
            if stop[b] != StopReason.RUNNING:
                self._finish(s, StopReason(int(stop[b])).label, now)
        for s in self._draining:  # cannot happen: a stream's last frame sets its stop flag
            if not s.finished:
                raise RuntimeError(f"a stream passed its last frame {s.end} without stopping")
        self._draining = []

    def _prefill_some(self):
        """One chunk of the first waiting stream's prompt, if the batch has room;
        a stream whose prompt is in joins the batch with its first frame."""
        if not self._waiting or self.running >= self.max_batch:
            return
        s = self._waiting[0]
        if not s.t0:
            s.t0 = time.perf_counter()
        chunk = self.join_chunk if self.running else self.prefill_chunk
        end = min(s.done + chunk, len(s.ids))
        if s.done < s.keep_prefix:
            end = min(end, s.keep_prefix)
        logits = self.model.prefill_chunk(s.ids, s.audio, s.cache, s.done, end)
        s.done = end
        if end == s.keep_prefix:
            self._events.append(PrefixReady(s.ticket, self._snapshot(s)))
        if end < len(s.ids):
            mx.eval([c.state for c in s.cache])
            return
        self._waiting.popleft()
        first, state = self.sampler.start(
            s.params,
            mx.random.key(s.seed),
            s.max_frames,
            None if s.history is None else s.history.T,
        )
        if s.processor:
            logits = s.processor(1, logits)
        frame, state = self.sampler.step(logits[None], state)
        mx.eval(frame, *state.arrays())
        s.frames, s.last, s.queued = [first, frame[0]], frame[0], 2
        s.t1 = time.perf_counter()
        s.status = Status.RUNNING
        self._frames_out(s, [frame[0]])
        if state.stop.item() != StopReason.RUNNING:  # a budget of one frame
            self._finish(s, StopReason(state.stop.item()).label, s.t1)
            return
        self._state = state if self._state is None else RowState.concat([self._state, state])
        self._live.append(s)

    def _frames_out(self, s: _Stream, frames: list[mx.array]):
        self._events.append(Frames(s.ticket, tuple(frames), len(s.frames) - 1, s.end))

    def _snapshot(self, s: _Stream) -> Prefix:
        n = s.done
        cache = []
        for c in s.cache:
            kept = KVCache()
            # Copies: the stream goes on writing into its own cache.
            kept.keys = mx.contiguous(c.keys[..., :n, :])
            kept.values = mx.contiguous(c.values[..., :n, :])
            kept.offset = n
            cache.append(kept)
        n_audio = int(self.model.audio_mask(s.ids[:n]).sum())
        audio = s.audio[:n_audio] if s.audio is not None and n_audio else None
        # Evaluated here: a kept prefix holds data, not work queued on this thread's
        # stream, which another thread (the library beside a server's worker) cannot run.
        mx.eval([c.state for c in cache], audio)
        return Prefix(s.ids[:n].copy(), audio, cache)

    def _finish(self, s: _Stream, reason: str, now: float):
        K = self.model.config.num_codebooks
        stacked = mx.stack(s.frames, axis=1) if s.frames else mx.zeros((K, 0), dtype=mx.int32)
        codes = self.sampler.to_codes(stacked)
        mx.eval(stacked, codes)
        s.result = GenerationResult(
            frames=stacked,
            codes=codes,
            stop_reason=reason,
            prompt_tokens=s.prompt_tokens,
            prefill_seconds=(s.t1 or now) - (s.t0 or now),
            decode_seconds=now - (s.t1 or now),
            cached_tokens=s.cached,
        )
        s.status = Status.FINISHED
        s.cache = []  # its KV memory goes with it
        self._events.append(Finished(s.ticket, s.result))
