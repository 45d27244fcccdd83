"""Drop-in `nn.Linear` / `nn.QuantizedLinear` layers backed by the kernels, and
`patch`, which swaps them into a loaded model."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from . import ops


def _on_cpu() -> bool:
    return mx.default_device() == mx.cpu


class KernelLinear(nn.Linear):
    """An `nn.Linear` whose forward pass uses the kernels on the CPU device
    (stock MLX elsewhere). Same parameters, so it saves and loads alike."""

    def __call__(self, x: mx.array) -> mx.array:
        if not _on_cpu():
            return super().__call__(x)
        y = ops.linear(x, self["weight"])
        if "bias" in self:
            y = y + self["bias"]
        return y


class KernelQuantizedLinear(nn.QuantizedLinear):
    """An affine `nn.QuantizedLinear` whose forward pass uses the kernels on the
    CPU device (stock MLX elsewhere)."""

    def __call__(self, x: mx.array) -> mx.array:
        if not _on_cpu():
            return super().__call__(x)
        y = ops.quantized_linear(
            x,
            self["weight"],
            self["scales"],
            self["biases"],
            group_size=self.group_size,
            bits=self.bits,
        )
        if "bias" in self:
            y = y + self["bias"]
        return y


def _kernel_version(layer: nn.Module) -> nn.Module | None:
    """The kernel-backed twin of `layer`, sharing its arrays, or None when the
    kernels do not cover it."""
    cls: type[nn.Module]
    if type(layer) is nn.Linear:
        if layer["weight"].dtype not in (mx.float32, mx.bfloat16, mx.float16):
            return None
        cls = KernelLinear
    elif type(layer) is nn.QuantizedLinear:
        if (
            getattr(layer, "mode", "affine") != "affine"
            or "biases" not in layer
            or layer.bits not in ops.SUPPORTED_BITS
            or layer.group_size not in ops.SUPPORTED_GROUP_SIZES
        ):
            return None
        cls = KernelQuantizedLinear
    else:
        return None
    twin = cls.__new__(cls)
    twin.__dict__.update(layer.__dict__)  # group_size, bits, mode, training flags
    dict.update(twin, layer)  # the arrays themselves, not copies
    return twin


def _swap(container, key, value) -> int:
    twin = _kernel_version(value)
    if twin is not None:
        container[key] = twin
        return 1
    return _walk(value) if isinstance(value, nn.Module | list | tuple | dict) else 0


def _walk(node) -> int:
    swapped = 0
    if isinstance(node, dict):  # nn.Module is a dict of its arrays and children
        for key, value in list(node.items()):
            if isinstance(value, nn.Module | list | dict):
                swapped += _swap(node, key, value)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            swapped += _swap(node, i, value)
    elif isinstance(node, tuple):
        for value in node:
            swapped += _walk(value)
    return swapped


def patch(module: nn.Module) -> int:
    """Swap every `nn.Linear` and affine `nn.QuantizedLinear` inside `module` for
    its kernel-backed twin, in place, and return how many were swapped.

    Does nothing (returns 0) unless the extension is available and MLX's default
    device is the CPU. The twins share the original arrays and keep the same
    parameter names, and fall back to stock MLX if the default device later
    changes.
    """
    if not ops.available() or not _on_cpu():
        return 0
    if _kernel_version(module) is not None:
        raise TypeError(
            "patch() swaps the layers inside a model; call it on the model, not on a "
            f"bare {type(module).__name__}."
        )
    return _walk(module)
