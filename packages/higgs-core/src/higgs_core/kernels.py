"""The CPU strategy: layer subclasses that :func:`use_kernels` swaps into a
model on MLX's CPU device, so that ``higgs_core.model`` reads like mlx-lm's
``llama.py`` and knows nothing of backends.

Stock MLX's CPU backend multiplies a bf16 matrix by a vector at a fraction of
the memory bandwidth, runs prefill through a reference BLAS, attends over a KV
cache an order of magnitude below memory speed, runs RoPE as a dozen separate
ops and computes silu with a scalar exp; the optional ``higgs-kernels``
extension (Linux) does all of these at memory or compute speed. With it,
linear layers become its kernel-backed twins and :class:`KernelAttention`,
:class:`KernelRoPE` and :class:`KernelMLP` take attention, RoPE and the MLP's
activation. On the CPU, quantized layers the kernels do not take (all of them
without the kernels) become :class:`DequantizingLinear`. ``HIGGS_KERNELS=0``
turns the kernels off. Metal and CUDA always run the stock layers.
"""

import os

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention

from higgs_core.model import MLP, Attention


def kernel_attention(queries, keys, values, cache, scale: float, mask) -> mx.array:
    """mlx-lm's ``scaled_dot_product_attention`` on higgs-kernels for the masks
    it takes: None (one query) and ``"causal"``, what ``create_attention_mask``
    gives for a KV cache. An array mask or a quantized cache stays stock."""
    import higgs_kernels

    causal = isinstance(mask, str) and mask == "causal"
    if not hasattr(cache, "bits") and (mask is None or causal):
        return higgs_kernels.attention(queries, keys, values, scale=scale, causal=causal)
    return scaled_dot_product_attention(queries, keys, values, cache=cache, scale=scale, mask=mask)


class KernelRoPE(nn.Module):
    """mlx-lm's Llama3RoPE (rotate-half, given frequencies) on higgs-kernels:
    MLX's CPU backend runs ``mx.fast.rope`` as a dozen separate ops."""

    def __init__(self, rope: nn.Module):
        super().__init__()
        self.dims = rope.dims
        self._freqs = rope._freqs

    def __call__(self, x: mx.array, offset: int | list[int] = 0) -> mx.array:
        import higgs_kernels

        return higgs_kernels.rope(x, self.dims, freqs=self._freqs, offset=offset)


class KernelAttention(Attention):
    """Attention whose softmax(q k^T) v runs on higgs-kernels."""

    def attend(self, q, k, v, mask, cache) -> mx.array:
        return kernel_attention(q, k, v, cache, self.scale, mask)

    def attend_rows(self, q, k, v, caches) -> mx.array:
        """A decode batch in one RoPE op for q, one for k and one attention op, each
        row exactly as alone (row by row, 8 rows cost 0.4-0.9 ms more a layer here,
        in op overhead); the caches still take their rows one by one."""
        import higgs_kernels

        if not isinstance(self.rope, KernelRoPE) or any(hasattr(c, "bits") for c in caches):
            return super().attend_rows(q, k, v, caches)
        offsets = [c.offset for c in caches]
        q, k = self.rope(q, offset=offsets), self.rope(k, offset=offsets)
        kv = [c.update_and_fetch(k[b : b + 1], v[b : b + 1]) for b, c in enumerate(caches)]
        keys, values = [k for k, _ in kv], [v for _, v in kv]
        return higgs_kernels.attention_rows(q, keys, values, scale=self.scale)


class KernelMLP(MLP):
    """The MLP with higgs-kernels' silu(gate) * up."""

    def activation(self, gate: mx.array, up: mx.array) -> mx.array:
        import higgs_kernels

        return higgs_kernels.swiglu(gate, up)


class DequantizingLinear(nn.QuantizedLinear):
    """A quantized linear layer for stock MLX's CPU backend, whose quantized matmul
    costs one matrix-vector pass per row: for the many rows of a prefill,
    dequantizing the weight once and multiplying is 12-20x faster. One row (a
    decode step) keeps the quantized path."""

    def __call__(self, x: mx.array) -> mx.array:
        if x.ndim < 2 or x.shape[-2] <= 1 or mx.default_device() != mx.cpu:
            return super().__call__(x)
        weight = mx.dequantize(
            self["weight"],
            self["scales"],
            self.get("biases"),
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
            dtype=x.dtype,
        )
        y = x @ weight.T
        return y + self["bias"] if "bias" in self else y


def _kernel_rope(rope):
    """The kernels' twin of an mlx-lm RoPE module, or None where they do not fit."""
    freqs = getattr(rope, "_freqs", None)
    if freqs is None or getattr(rope, "traditional", True) or freqs.dtype != mx.float32:
        return None
    return KernelRoPE(rope)


def use_kernels(model: nn.Module) -> str:
    """Swap the model's linear layers for kernel-backed twins and its attention,
    RoPE and SwiGLU activation for the kernels' where that helps, and say what
    runs them (the line ``higgs bench`` prints)."""
    if os.environ.get("HIGGS_KERNELS", "").strip() in ("0", "false", "no", "off"):
        status = "stock MLX (higgs-kernels turned off by HIGGS_KERNELS=0)"
    elif mx.default_device() != mx.cpu:
        status = f"stock MLX on {mx.default_device()}"
    else:
        try:
            import higgs_kernels
        except ImportError:
            status = "stock MLX CPU kernels (slow): higgs-kernels is not installed"
        else:
            if not higgs_kernels.available():
                why = higgs_kernels.import_error
                status = f"stock MLX CPU kernels (slow): higgs-kernels did not load ({why})"
            else:
                higgs_kernels.patch(model)
                for _, module in model.named_modules():
                    # Our own classes: the subclass adds methods only, so the module
                    # changes class in place, its arrays untouched.
                    if type(module) is Attention:
                        module.__class__ = KernelAttention
                        if (twin := _kernel_rope(module.rope)) is not None:
                            module.rope = twin
                    elif type(module) is MLP:
                        module.__class__ = KernelMLP
                status = (
                    f"higgs-kernels ({higgs_kernels.isa()}, {higgs_kernels.threads()} threads; "
                    "attention too)"
                )
    if mx.default_device() == mx.cpu:
        # Stock quantized layers the kernels did not take (all of them without the
        # kernels; modes they do not cover with them) get the stock CPU strategy.
        for _, module in model.named_modules():
            if type(module) is nn.QuantizedLinear:
                module.__class__ = DequantizingLinear
    model.kernels = status
    return status
