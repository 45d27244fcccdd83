"""The DAC-style acoustic encoder and decoder (channels last: [B, T, C]).

Parameter names follow transformers' converted checkpoint (`acoustic_encoder.*`,
`acoustic_decoder.*`) so weights load by name. The decoder is Higgs' variant of DAC:
every transposed conv has output_padding = stride % 2 and there is no final tanh, so
T frames decode to exactly T * hop samples.
"""

import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from .layers import Conv1d, ConvTranspose1d


@partial(mx.compile, shapeless=True)
def snake(x, alpha):
    # x + sin^2(alpha x) / (alpha + 1e-9), in the order the reference evaluates it
    return x + mx.reciprocal(alpha + 1e-9) * mx.square(mx.sin(alpha * x))


class Snake(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.alpha = mx.ones((channels,))

    def __call__(self, x):
        return snake(x, self.alpha)


class ResidualUnit(nn.Module):
    def __init__(self, dim, dilation):
        super().__init__()
        self.snake1 = Snake(dim)
        self.conv1 = Conv1d(dim, dim, 7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake(dim)
        self.conv2 = Conv1d(dim, dim, 1)

    def __call__(self, x):
        y = self.conv2(self.snake2(self.conv1(self.snake1(x))))
        return x + y


class EncoderBlock(nn.Module):
    def __init__(self, dim, stride):
        super().__init__()
        self.res_unit1 = ResidualUnit(dim // 2, 1)
        self.res_unit2 = ResidualUnit(dim // 2, 3)
        self.res_unit3 = ResidualUnit(dim // 2, 9)
        self.snake1 = Snake(dim // 2)
        self.conv1 = Conv1d(dim // 2, dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def __call__(self, x):
        x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
        return self.conv1(self.snake1(x))


class AcousticEncoder(nn.Module):
    def __init__(self, hidden, ratios, out_dim):
        super().__init__()
        self.conv1 = Conv1d(1, hidden, 7, padding=3)
        self.block = [EncoderBlock(hidden * 2 ** (i + 1), s) for i, s in enumerate(ratios)]
        width = hidden * 2 ** len(ratios)
        self.snake1 = Snake(width)
        self.conv2 = Conv1d(width, out_dim, 3, padding=1)
        self.ratios = tuple(ratios)

    def __call__(self, x):
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))

    def output_length(self, n):
        """Frames out for n samples in (every conv here pads, strides and crops alike)."""
        for s in self.ratios:
            pad = math.ceil(s / 2)
            n = (n + 2 * pad - 2 * s) // s + 1
        return n


class DecoderBlock(nn.Module):
    def __init__(self, in_dim, out_dim, stride):
        super().__init__()
        self.snake1 = Snake(in_dim)
        self.conv_t1 = ConvTranspose1d(
            in_dim,
            out_dim,
            2 * stride,
            stride=stride,
            padding=math.ceil(stride / 2),
            output_padding=stride % 2,
        )
        self.res_unit1 = ResidualUnit(out_dim, 1)
        self.res_unit2 = ResidualUnit(out_dim, 3)
        self.res_unit3 = ResidualUnit(out_dim, 9)
        self.stride = stride

    def __call__(self, x):
        x = self.conv_t1(self.snake1(x))
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))


class AcousticDecoder(nn.Module):
    def __init__(self, in_dim, channels, ratios):
        super().__init__()
        self.conv1 = Conv1d(in_dim, channels, 7, padding=3)
        self.block = [
            DecoderBlock(channels // 2**i, channels // 2 ** (i + 1), s)
            for i, s in enumerate(ratios)
        ]
        out = channels // 2 ** len(ratios)
        self.snake1 = Snake(out)
        self.conv2 = Conv1d(out, 1, 7, padding=3)

    def __call__(self, x):
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))
