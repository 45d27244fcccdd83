"""Routing linear layers, attention, RoPE and the MLP's activation through
higgs-kernels on MLX's CPU device.

Stock MLX's CPU backend multiplies a bf16 matrix by a vector at a fraction of
the memory bandwidth, runs prefill through a reference BLAS, attends over a KV
cache an order of magnitude below memory speed, runs RoPE as a dozen separate
ops and computes silu with a scalar exp; the optional ``higgs-kernels``
extension (Linux) does all of these at memory or compute speed. It is used only
when it is installed and the model runs on the CPU; ``HIGGS_KERNELS=0`` turns
it off. Metal and CUDA always run stock MLX.
"""

import os

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention


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

    def __call__(self, x: mx.array, offset: int = 0) -> mx.array:
        import higgs_kernels

        return higgs_kernels.rope(x, self.dims, freqs=self._freqs, offset=offset)


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
                    if "attend" in module.__dict__:  # higgs_core.model.Attention
                        module.attend = kernel_attention
                        if (twin := _kernel_rope(module.rope)) is not None:
                            module.rope = twin
                    if "act" in module.__dict__:  # higgs_core.model.MLP
                        module.act = higgs_kernels.swiglu
                status = (
                    f"higgs-kernels ({higgs_kernels.isa()}, {higgs_kernels.threads()} threads; "
                    "attention too)"
                )
    model.kernels = status
    return status
