"""Many streams in one batch, each with settings, a seed and a budget of its own.

:class:`FrameSampler` samples a batch of streams that share their settings and
one key. A server batches clients that asked for different temperatures, seeds
and lengths, and streams join and leave between frames; :class:`RowSampler`
keeps every setting per row, in the state, so rows can be taken out
(:meth:`RowState.take`) and put together (:meth:`RowState.concat`) at any
frame. A row's frames depend on nothing but its own logits, settings and seed:
the same in a batch of one as among seven others.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial

import mlx.core as mx
import numpy as np

from higgs_sampling.delay import _check_delays, frames_to_codes
from higgs_sampling.frames import _NO_EOS, advance
from higgs_sampling.params import SamplingParams
from higgs_sampling.samplers import draw, greedy, rank, scale


@dataclass(frozen=True)
class RowState:
    """Per-row state and settings; every field's leading axis is the row.

    pos, eos_col, stop: as in :class:`~higgs_sampling.FrameState`.
    max_frames: each row's budget. history ``[B, K, W]``: each codebook's last
    codes for RAS, W the widest window among the rows (-1: empty; a row looks
    at its last ``window`` entries only). key ``[B, 2]``: each row's PRNG key.
    """

    pos: mx.array
    eos_col: mx.array
    stop: mx.array
    max_frames: mx.array
    history: mx.array
    window: mx.array
    max_repeat: mx.array
    temperature: mx.array
    top_k: mx.array
    top_p: mx.array
    key: mx.array
    # Each row's top-k as the host knows it (-1 for a greedy row): a batch whose
    # sampled rows all filter by top-k ranks only the top max(k) entries.
    ks: tuple[int, ...] = ()

    def arrays(self) -> list[mx.array]:
        return [getattr(self, f.name) for f in fields(self) if f.name != "ks"]

    @property
    def rows(self) -> int:
        return self.pos.shape[0]

    def take(self, rows) -> "RowState":
        """The state of some rows (a list of row indices), in that order."""
        idx = mx.array(rows, dtype=mx.int32)
        taken = {f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name != "ks"}
        known = len(self.ks) == self.rows
        return RowState(**taken, ks=tuple(self.ks[r] for r in rows) if known else ())

    @property
    def kmax(self) -> int:
        """The entries a step ranks: the largest top-k of the sampled rows, or 0 (all)
        when one of them does not filter by top-k."""
        if len(self.ks) != self.rows:
            return 0  # not known (a state built by hand): rank them all
        sampled = [k for k in self.ks if k >= 0]
        if not sampled:
            return 1  # every row greedy: the draw is not used
        return max(sampled) if min(sampled) > 0 else 0

    @staticmethod
    def concat(states: Sequence["RowState"]) -> "RowState":
        """Rows of several states in one; histories are padded to the widest window."""
        W = max(s.history.shape[-1] for s in states)

        def widen(h):
            pad = W - h.shape[-1]
            return h if pad == 0 else mx.pad(h, [(0, 0), (0, 0), (pad, 0)], constant_values=-1)

        out = {
            f.name: mx.concatenate([getattr(s, f.name) for s in states])
            for f in fields(RowState)
            if f.name not in ("history", "ks")
        }
        return RowState(
            history=mx.concatenate([widen(s.history) for s in states]),
            # per-row top-k, when every state knows its rows'
            ks=tuple(k for s in states for k in s.ks)
            if all(len(s.ks) == s.rows for s in states)
            else (),
            **out,
        )


class RowSampler:
    """Samples delayed frames for rows that each carry their own settings.

    The state machine is :class:`FrameSampler`'s (synthetic BOS frame, ramp-in,
    EOS ramp-out, budget); the sampling per row is too: temperature, top-k,
    top-p and a Gumbel-max draw from the row's key, then RAS over the row's
    window, with the key split the same way. So one row here gives the frames
    of a one-stream :class:`FrameSampler` with the same settings and key.
    """

    def __init__(
        self,
        num_codebooks: int,
        bos: int,
        eos: int,
        *,
        delays: Sequence[int] | None = None,
        compile: bool = True,
    ):
        self.num_codebooks = num_codebooks
        self.bos, self.eos = bos, eos
        self.delays = _check_delays(delays, num_codebooks)
        self._compile = compile
        self._steps: dict[int, Callable] = {}  # the step for each kmax, compiled

    def start(
        self,
        params: SamplingParams,
        key: mx.array,
        max_frames: int,
        history: mx.array | None = None,
    ) -> tuple[mx.array, RowState]:
        """One row: its synthetic first frame ``[K]`` (all BOS) and its state.

        ``history [K, T]``: earlier delayed codes RAS should look back on.
        """
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        K, W = self.num_codebooks, max(params.ras_window, 0)
        if history is not None and history.shape[0] != K:
            raise ValueError(f"history has {history.shape[0]} codebooks, expected {K}")
        first = mx.full((K,), self.bos, dtype=mx.int32)
        past = [mx.full((K, W), -1, dtype=mx.int32)]
        if history is not None:
            past.append(history.astype(mx.int32))
        past.append(first[:, None])
        window = mx.concatenate(past, axis=-1)[:, mx.arange(-W, 0)] if W else past[0]

        def one(value, dtype):
            return mx.array([value], dtype=dtype)

        state = RowState(
            pos=one(1, mx.int32),
            eos_col=one(_NO_EOS, mx.int32),
            stop=one(0, mx.int32),
            max_frames=one(max_frames, mx.int32),
            history=window[None],
            window=one(W, mx.int32),
            max_repeat=one(params.ras_max_repeat, mx.int32),
            temperature=one(params.temperature, mx.float32),
            top_k=one(params.top_k, mx.int32),
            top_p=one(params.top_p, mx.float32),
            key=key[None],
            ks=(params.top_k if params.temperature > 0 else -1,),
        )
        return first, state

    def last_frames(self, state: RowState) -> list[int | None]:
        """Each row's last frame, once its ramp-out has begun (its EOS column plus the
        largest delay), else None: a stream may end at its budget sooner."""
        D = max(self.delays)
        cols: list[int] = np.array(state.eos_col).tolist()
        return [None if col == _NO_EOS else col + D for col in cols]

    def to_codes(self, frames: mx.array) -> mx.array:
        """A finished row's delayed frames ``[K, F]`` -> codes ``[K, T]``, as
        :meth:`FrameSampler.to_codes` (see :func:`~higgs_sampling.frames_to_codes`)."""
        return frames_to_codes(frames, min(self.bos, self.eos), self.delays)

    def step(self, logits: mx.array, state: RowState) -> tuple[mx.array, RowState]:
        """Sample each row's next frame from ``logits [B, K, V]`` -> ``[B, K]`` int32."""
        kmax = state.kmax
        if kmax not in self._steps:
            step = partial(self._step, kmax=kmax)
            self._steps[kmax] = mx.compile(step) if self._compile else step
        codes, *arrays = self._steps[kmax](logits, *state.arrays())
        names = [f.name for f in fields(RowState) if f.name != "ks"]
        return codes, RowState(**dict(zip(names, arrays, strict=True)), ks=state.ks)

    def _step(
        self,
        logits,
        pos,
        eos_col,
        stop,
        max_frames,
        history,
        window,
        max_repeat,
        temp,
        k,
        p,
        key,
        *,
        kmax: int,
    ):
        shape = logits.shape[1:-1]
        keys = mx.vmap(lambda kk: mx.random.split(kk, 3))(key)
        key, k_draw, k_ras = keys[:, 0], keys[:, 1], keys[:, 2]
        u = mx.vmap(lambda kk: mx.random.uniform(shape=shape, key=kk))(k_draw)
        x = scale(logits, temp)
        codes = mx.where(temp[:, None] > 0, draw(x, u, rank(x, k, p, kmax)), greedy(logits))
        W = history.shape[-1]
        if W > 0:  # repetition-aware sampling, each row over its own window
            seen = (mx.arange(W) >= W - window[:, None])[:, None, :]  # [B, 1, W]
            count = mx.sum((history == codes[..., None]) & seen, axis=-1)
            u_ras = mx.vmap(lambda kk: mx.random.uniform(shape=shape, key=kk))(k_ras)
            redraw = draw(logits.astype(mx.float32), u_ras)
            again = (window[:, None] > 0) & (count >= max_repeat[:, None])
            codes = mx.where(again, redraw, codes)
        codes, pos, eos_col, stop = advance(
            codes, pos, eos_col, stop, max_frames, self.delays, self.bos, self.eos
        )
        if W > 0:
            history = mx.concatenate([history[..., 1:], codes[..., None]], axis=-1)
        return codes, pos, eos_col, stop, max_frames, history, window, max_repeat, temp, k, p, key
