"""Residual vector quantisation: greedy nearest code (squared L2) per stage."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .layers import A, Linear


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.embed = mx.zeros((size, dim))


class VectorQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int, codebook_dim: int | None, encode: bool = True):
        super().__init__()
        if codebook_dim is not None:
            if encode:
                self.project_in = Linear(dim, codebook_dim)
            self.project_out = Linear(codebook_dim, dim)
        self.codebook = Codebook(codebook_size, codebook_dim or dim)

    def nearest(self, x: mx.array) -> mx.array:
        """x [T, dim] -> code ids [T] (distances formed as the reference forms them)."""
        if "project_in" in self:
            x = self.project_in(x)
        embed = self.codebook.embed
        dist = (mx.square(x).sum(-1, keepdims=True) - 2 * (x @ embed.T)) + mx.square(embed).sum(-1)
        return mx.argmin(dist, axis=-1).astype(mx.int32)

    def lookup(self, codes: A) -> A:
        """codes [T] -> vectors [T, dim]; numpy codes give numpy vectors (see layers)."""
        embed = self.codebook.embed
        q = np.asarray(embed)[codes] if isinstance(codes, np.ndarray) else embed[codes]
        return self.project_out(q) if "project_out" in self else q


class ResidualVectorQuantizer(nn.Module):
    def __init__(
        self,
        num_quantizers: int,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None,
        encode: bool = True,
    ):
        super().__init__()
        self.quantizers = [
            VectorQuantizer(dim, codebook_size, codebook_dim, encode) for _ in range(num_quantizers)
        ]

    def encode(self, x: mx.array):
        """x [T, dim] -> codes [K, T] int32."""
        codes = []
        for vq in self.quantizers:
            c = vq.nearest(x)
            x = x - vq.lookup(c)
            codes.append(c)
        return mx.stack(codes)

    def decode(self, codes: A) -> A:
        """codes [K', T] (K' <= K) -> the summed quantised vectors [T, dim]."""
        out = self.quantizers[0].lookup(codes[0])
        for vq, c in zip(self.quantizers[1:], codes[1:], strict=False):
            out = out + vq.lookup(c)
        return out
