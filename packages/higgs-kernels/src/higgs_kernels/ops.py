"""The kernels as MLX ops, with stock MLX wherever the kernels cannot run."""

from __future__ import annotations

import mlx.core as mx  # registers mx.array with nanobind before the extension loads

try:
    from . import _ext
except ImportError as error:  # not built (no compiler, not Linux) or built for another MLX
    _ext = None
    import_error: ImportError | None = error
else:
    import_error = None

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
SUPPORTED_GROUP_SIZES = (32, 64, 128)


def available() -> bool:
    """Whether the extension is built and imported on this machine."""
    return _ext is not None


def isa() -> str | None:
    """The kernels' instruction set: 'avx2' or 'generic' (None without the extension)."""
    return _ext.isa() if _ext is not None else None


def threads() -> int:
    """Threads a kernel call uses, the calling one included (1 without the extension)."""
    return _ext.num_threads() if _ext is not None else 1


def set_threads(n: int | None) -> None:
    """Use `n` threads; None (or n <= 0) restores the default: the
    HIGGS_KERNELS_THREADS variable, else every core this process may use."""
    if _ext is not None:
        _ext.set_num_threads(0 if n is None else int(n))


def _on_cpu(stream) -> bool:
    if _ext is None:
        return False
    if stream is None:
        return mx.default_device() == mx.cpu
    device = stream.device if isinstance(stream, mx.Stream) else stream
    return device == mx.cpu


def linear(x: mx.array, w: mx.array, *, stream=None) -> mx.array:
    """``x @ w.T`` for a float32/bfloat16/float16 weight ``w`` [N, K] and ``x`` [..., K].

    Up to 8 rows of ``x`` take the one-pass matrix-vector kernel, more rows the
    packed matmul. The result has MLX's dtype for ``x @ w.T``.
    """
    if _on_cpu(stream):
        return _ext.linear(x, w, stream=stream)
    return mx.matmul(x, mx.swapaxes(w, -1, -2), stream=stream)


def quantized_linear(
    x: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array,
    *,
    group_size: int,
    bits: int,
    stream=None,
) -> mx.array:
    """``x @ dequantize(w, scales, biases).T`` for codes as `mx.quantize` makes them
    (affine mode, 2/3/4/5/6/8 bits, groups of 32/64/128); same result dtype as
    `mx.quantized_matmul`."""
    if _on_cpu(stream):
        return _ext.quantized_linear(
            x, w, scales, biases, group_size=group_size, bits=bits, stream=stream
        )
    return mx.quantized_matmul(
        x, w, scales, biases, transpose=True, group_size=group_size, bits=bits, stream=stream
    )
