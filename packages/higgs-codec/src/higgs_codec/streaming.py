"""Streaming decode: every layer of the acoustic decoder run incrementally.

Each convolution keeps just the input it still needs (its left context) and emits an
output sample as soon as the input to its right has arrived; at the end of the stream
the layers see the zero padding a whole-utterance decode sees. Samples therefore come
out exactly as a whole decode computes them (up to float rounding), each once, with
total work linear in the length and a fixed look-ahead: the decoder's receptive field
to the right (`StreamDecoder.lookahead_frames`).

Where the codec's layers compute in numpy (Linux CPUs, see `layers`), a stream runs
wholly in numpy from the latents on, and only its samples go back to MLX.
"""

from typing import TYPE_CHECKING, Protocol

import mlx.core as mx
import numpy as np

from .dac import DecoderBlock, ResidualUnit, Snake
from .layers import Array, Conv1d, ConvTranspose1d, numpy_gemm

if TYPE_CHECKING:
    from .model import Codec


class Stage(Protocol):
    """One incremental layer: ``push`` the next input, get the outputs now final."""

    def push(self, x: Array) -> Array: ...
    def final_count(self, n: int) -> int: ...
    def flush(self) -> Array | None: ...


# A stream's arrays are MLX's or numpy's throughout, as its input decides.
def _zeros(like: Array, shape: tuple[int, ...]) -> Array:
    return np.zeros(shape, np.float32) if isinstance(like, np.ndarray) else mx.zeros(shape)


def _cat(parts: "list[Array]") -> Array:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=1)
    return mx.concatenate(parts, axis=1)  # type: ignore[arg-type]


