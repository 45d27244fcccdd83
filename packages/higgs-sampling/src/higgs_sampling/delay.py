"""Delay patterns for multi-codebook audio tokens.

Codebook k of a delayed stream runs ``delays[k]`` steps behind the undelayed
codes, so a model can condition codebook k on codebooks < k of the same frame.
MusicGen and Higgs use ``delays[k] = k``; Dia uses custom delays.

Shapes are ``[..., K, T]`` (codebooks, time) throughout.
"""

from collections.abc import Sequence

import mlx.core as mx


def default_delays(num_codebooks: int) -> list[int]:
    """The MusicGen/Higgs delays: codebook k is k steps late."""
    return list(range(num_codebooks))


def _check_delays(delays: Sequence[int] | None, num_codebooks: int) -> list[int]:
    if delays is None:
        return default_delays(num_codebooks)
    delays = [int(d) for d in delays]
    if len(delays) != num_codebooks:
        raise ValueError(f"got {len(delays)} delays for {num_codebooks} codebooks")
    if any(d < 0 for d in delays):
        raise ValueError(f"delays must be >= 0, got {delays}")
    return delays


def apply_delay(
    codes: mx.array,
    delays: Sequence[int] | None = None,
    *,
    lead: int,
    trail: int,
) -> mx.array:
    """Shift codebook k right by ``delays[k]``.

    ``codes [..., K, T]`` becomes ``[..., K, T + max(delays)]``: row k is
    ``delays[k]`` copies of ``lead``, then the codes, then
    ``max(delays) - delays[k]`` copies of ``trail``.
    """
    *batch, K, T = codes.shape
    delays = _check_delays(delays, K)
    D = max(delays)
    # Gather instead of padding row by row: out[k, t] = codes[k, t - d_k].
    t = mx.arange(T + D)[None, :] - mx.array(delays)[:, None]  # [K, T + D]
    shape = (*batch, K, T + D)
    if T == 0:
        return mx.broadcast_to(mx.where(t < 0, lead, trail), shape).astype(codes.dtype)
    src = mx.take_along_axis(codes, mx.broadcast_to(mx.clip(t, 0, T - 1), shape), axis=-1)
    out = mx.where(t < 0, lead, mx.where(t >= T, trail, src))
    return out.astype(codes.dtype)


def revert_delay(delayed: mx.array, delays: Sequence[int] | None = None) -> mx.array:
    """Undo :func:`apply_delay`: ``[..., K, F]`` -> ``[..., K, F - max(delays)]``.

    Row k of the result is ``delayed[k, d_k : d_k + F - D]``. A stream that is
    still being generated can be reverted as it grows: column t is final once
    frame ``t + max(delays)`` exists.
    """
    *batch, K, F = delayed.shape
    delays = _check_delays(delays, K)
    T = F - max(delays)
    if T < 0:
        raise ValueError(f"{F} delayed frames are fewer than the largest delay {max(delays)}")
    idx = mx.arange(T)[None, :] + mx.array(delays)[:, None]
    return mx.take_along_axis(delayed, mx.broadcast_to(idx, (*batch, K, T)), axis=-1)


def frames_to_codes(
    frames: mx.array, codebook_size: int, delays: Sequence[int] | None = None
) -> mx.array:
    """A finished stream's delayed frames ``[K, F]`` (frame 0 the synthetic one) ->
    codes ``[K, T]``: the delay reverted, the first (BOS) and last columns dropped and
    stray BOS/EOS values clipped into ``0..codebook_size-1``.

    The release drops the last column whatever ended the stream (``[:, 1:-1]`` in
    ``examples/generation.py``): after an EOS stop it is the EOS column, after a budget
    stop a column the ramp-out never finished. A stream that stopped before every
    codebook got past its delay has no whole column: ``[K, 0]``.
    """
    K, F = frames.shape[-2:]
    delays = _check_delays(delays, K)
    if max(delays) >= F:
        return mx.zeros((*frames.shape[:-1], 0), dtype=mx.int32)
    return mx.clip(revert_delay(frames, delays)[..., 1:-1], 0, codebook_size - 1)


def frames_for_codes(codes: int, num_codebooks: int, delays: Sequence[int] | None = None) -> int:
    """The frames to sample after the synthetic one for a stream its budget stops to end
    with ``codes`` whole code columns: those, the largest delay's ramp, and the last
    column, which :func:`frames_to_codes` drops as the release does."""
    return codes + max(_check_delays(delays, num_codebooks)) + 1


def build_delay_pattern(
    codes: mx.array,
    bos: int,
    eos: int,
    delays: Sequence[int] | None = None,
) -> mx.array:
    """Wrap a clip as ``[BOS, codes, EOS]`` and delay it (how Higgs feeds audio).

    ``[..., K, T]`` -> ``[..., K, T + 2 + max(delays)]``: row k carries
    ``1 + d_k`` BOS, the codes, then ``1 + max(delays) - d_k`` EOS.
    """
    *batch, K, _ = codes.shape
    wrapped = mx.concatenate(
        [
            mx.full((*batch, K, 1), bos, dtype=codes.dtype),
            codes,
            mx.full((*batch, K, 1), eos, dtype=codes.dtype),
        ],
        axis=-1,
    )
    return apply_delay(wrapped, delays, lead=bos, trail=eos)


class CodeColumns:
    """Turns a delayed stream, frame by frame, into finished code columns.

    Push every frame ``[K]`` of a stream as it is made, the synthetic BOS frame
    first; :meth:`take` hands out the code columns ``[K, n]`` that no later
    frame can change, with the delay reverted and values clipped into
    ``0..codebook_size-1``. Like :meth:`FrameSampler.to_codes` (and the release,
    which keeps ``[:, 1:-1]``), the BOS column is never handed out, nor the
    stream's last column, whatever ended it. So the columns taken over a whole
    stream are exactly ``to_codes`` of its frames.

    The last column is the one its last frame makes final. Until ``last_frame``
    (that frame's index: the stream's budget, then its EOS column plus the
    largest delay) is known, the newest final column is held back in case it is
    the last; with it, each column goes out as soon as it is final.
    """

    def __init__(
        self,
        num_codebooks: int,
        codebook_size: int,
        delays: Sequence[int] | None = None,
        last_frame: int | None = None,
    ):
        self.delays = _check_delays(delays, num_codebooks)
        self.codebook_size = codebook_size
        self.frames: list[mx.array] = []
        self.sent = 0  # reverted columns 1..sent are handed out (column 0 is BOS)
        self.last_frame = last_frame

    def push(self, frame: mx.array) -> None:
        self.frames.append(frame)

    @property
    def ready(self) -> int:
        """The last column that can be handed out now (final, and not the stream's last)."""
        D = max(self.delays)
        final = len(self.frames) - D - 1
        if self.last_frame is None:
            return final - 1
        return min(final, self.last_frame - D - 1)

    def take(self, at_least: int = 1) -> mx.array | None:
        """The next finished columns ``[K, n]``, once at least ``at_least`` are ready."""
        ready = self.ready
        if ready - self.sent < max(at_least, 1):
            return None
        D = max(self.delays)
        window = mx.stack(self.frames[self.sent + 1 : ready + D + 1], axis=-1)
        self.sent = ready
        return mx.clip(revert_delay(window, self.delays), 0, self.codebook_size - 1)
