"""Shared fixtures: the tiny reference checkpoints (see scripts/make_core_fixtures.py)."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from higgs_core import load_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "core"
LAYOUTS = ["tiny-transformers", "tiny-original", "tiny-original-sharded"]


@pytest.fixture(scope="session")
def ref():
    with np.load(FIXTURES / "reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def models():
    """float32 models, one per layout, loaded once."""
    return {name: load_model(FIXTURES / name, dtype=mx.float32) for name in LAYOUTS}


@pytest.fixture(scope="session")
def model(models):
    return models["tiny-original-sharded"]
