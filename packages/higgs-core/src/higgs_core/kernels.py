"""Routing linear layers through higgs-kernels on MLX's CPU device.

Stock MLX's CPU backend multiplies a bf16 matrix by a vector at a fraction of
the memory bandwidth and runs prefill through a reference BLAS; the optional
``higgs-kernels`` extension (Linux) does both at memory speed. It is used only
when it is installed and the model runs on the CPU; ``HIGGS_KERNELS=0`` turns
it off. Metal and CUDA always run stock MLX.
"""

import os

import mlx.core as mx
import mlx.nn as nn


def use_kernels(model: nn.Module) -> str:
    """Swap the model's linear layers for kernel-backed twins where that helps,
    and say what runs them (the line ``higgs bench`` prints)."""
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
                why = higgs_kernels.import_error()
                status = f"stock MLX CPU kernels (slow): higgs-kernels did not load ({why})"
            else:
                higgs_kernels.patch(model)
                status = f"higgs-kernels ({higgs_kernels.isa()}, {higgs_kernels.threads()} threads)"
    model.kernels = status
    return status
