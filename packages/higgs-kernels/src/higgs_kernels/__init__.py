"""CPU kernels that let MLX run linear layers at memory speed on Linux.

`linear` and `quantized_linear` compute ``x @ w.T`` (for MLX's affine
group-quantized layout too), `attention` is scaled dot-product attention
(`attention_rows` for a decode batch whose rows each have their own cache),
`swiglu` a SwiGLU MLP's activation and `rope` a rotary embedding, with this
package's C++ kernels when they run on MLX's CPU device and the extension is
built; anywhere else they are stock MLX. `patch(model)` swaps a model's
`nn.Linear`/`nn.QuantizedLinear` layers for ones that do this.
"""

from .layers import KernelLinear, KernelQuantizedLinear, patch
from .ops import (
    SUPPORTED_BITS,
    SUPPORTED_GROUP_SIZES,
    attention,
    attention_rows,
    available,
    import_error,
    isa,
    linear,
    quantized_linear,
    rope,
    set_threads,
    swiglu,
    threads,
)

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED_BITS",
    "SUPPORTED_GROUP_SIZES",
    "KernelLinear",
    "KernelQuantizedLinear",
    "attention",
    "attention_rows",
    "available",
    "import_error",
    "isa",
    "linear",
    "patch",
    "quantized_linear",
    "rope",
    "set_threads",
    "swiglu",
    "threads",
]
