"""Which MLX build is loaded, and a warning when the CUDA extra lost its library.

On Linux, `mlx-cpu` (the default) and `mlx-cuda-12`/`mlx-cuda-13` (the `cuda`
extra) ship the same file, `mlx/lib/libmlx.so`. With both installed, whichever
was written last is the one that runs, and installers do not promise an order.
"""

import base64
import hashlib
import sys
import warnings
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

CUDA_DISTS = ("mlx-cuda-12", "mlx-cuda-13")


def _libmlx(dist_name: str):
    """(recorded sha256, installed path) of a distribution's libmlx.so, or None."""
    try:
        dist = distribution(dist_name)
    except PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == "libmlx.so" and f.hash is not None:
            return f.hash.value, f.locate()
    return None


def cuda_library_shadowed() -> str | None:
    """The CUDA distribution whose libmlx.so was overwritten by mlx-cpu's, if any."""
    if not sys.platform.startswith("linux"):
        return None
    cpu = _libmlx("mlx-cpu")
    cudas = [(name, _libmlx(name)) for name in CUDA_DISTS]
    cudas = [(name, rec) for name, rec in cudas if rec is not None]
    if cpu is None or not cudas:
        return None
    digest = hashlib.sha256(Path(cpu[1]).read_bytes()).digest()
    installed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    for name, (recorded, _) in cudas:
        if installed != recorded:
            return name
    return None


def warn_if_cuda_shadowed():
    name = cuda_library_shadowed()
    if name:
        warnings.warn(
            f"{name} is installed, but the libmlx.so that loads is mlx-cpu's, so MLX runs "
            f"without CUDA. Restore it with: uv pip install --reinstall --no-deps {name}",
            stacklevel=2,
        )
