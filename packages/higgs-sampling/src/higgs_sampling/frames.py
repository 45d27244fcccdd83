"""The frame loop of a delayed multi-codebook decoder, as a state machine.

It reproduces the Higgs Audio release (and works for any K and delays):

1. Frame 0 is synthetic: every codebook is the stream BOS; nothing is sampled.
2. Frame p >= 1 is sampled from the model's ``[K, V]`` logits (temperature,
   top-k, top-p, categorical; argmax when greedy), then repetition-aware
   sampling redraws codebooks that repeat too often.
3. Ramp-in: codebook k is forced to BOS while ``p <= delays[k]``.
4. Ramp-out: the first frame in which some codebook yields EOS fixes the
   stream's EOS column ``e = p - d`` (d: the smallest delay among the
   codebooks that yielded EOS; for delays ``k`` that is the lowest such
   codebook). From then on, frame q forces EOS on codebooks with
   ``delays[k] < q - e``, and the stream ends with frame ``e + max(delays)``.
   With delays ``k`` this is the release's rule: the lowest EOS codebook i
   pulls codebooks < i to EOS at once and the segment ends K-1-i frames later.
5. A frame budget stops the stream otherwise.

All state lives in arrays, so a decode loop can call :meth:`FrameSampler.step`
every frame and read ``state.stop`` back only when it wants to.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import mlx.core as mx

from higgs_sampling.delay import _check_delays, frames_to_codes
from higgs_sampling.params import SamplingParams
from higgs_sampling.samplers import repetition_aware, sample

_NO_EOS = 1 << 30  # eos_col while no ramp-out runs: "q - e" stays hugely negative


class StopReason(IntEnum):
    RUNNING = 0
    EOS = 1
    MAX_FRAMES = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class FrameState:
    """Per-stream state; every field has the stream's leading batch shape.

    pos: index of the next frame (frames 0..pos-1 are valid).
    eos_col: the undelayed EOS column once ramp-out began, else a sentinel.
    stop: a :class:`StopReason` value; once non-zero the stream is finished.
    history: ``[..., K, W]`` each codebook's last W codes for RAS (-1: empty).
    key: the PRNG key for the next frame.
    """

    pos: mx.array
    eos_col: mx.array
    stop: mx.array
    history: mx.array
    key: mx.array

    def arrays(self) -> list[mx.array]:
        return [self.pos, self.eos_col, self.stop, self.history, self.key]


def advance(codes, pos, eos_col, stop, max_frames, delays: Sequence[int], bos: int, eos: int):
    """The state machine's step for sampled ``codes [..., K]`` at frame ``pos``: force
    the ramp-in BOS and ramp-out EOS, and move ``pos``, ``eos_col`` and ``stop`` on.
    ``max_frames`` is a number, or an array with one budget per stream."""
    d = mx.array(list(delays), dtype=mx.int32)
    D = max(delays)
    live = stop == int(StopReason.RUNNING)
    codes = mx.where(d >= pos[..., None], bos, codes)  # ramp-in

    is_eos = codes == eos
    first = mx.min(mx.where(is_eos, d, _NO_EOS), axis=-1)
    starts = live & (eos_col == _NO_EOS) & mx.any(is_eos, axis=-1)
    eos_col = mx.where(starts, pos - first, eos_col)
    since = pos - eos_col  # how far past the EOS column this frame is, in delayed time
    codes = mx.where(d < since[..., None], eos, codes)  # ramp-out
    codes = mx.where(live[..., None], codes, eos).astype(mx.int32)

    stop = mx.where(
        live & (since >= D),
        int(StopReason.EOS),
        mx.where(live & (pos >= max_frames), int(StopReason.MAX_FRAMES), stop),
    ).astype(mx.int32)
    pos = mx.where(live, pos + 1, pos)
    return codes, pos, eos_col, stop


class FrameSampler:
    """Samples delayed frames one step at a time.

    Args:
        num_codebooks: K.
        bos, eos: the stream BOS and EOS codes (1024 and 1025 for Higgs).
        params: sampling parameters (temperature, top-k/p, RAS).
        max_frames: the most frames sampled after the synthetic one.
        delays: per-codebook delays, default ``k`` for codebook k.
        compile: compile the step with ``mx.compile``.
    """

    def __init__(
        self,
        num_codebooks: int,
        bos: int,
        eos: int,
        params: SamplingParams | None = None,
        *,
        max_frames: int,
        delays: Sequence[int] | None = None,
        compile: bool = True,
    ):
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.num_codebooks = num_codebooks
        self.bos = bos
        self.eos = eos
        self.params = params or SamplingParams()
        self.max_frames = max_frames
        self.delays = _check_delays(delays, num_codebooks)
        self.window = max(self.params.ras_window, 0)
        self._step_fn = mx.compile(self._step) if compile else self._step

    def start(
        self,
        key: mx.array,
        history: mx.array | None = None,
        batch_shape: tuple[int, ...] = (),
    ) -> tuple[mx.array, FrameState]:
        """The synthetic first frame ``[..., K]`` (all BOS) and the initial state.

        ``history [..., K, T]``: earlier delayed codes of this stream (e.g. the
        prompt's audio) that repetition-aware sampling should look back on.
        """
        K = self.num_codebooks
        if history is not None:
            batch_shape = tuple(history.shape[:-2])
            if history.shape[-2] != K:
                raise ValueError(f"history has {history.shape[-2]} codebooks, expected {K}")
        first = mx.full((*batch_shape, K), self.bos, dtype=mx.int32)
        past = [mx.full((*batch_shape, K, self.window), -1, dtype=mx.int32)]
        if history is not None:
            past.append(history.astype(mx.int32))
        past.append(first[..., None])
        window = mx.concatenate(past, axis=-1)[..., mx.arange(-self.window, 0)]
        state = FrameState(
            pos=mx.full(batch_shape, 1, dtype=mx.int32),
            eos_col=mx.full(batch_shape, _NO_EOS, dtype=mx.int32),
            stop=mx.zeros(batch_shape, dtype=mx.int32),
            history=window,
            key=key,
        )
        return first, state

    def step(self, logits: mx.array, state: FrameState) -> tuple[mx.array, FrameState]:
        """Sample the frame at ``state.pos`` from ``logits [..., K, V]``.

        Returns the frame's codes ``[..., K]`` (int32, BOS/EOS forced where the
        ramps say so) and the next state. Once a stream has stopped, further
        steps return EOS frames and leave its state as it is.
        """
        out = self._step_fn(logits, *state.arrays())
        codes, *arrays = out
        return codes, FrameState(*arrays)

    def _step(self, logits, pos, eos_col, stop, history, key):
        p = self.params
        key, k_draw, k_ras = mx.random.split(key, 3)
        codes = sample(logits, k_draw, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
        if self.window > 0:
            codes = repetition_aware(codes, logits, history, k_ras, p.ras_max_repeat)

        codes, pos, eos_col, stop = advance(
            codes, pos, eos_col, stop, self.max_frames, self.delays, self.bos, self.eos
        )
        if self.window > 0:
            history = mx.concatenate([history[..., 1:], codes[..., None]], axis=-1)
        return codes, pos, eos_col, stop, history, key

    def is_done(self, state: FrameState) -> bool:
        """Whether every stream has stopped (reads the state back to the host)."""
        return bool(mx.all(state.stop != StopReason.RUNNING).item())

    def to_codes(self, frames: mx.array, codebook_size: int | None = None) -> mx.array:
        """Delayed frames ``[K, F]`` (frame 0 the synthetic one) -> codes ``[K, T]``.

        Reverts the delay, drops the first (BOS) and the last column, and clips
        stray BOS/EOS values into ``0..codebook_size-1`` (default: the codes
        below BOS and EOS, as in Higgs). The release drops the last column
        whatever ended the stream (``[:, 1:-1]`` in ``examples/generation.py``):
        after an EOS stop it is the EOS column, after a budget stop a column
        the ramp-out never finished.
        """
        if codebook_size is None:
            codebook_size = min(self.bos, self.eos)
        return frames_to_codes(frames, codebook_size, self.delays)