class StreamConv:
    """Stride-1 conv with symmetric zero padding (k - 1) * dilation / 2."""

    def __init__(self, conv: Conv1d):
        self.conv = conv
        out_dim, k, in_dim = conv.weight.shape
        self.span = (k - 1) * conv.dilation
        self.out_dim, self.in_dim = out_dim, in_dim
        self.buffer: Array | None = None  # the inputs still needed; first, the left padding

    def _run(self, x: Array) -> Array:
        if x.shape[1] <= self.span:
            return _zeros(x, (1, 0, self.out_dim))
        return self.conv(x, padding=0)

    def push(self, x: Array) -> Array:
        if self.buffer is None:
            self.buffer = _zeros(x, (1, self.span // 2, self.in_dim))
        x = _cat([self.buffer, x])
        self.buffer = x[:, max(x.shape[1] - self.span, 0) :]
        return self._run(x)

    def final_count(self, n: int) -> int:
        return max(n - self.span // 2, 0)

    def flush(self) -> Array | None:
        if self.buffer is None:
            return None
        pad = _zeros(self.buffer, (1, self.span // 2, self.in_dim))
        return self._run(_cat([self.buffer, pad]))


class StreamSnake:
    def __init__(self, module: Snake):
        self.snake = module

    def push(self, x: Array) -> Array:
        return self.snake(x)

    def final_count(self, n: int) -> int:
        return n

    def flush(self) -> Array | None:
        return None


class StreamConvTranspose:
    """Transposed conv with kernel 2 * stride: output block i mixes inputs i - 1 and i."""

    def __init__(self, conv: ConvTranspose1d):
        self.conv = conv
        self.stride = conv.stride
        self.padding = conv.padding
        self.prev: Array | None = None  # last input sample (x[-1] = 0 before the stream starts)
        self.skip = self.padding  # the reference crops `padding` samples off the front
        self.out_dim = conv.weight.shape[0]

    def _blocks(self, x: Array) -> Array:
        s = self.stride
        y = self.conv(x, padding=0, output_padding=0)[:, s : x.shape[1] * s]
        if self.skip:
            cut = min(self.skip, y.shape[1])
            y, self.skip = y[:, cut:], self.skip - cut
        return y

    def push(self, x: Array) -> Array:
        if x.shape[1] == 0:
            return _zeros(x, (1, 0, self.out_dim))
        prev = self.prev if self.prev is not None else _zeros(x, (1, 1, x.shape[2]))
        self.prev = x[:, -1:]
        return self._blocks(_cat([prev, x]))

    def final_count(self, n: int) -> int:
        return max(n * self.stride - self.padding, 0)

    def flush(self) -> Array | None:
        if self.prev is None:
            return None
        tail = self._blocks(_cat([self.prev, _zeros(self.prev, self.prev.shape)]))
        return tail[:, : self.padding]


class Chain:
    """Stages in sequence; flushing one feeds its tail to the rest, then flushes them."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages

    def push(self, x: Array) -> Array:
        for stage in self.stages:
            x = stage.push(x)
        return x

    def final_count(self, n: int) -> int:
        for stage in self.stages:
            n = stage.final_count(n)
        return n

    def flush(self) -> Array | None:
        x = None
        for stage in self.stages:
            y = stage.push(x) if x is not None and x.shape[1] else None
            tail = stage.flush()
            parts = [p for p in (y, tail) if p is not None]
            x = _cat(parts) if parts else None
        return x


class StreamResidual:
    """x + f(x) where f delays its output: keep x until f's matching sample arrives."""

    def __init__(self, unit: ResidualUnit):
        self.inner = Chain(
            [
                StreamSnake(unit.snake1),
                StreamConv(unit.conv1),
                StreamSnake(unit.snake2),
                StreamConv(unit.conv2),
            ]
        )
        self.pending: Array | None = None

    def _add(self, y: Array) -> Array:
        if y.shape[1] == 0:
            return y
        n = y.shape[1]
        assert self.pending is not None  # every output sample had its input pushed first
        out = self.pending[:, :n] + y
        self.pending = self.pending[:, n:]
        return out

    def push(self, x: Array) -> Array:
        self.pending = x if self.pending is None else _cat([self.pending, x])
        return self._add(self.inner.push(x))

    def final_count(self, n: int) -> int:
        return self.inner.final_count(n)

    def flush(self) -> Array | None:
        tail = self.inner.flush()
        return None if tail is None else self._add(tail)


def _block_stages(block: DecoderBlock) -> "list[Stage]":
    return [
        StreamSnake(block.snake1),
        StreamConvTranspose(block.conv_t1),
        StreamResidual(block.res_unit1),
        StreamResidual(block.res_unit2),
        StreamResidual(block.res_unit3),
    ]


class StreamDecoder:
    """Incremental decode: `push(codes [K, n])` -> newly final samples; `flush()` -> the rest."""

    def __init__(self, codec: "Codec"):
        self.codec = codec
        decoder = codec.acoustic_decoder
        stages: list[Stage] = [StreamConv(decoder.conv1)]
        for block in decoder.block:
            stages += _block_stages(block)
        stages += [StreamSnake(decoder.snake1), StreamConv(decoder.conv2)]
        self.chain = Chain(stages)
        self.numpy = numpy_gemm()  # decided once: every stage's state is of one kind
        self.frames_in = 0
        self.samples_out = 0
        self.finished = False
        hop = codec.hop_length
        # the first push of this many frames returns audio
        self.first_audio_frames = next(f for f in range(1, 1000) if self.chain.final_count(f) > 0)
        # in steady state the samples of frame t are final once frame t + lookahead is in
        f = 1000
        self.lookahead_frames = -(-(f * hop - self.chain.final_count(f)) // hop)

    def push(self, codes: "np.ndarray | mx.array") -> mx.array:
        """codes [K, n] of the next n frames -> float32 samples that are now final (maybe none)."""
        if self.finished:
            raise RuntimeError("this stream has been flushed; start a new one")
        latents = self._latents(codes)
        if latents is None:
            return mx.zeros((0,))
        self.frames_in += latents.shape[1]
        y = self.chain.push(latents)
        self.samples_out += y.shape[1]
        return self._samples(y)

    def _latents(self, codes: "np.ndarray | mx.array") -> Array | None:
        """The decoder input of codes [K, n] (None for no frames), checked first: on
        the host for the numpy decoder, with no MLX evaluation for the check."""
        if self.numpy:
            host = self.codec.host_codes(codes)
            return self.codec.latents(host) if host.shape[1] else None
        checked = self.codec.check_codes(codes)
        return self.codec.latents(checked) if checked.shape[1] else None

    def _samples(self, y: Array) -> mx.array:
        return mx.array(y[0, :, 0]) if self.numpy else y[0, :, 0]  # type: ignore[return-value]

    def flush(self) -> mx.array:
        """End the stream: the remaining samples, so that the total is frames * hop."""
        if self.finished:
            raise RuntimeError("this stream has already been flushed")
        self.finished = True
        y = self.chain.flush() if self.frames_in else None
        if y is None:
            return mx.zeros((0,))
        self.samples_out += y.shape[1]
        return self._samples(y)
