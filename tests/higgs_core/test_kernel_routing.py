"""What `use_kernels` says it runs (the line `higgs bench` prints), for each case."""

import sys

import mlx.core as mx
import mlx.nn as nn
import pytest

from higgs_core.kernels import use_kernels


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("HIGGS_KERNELS", "0")
    model = Tiny()
    status = use_kernels(model)
    assert status == model.kernels and "turned off by HIGGS_KERNELS=0" in status
    assert type(model.proj) is nn.Linear


def test_not_installed(monkeypatch):
    monkeypatch.delenv("HIGGS_KERNELS", raising=False)
    monkeypatch.setitem(sys.modules, "higgs_kernels", None)  # import fails
    if mx.default_device() != mx.cpu:
        pytest.skip("only the CPU device looks for higgs-kernels")
    model = Tiny()
    assert use_kernels(model) == "stock MLX CPU kernels (slow): higgs-kernels is not installed"
    assert type(model.proj) is nn.Linear


def test_failed_to_load_names_the_reason(monkeypatch):
    hk = pytest.importorskip("higgs_kernels")
    if mx.default_device() != mx.cpu:
        pytest.skip("only the CPU device looks for higgs-kernels")
    monkeypatch.delenv("HIGGS_KERNELS", raising=False)
    monkeypatch.setattr(hk, "available", lambda: False)
    monkeypatch.setattr(hk, "import_error", ImportError("built for mlx 0.0.1"))
    model = Tiny()
    status = use_kernels(model)
    assert status.startswith("stock MLX CPU kernels (slow): higgs-kernels did not load")
    assert "built for mlx 0.0.1" in status
    assert type(model.proj) is nn.Linear
