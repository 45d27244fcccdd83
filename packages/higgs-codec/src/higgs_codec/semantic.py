"""The semantic encoder: convs and ELU residual units over the averaged HuBERT states."""

import mlx.core as mx
import mlx.nn as nn

from .config import CodecArgs
from .layers import Conv1d


def elu(x: mx.array) -> mx.array:
    return mx.where(x > 0, x, mx.expm1(mx.minimum(x, 0)))


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, kernel: int, dilation: int):
        super().__init__()
        pad = (kernel - 1) // 2 * dilation
        self.conv1 = Conv1d(dim, dim, kernel, padding=pad, dilation=dilation, bias=False)
        self.conv2 = Conv1d(dim, dim, 1, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.conv2(elu(self.conv1(elu(x))))


class EncoderBlock(nn.Module):
    def __init__(self, args: CodecArgs, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.res_units = [
            ResidualUnit(in_dim, args.unit_kernel_size, d) for d in args.block_dilations
        ]
        kernel = 3 if stride == 1 else 2 * stride
        self.conv = Conv1d(in_dim, out_dim, kernel, stride=stride, padding=(kernel - 1) // 2)

    def __call__(self, x: mx.array) -> mx.array:
        for unit in self.res_units:
            x = unit(x)
        return self.conv(x)


class SemanticEncoder(nn.Module):
    def __init__(self, args: CodecArgs):
        super().__init__()
        dim = args.semantic_dim
        self.conv = Conv1d(dim, dim, args.kernel_size, padding=args.kernel_size // 2, bias=False)
        blocks = []
        in_dim = dim
        for ratio, stride in zip(args.channel_ratios, args.strides, strict=True):
            out_dim = int(dim * ratio)
            blocks.append(EncoderBlock(args, in_dim, out_dim, stride))
            in_dim = out_dim
        self.conv_blocks = blocks

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv(x)
        for block in self.conv_blocks:
            x = block(x)
        return x
