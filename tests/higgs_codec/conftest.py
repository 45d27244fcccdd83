from pathlib import Path

import numpy as np
import pytest

import higgs_codec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "codec"
TINY = FIXTURES / "tiny"
ORIGINAL = FIXTURES / "original"
HOSTILE = FIXTURES / "hostile"


@pytest.fixture(scope="session")
def ref():
    with np.load(FIXTURES / "reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(params=["mlx", "numpy"])
def gemm_backend(request):
    """Run a test with MLX's own GEMMs and with numpy's (the Linux-CPU default)."""
    from higgs_codec import layers

    layers.use_numpy_gemm(request.param == "numpy")
    yield request.param
    layers.use_numpy_gemm(None)


@pytest.fixture(scope="session")
def codec():
    return higgs_codec.load_codec(TINY)


def _rel_err(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / np.abs(want).max())


def _snr_db(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    noise = np.sum((got - want) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(want**2) / noise))


@pytest.fixture(scope="session")
def rel_err():
    """max |got - want| / max |want|"""
    return _rel_err


@pytest.fixture(scope="session")
def snr_db():
    return _snr_db
