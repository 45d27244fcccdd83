"""Streaming decode: every layer of the acoustic decoder run incrementally.

Each convolution keeps just the input it still needs (its left context) and emits an
output sample as soon as the input to its right has arrived; at the end of the stream
the layers see the zero padding a whole-utterance decode sees. Samples therefore come
out exactly as a whole decode computes them (up to float rounding), each once, with
total work linear in the length and a fixed look-ahead: the decoder's receptive field
to the right (`StreamDecoder.lookahead_frames`).
"""

from typing import TYPE_CHECKING, Protocol

import mlx.core as mx
import numpy as np

from .dac import DecoderBlock, ResidualUnit, Snake, snake
from .layers import Conv1d, ConvTranspose1d

if TYPE_CHECKING:
    from .model import Codec


class Stage(Protocol):
    """One incremental layer: ``push`` the next input, get the outputs now final."""

    def push(self, x: mx.array) -> mx.array: ...
    def final_count(self, n: int) -> int: ...
    def flush(self) -> mx.array | None: ...


def _empty(channels: int) -> mx.array:
    return mx.zeros((1, 0, channels))


class StreamConv:
    """Stride-1 conv with symmetric zero padding (k - 1) * dilation / 2."""

    def __init__(self, conv: Conv1d):
        self.conv = conv
        out_dim, k, in_dim = conv.weight.shape
        self.span = (k - 1) * conv.dilation
        self.out_dim = out_dim
        self.buffer = mx.zeros((1, self.span // 2, in_dim))  # the left padding

    def _run(self, x: mx.array) -> mx.array:
        if x.shape[1] <= self.span:
            return _empty(self.out_dim)
        return self.conv(x, padding=0)

    def push(self, x: mx.array) -> mx.array:
        x = mx.concatenate([self.buffer, x], axis=1)
        self.buffer = x[:, max(x.shape[1] - self.span, 0) :]
        return self._run(x)

    def final_count(self, n: int) -> int:
        return max(n - self.span // 2, 0)

    def flush(self) -> mx.array | None:
        pad = mx.zeros((1, self.span // 2, self.buffer.shape[2]))
        return self._run(mx.concatenate([self.buffer, pad], axis=1))


class StreamSnake:
    def __init__(self, module: Snake):
        self.alpha = module.alpha

    def push(self, x: mx.array) -> mx.array:
        return snake(x, self.alpha)

    def final_count(self, n: int) -> int:
        return n

    def flush(self) -> mx.array | None:
        return None


class StreamConvTranspose:
    """Transposed conv with kernel 2 * stride: output block i mixes inputs i - 1 and i."""

    def __init__(self, conv: ConvTranspose1d):
        self.conv = conv
        self.stride = conv.stride
        self.padding = conv.padding
        self.prev: mx.array | None = None  # last input sample (x[-1] = 0 before the stream starts)
        self.skip = self.padding  # the reference crops `padding` samples off the front
        self.out_dim = conv.weight.shape[0]

    def _blocks(self, x: mx.array) -> mx.array:
        s = self.stride
        y = self.conv(x, padding=0, output_padding=0)[:, s : x.shape[1] * s]
        if self.skip:
            cut = min(self.skip, y.shape[1])
            y, self.skip = y[:, cut:], self.skip - cut
        return y

    def push(self, x: mx.array) -> mx.array:
        if x.shape[1] == 0:
            return _empty(self.out_dim)
        prev = self.prev if self.prev is not None else mx.zeros((1, 1, x.shape[2]))
        self.prev = x[:, -1:]
        return self._blocks(mx.concatenate([prev, x], axis=1))

    def final_count(self, n: int) -> int:
        return max(n * self.stride - self.padding, 0)

    def flush(self) -> mx.array | None:
        if self.prev is None:
            return None
        tail = self._blocks(mx.concatenate([self.prev, mx.zeros_like(self.prev)], axis=1))
        return tail[:, : self.padding]


class Chain:
    """Stages in sequence; flushing one feeds its tail to the rest, then flushes them."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages

    def push(self, x: mx.array) -> mx.array:
        for stage in self.stages:
            x = stage.push(x)
        return x

    def final_count(self, n: int) -> int:
        for stage in self.stages:
            n = stage.final_count(n)
        return n

    def flush(self) -> mx.array | None:
        x = None
        for stage in self.stages:
            y = stage.push(x) if x is not None and x.shape[1] else None
            tail = stage.flush()
            parts = [p for p in (y, tail) if p is not None]
            x = mx.concatenate(parts, axis=1) if parts else None
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
        self.pending: mx.array | None = None

    def _add(self, y: mx.array) -> mx.array:
        if y.shape[1] == 0:
            return y
        n = y.shape[1]
        assert self.pending is not None  # every output sample had its input pushed first
        out = self.pending[:, :n] + y
        self.pending = self.pending[:, n:]
        return out

    def push(self, x: mx.array) -> mx.array:
        self.pending = x if self.pending is None else mx.concatenate([self.pending, x], axis=1)
        return self._add(self.inner.push(x))

    def final_count(self, n: int) -> int:
        return self.inner.final_count(n)

    def flush(self) -> mx.array | None:
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
        codes = self.codec.check_codes(codes)
        if codes.shape[1] == 0:
            return mx.zeros((0,))
        self.frames_in += codes.shape[1]
        y = self.chain.push(self.codec.latents(codes))
        self.samples_out += y.shape[1]
        return y[0, :, 0]

    def flush(self) -> mx.array:
        """End the stream: the remaining samples, so that the total is frames * hop."""
        if self.finished:
            raise RuntimeError("this stream has already been flushed")
        self.finished = True
        y = self.chain.flush() if self.frames_in else None
        if y is None:
            return mx.zeros((0,))
        self.samples_out += y.shape[1]
        return y[0, :, 0]
