"""Conv, transposed conv and linear layers (channels last) with two ways to run them.

On a GPU they are MLX's own kernels. On Linux CPUs MLX's wheel computes matrix products
with the reference BLAS (about 4 GFLOP/s on the 2-core test machine), while numpy ships
OpenBLAS (about 60 GFLOP/s there); every product here is a GEMM, so on that backend the
layers hand the GEMMs to numpy and keep the rest in MLX. `use_numpy_gemm` overrides the
choice (the tests run both ways). Weights keep MLX's layout: conv [out, k, in].

A numpy array in gives a numpy array out: the decoder runs wholly in numpy on that
backend, so no layer waits on an MLX evaluation (each one costs ~0.1 ms, which made up
most of a streamed push at small widths).
"""

import ctypes
import glob
import os
import sys
from collections.abc import Callable
from typing import TypeVar, overload

import mlx.core as mx
import mlx.nn as nn
import numpy as np

# What the layers take and give: an MLX array, or a numpy one on the numpy path
# (Array: either; A: the same kind in as out).
Array = mx.array | np.ndarray
A = TypeVar("A", mx.array, np.ndarray)

_NUMPY_GEMM = {"1": True, "0": False}.get(os.environ.get("HIGGS_CODEC_NUMPY_GEMM", ""))

# elements of GEMM output a stride-1 conv may hold at once before it goes tap by tap
GEMM_SCRATCH = 1 << 24


# BLAS threads per codec GEMM. One: MLX's CPU ops around the GEMMs run on one thread
# anyway, the language model wants the other cores while a stream decodes, and waking
# OpenBLAS's threads for the many mid-sized GEMMs here cost more than they saved when
# measured (2x slower whole decodes, 4-8x slower streamed ones, on a loaded 2-core box).
BLAS_THREADS = 1


def _find_thread_setter():
    """OpenBLAS's per-calling-thread thread count (>= 0.3.27), from numpy's bundled copy."""
    folder = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(folder, "*openblas*")):
        try:
            setter = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        return setter
    return None


_THREADS = _find_thread_setter() if sys.platform.startswith("linux") else None


def gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy a @ b on BLAS_THREADS threads (only the calling thread's setting changes)."""
    if _THREADS is None or not BLAS_THREADS:
        return a @ b
    previous = _THREADS(BLAS_THREADS)
    try:
        return a @ b
    finally:
        _THREADS(previous)


def use_numpy_gemm(flag: bool | None) -> None:
    """True/False forces the numpy (CPU BLAS) path on or off; None restores the default."""
    global _NUMPY_GEMM
    _NUMPY_GEMM = flag


def numpy_gemm() -> bool:
    if _NUMPY_GEMM is not None:
        return _NUMPY_GEMM
    return sys.platform.startswith("linux") and mx.default_device() == mx.cpu


class Prepared:
    """A numpy copy of a weight in the layout its GEMM wants, rebuilt if the weight changes."""

    def __init__(self) -> None:
        self.source: mx.array | None = None
        self.value: np.ndarray | None = None

    def get(self, weight: mx.array, prepare: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        if self.source is not weight or self.value is None:
            self.source, self.value = weight, prepare(np.asarray(weight))
        return self.value


def _bias(y: np.ndarray, bias: mx.array | None) -> np.ndarray:
    return y if bias is None else y + np.asarray(bias)


class Linear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        scale = in_dim**-0.5
        self.weight = mx.random.uniform(-scale, scale, (out_dim, in_dim))
        if bias:
            self.bias = mx.random.uniform(-scale, scale, (out_dim,))

    @overload
    def __call__(self, x: mx.array) -> mx.array: ...
    @overload
    def __call__(self, x: np.ndarray) -> np.ndarray: ...
    def __call__(self, x: Array) -> Array:
        if isinstance(x, np.ndarray):
            return _bias(gemm(x, np.asarray(self.weight).T), self.get("bias"))
        if not numpy_gemm():
            y = x @ self.weight.T
            return y + self.bias if "bias" in self else y
        return mx.array(self(np.asarray(x)))


class Conv1d(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        scale = (in_dim // groups * kernel) ** -0.5
        self.weight = mx.random.uniform(-scale, scale, (out_dim, kernel, in_dim // groups))
        if bias:
            self.bias = mx.random.uniform(-scale, scale, (out_dim,))
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self._taps = Prepared()

    @overload
    def __call__(self, x: mx.array, padding: int | None = None) -> mx.array: ...
    @overload
    def __call__(self, x: np.ndarray, padding: int | None = None) -> np.ndarray: ...
    def __call__(self, x: Array, padding: int | None = None) -> Array:
        padding = self.padding if padding is None else padding
        if isinstance(x, np.ndarray):
            return _bias(self._numpy(x, padding), self.get("bias"))
        if not numpy_gemm():
            y = mx.conv1d(x, self.weight, self.stride, padding, self.dilation, self.groups)
            return y + self.bias if "bias" in self else y
        return mx.array(self(np.asarray(x), padding))

    def _numpy(self, x: np.ndarray, padding: int) -> np.ndarray:
        out_dim, k, in_dim = self.weight.shape
        s, d, g = self.stride, self.dilation, self.groups
        if padding:
            x = np.pad(x, ((0, 0), (padding, padding), (0, 0)))
        b, n = x.shape[:2]
        n_out = (n - d * (k - 1) - 1) // s + 1
        if n_out <= 0:
            return np.zeros((b, 0, out_dim), np.float32)
        if s == 1 and g == 1:
            taps = self._taps.get(self.weight, lambda w: w.transpose(2, 1, 0).reshape(in_dim, -1))
            if n * k * out_dim <= GEMM_SCRATCH and 4 * n <= 5 * n_out:
                # one GEMM for all taps, then add the taps' outputs shifted by the dilation
                z = gemm(x, taps).reshape(b, n, k, out_dim)
                y = z[:, :n_out, 0].copy()
                for j in range(1, k):
                    y += z[:, j * d : j * d + n_out, j]
                return y
            # long inputs (no k-times-larger scratch) or short ones with much context (as
            # streamed): one GEMM per tap over just the rows it contributes to
            y = gemm(x[:, :n_out], taps[:, :out_dim])
            for j in range(1, k):
                y += gemm(x[:, j * d : j * d + n_out], taps[:, j * out_dim : (j + 1) * out_dim])
            return y
        if g == 1:
            # strided: gather the k taps of every output (im2col), one GEMM
            cols = np.lib.stride_tricks.as_strided(
                x,
                (b, n_out, k, in_dim),
                (x.strides[0], s * x.strides[1], d * x.strides[1], x.strides[2]),
            ).reshape(b, n_out, k * in_dim)
            return gemm(cols, self._taps.get(self.weight, lambda w: w.reshape(out_dim, -1).T))
        # grouped, stride 1: one batched GEMM over groups, then the shifted sum
        group_out = out_dim // g
        taps = self._taps.get(
            self.weight,
            lambda w: (
                w.reshape(g, group_out, k, in_dim).transpose(0, 3, 2, 1).reshape(g, in_dim, -1)
            ),
        )
        xg = x.reshape(b, n, g, in_dim).transpose(0, 2, 1, 3)
        z = gemm(xg, taps).reshape(b, g, n, k, group_out)
        y = z[:, :, :n_out, 0].copy()
        for j in range(1, k):
            y += z[:, :, j * d : j * d + n_out, j]
        return y.transpose(0, 2, 1, 3).reshape(b, n_out, out_dim)


class ConvTranspose1d(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        bias: bool = True,
    ):
        super().__init__()
        scale = (in_dim * kernel) ** -0.5
        self.weight = mx.random.uniform(-scale, scale, (out_dim, kernel, in_dim))
        if bias:
            self.bias = mx.random.uniform(-scale, scale, (out_dim,))
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self._taps = Prepared()

    @overload
    def __call__(
        self, x: mx.array, padding: int | None = None, output_padding: int | None = None
    ) -> mx.array: ...
    @overload
    def __call__(
        self, x: np.ndarray, padding: int | None = None, output_padding: int | None = None
    ) -> np.ndarray: ...
    def __call__(
        self, x: Array, padding: int | None = None, output_padding: int | None = None
    ) -> Array:
        """padding/output_padding override the layer's (the stream decoder crops itself)."""
        p = self.padding if padding is None else padding
        op = self.output_padding if output_padding is None else output_padding
        if isinstance(x, np.ndarray):
            return _bias(self._numpy(x, p, op), self.get("bias"))
        if not numpy_gemm():
            y = mx.conv_transpose1d(x, self.weight, self.stride, p, output_padding=op)
            return y + self.bias if "bias" in self else y
        return mx.array(self(np.asarray(x), p, op))

    def _numpy(self, x: np.ndarray, p: int, op: int) -> np.ndarray:
        out_dim, k, in_dim = self.weight.shape
        s = self.stride
        b, n = x.shape[:2]
        taps = self._taps.get(self.weight, lambda w: w.transpose(2, 1, 0).reshape(in_dim, -1))
        z = gemm(x, taps).reshape(b, n, k, out_dim)
        full = np.zeros((b, (n - 1) * s + k + op, out_dim), np.float32)
        for t in range(k):
            full[:, t : t + (n - 1) * s + 1 : s] += z[:, :, t]
        return full[:, p : full.shape[1] - p]


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, block: int) -> mx.array:
    """Softmax attention over [B, H, L, D] in query blocks of `block` rows."""
    if not numpy_gemm():
        outs = [
            mx.fast.scaled_dot_product_attention(q[:, :, i : i + block], k, v, scale=scale)
            for i in range(0, q.shape[2], block)
        ]
        return outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=2)
    qn, kn, vn = np.asarray(q), np.asarray(k), np.asarray(v)
    kt = np.swapaxes(kn, -1, -2)
    out = np.empty(qn.shape, np.float32)
    for i in range(0, qn.shape[2], block):
        s = gemm(qn[:, :, i : i + block] * np.float32(scale), kt)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        out[:, :, i : i + block] = gemm(s / s.sum(axis=-1, keepdims=True), vn)
    return mx.array(out)
