import base64
import hashlib

import pytest

from higgs_core import backend


def record(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A fake site-packages where mlx-cpu and a CUDA build both claim libmlx.so."""
    lib = tmp_path / "libmlx.so"
    records = {}
    monkeypatch.setattr(backend, "_libmlx", lambda name: records.get(name))
    monkeypatch.setattr(backend.sys, "platform", "linux")

    def setup(present: bytes, dists: dict[str, bytes]):
        lib.write_bytes(present)
        records.clear()
        records.update({name: (record(data), lib) for name, data in dists.items()})

    return setup


def test_the_cpu_library_over_the_cuda_one_is_reported(installed):
    installed(b"cpu build", {"mlx-cpu": b"cpu build", "mlx-cuda-12": b"cuda build"})
    assert backend.cuda_library_shadowed() == "mlx-cuda-12"
    with pytest.warns(UserWarning, match="uv pip install --reinstall --no-deps mlx-cuda-12"):
        backend.warn_if_cuda_shadowed()


@pytest.mark.parametrize(
    "present, dists",
    [
        (b"cuda build", {"mlx-cpu": b"cpu build", "mlx-cuda-12": b"cuda build"}),  # CUDA won
        (b"cpu build", {"mlx-cpu": b"cpu build"}),  # the default: CPU only
        (b"cuda build", {"mlx-cuda-13": b"cuda build"}),  # CUDA only
    ],
)
def test_no_warning_otherwise(installed, present, dists):
    installed(present, dists)
    assert backend.cuda_library_shadowed() is None


def test_this_environment_is_consistent():
    assert backend.cuda_library_shadowed() is None
