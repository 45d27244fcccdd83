"""The kernels as MLX ops, with stock MLX wherever the kernels cannot run."""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx  # registers mx.array with nanobind before the extension loads

try:
    from . import _ext  # type: ignore[attr-defined]  # the compiled extension
except ImportError as error:  # not built (no compiler, not Linux) or built for another MLX
    _ext = None
    import_error: ImportError | None = error
else:
    import_error = None

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
_FLOATS = (mx.float32, mx.bfloat16, mx.float16)
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

    Up to 16 rows of ``x`` take the one-pass matrix-vector kernels, more rows the
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


def _attention_fits(q: mx.array, k: mx.array, v: mx.array, causal: bool) -> bool:
    return (
        q.ndim == k.ndim == v.ndim == 4
        and q.dtype in _FLOATS
        and q.dtype == k.dtype == v.dtype
        and k.shape == v.shape
        and k.shape[0] == q.shape[0]
        and k.shape[3] == q.shape[3]
        and k.shape[1] > 0
        and q.shape[1] % k.shape[1] == 0
        # Queries that see no key: leave stock MLX's convention to stock MLX.
        and not (causal and q.shape[2] > k.shape[2])
    )


def attention(
    q: mx.array, k: mx.array, v: mx.array, *, scale: float, causal: bool = False, stream=None
) -> mx.array:
    """``softmax(q @ k.T * scale) @ v`` per head, as ``mx.fast.scaled_dot_product_attention``.

    ``q`` [B, Hq, Lq, D], ``k`` and ``v`` [B, Hkv, Lk, D] with Hq a multiple of
    Hkv (grouped-query attention). ``causal``: query i sees keys j <= Lk - Lq + i,
    as with a KV cache holding Lk - Lq earlier positions (MLX's ``mask="causal"``).
    Scores, softmax and sums are fp32; the result has q's dtype. On MLX's CPU
    device the kernels read k and v in place, views of a larger cache included;
    elsewhere, or for inputs they do not take (mixed dtypes, Lq > Lk with
    ``causal``), this is stock MLX.
    """
    if _on_cpu(stream) and _attention_fits(q, k, v, causal):
        return _ext.attention(q, k, v, scale=scale, causal=causal, stream=stream)
    return mx.fast.scaled_dot_product_attention(
        q, k, v, scale=scale, mask="causal" if causal else None, stream=stream
    )


def attention_rows(
    q: mx.array,
    keys: Sequence[mx.array],
    values: Sequence[mx.array],
    *,
    scale: float,
    causal: bool = False,
    stream=None,
) -> mx.array:
    """:func:`attention` for each row ``b`` of ``q`` [B, Hq, Lq, D] over its own
    ``keys[b]`` and ``values[b]`` [1, Hkv, Lk_b, D]: a decode batch whose rows'
    KV caches differ in length, in one op. Each row gets exactly what
    :func:`attention` gives it alone. Where the kernels do not run, stock MLX
    attends row by row."""
    if len(keys) != q.shape[0] or len(values) != len(keys):
        raise ValueError(
            f"one k and one v per row of q: q has {q.shape[0]} rows, "
            f"got {len(keys)} k and {len(values)} v"
        )
    rows = [(q[b : b + 1], k, v) for b, (k, v) in enumerate(zip(keys, values, strict=True))]
    if _on_cpu(stream) and all(_attention_fits(*row, causal) for row in rows):
        return _ext.attention_rows(
            q, list(keys), list(values), scale=scale, causal=causal, stream=stream
        )
    return mx.concatenate(
        [attention(*row, scale=scale, causal=causal, stream=stream) for row in rows]
    )


def swiglu(gate: mx.array, up: mx.array, *, stream=None) -> mx.array:
    """``silu(gate) * up``, the activation of a SwiGLU MLP, computed in fp32 and
    returned in the inputs' dtype. On MLX's CPU device (same shape and dtype) the
    kernels run it with a vectorised exp; elsewhere it is stock MLX."""
    if _on_cpu(stream) and gate.shape == up.shape and gate.dtype == up.dtype in _FLOATS:
        return _ext.swiglu(gate, up, stream=stream)
    return mx.multiply(
        mx.multiply(gate, mx.sigmoid(gate, stream=stream), stream=stream), up, stream=stream
    )


def rope(
    x: mx.array,
    dims: int,
    *,
    freqs: mx.array,
    offset: int | mx.array | Sequence[int],
    scale: float = 1.0,
    stream=None,
) -> mx.array:
    """``mx.fast.rope(x, dims, traditional=False, base=None, scale=scale,
    offset=offset, freqs=freqs)``: the rotate-half rotary embedding with given
    frequencies (angle = (offset + position) * scale / freqs), computed in fp32.
    On MLX's CPU device with an int offset the kernels run it; elsewhere it is
    stock MLX. ``offset`` may also be a sequence of ints, one per index of x's
    first axis (rows of a decode batch at their own positions): each row is
    rotated as it would be alone."""
    kernels = _on_cpu(stream) and x.dtype in _FLOATS and freqs.dtype == mx.float32
    if not isinstance(offset, (int, mx.array)):
        offsets = [int(o) for o in offset]
        if len(offsets) != x.shape[0] or x.ndim < 3:
            raise ValueError(
                f"one offset per index of x's first axis: {len(offsets)} offsets "
                f"for x of shape {tuple(x.shape)}"
            )
        if kernels:
            return _ext.rope(x, dims, freqs=freqs, offsets=offsets, scale=scale, stream=stream)
        return mx.concatenate(
            [
                rope(x[b : b + 1], dims, freqs=freqs, offset=o, scale=scale, stream=stream)
                for b, o in enumerate(offsets)
            ]
        )
    if kernels and isinstance(offset, int):
        return _ext.rope(x, dims, freqs=freqs, offsets=[offset], scale=scale, stream=stream)
    return mx.fast.rope(
        x,
        dims,
        traditional=False,
        base=None,
        scale=scale,
        offset=offset,
        freqs=freqs,
        stream=stream,
    )
