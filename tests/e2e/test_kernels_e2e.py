"""The pipeline through higgs-kernels against stock MLX, on the tiny checkpoints."""

import mlx.core as mx
import numpy as np
import pytest

import higgs_core
from higgs_cli.pipeline import Higgs

kernels = pytest.importorskip("higgs_kernels")
pytestmark = pytest.mark.skipif(
    not kernels.available() or mx.default_device() != mx.cpu,
    reason="higgs-kernels runs on MLX's CPU device only",
)


def load(path, monkeypatch, on: bool, **kw):
    monkeypatch.setenv("HIGGS_KERNELS", "1" if on else "0")
    return higgs_core.load_model(path, **kw)


def test_logits_match_the_stock_path(monkeypatch, tiny_model):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 384, (1, 300))
    ids[0, 100:160] = 400  # audio positions
    audio = rng.integers(0, 1026, (1, 60, 8))
    for dtype in ("float32", "bfloat16"):
        stock = load(tiny_model, monkeypatch, False, dtype=dtype)
        fast = load(tiny_model, monkeypatch, True, dtype=dtype)
        assert "stock" in stock.kernels and "higgs-kernels" in fast.kernels
        for want, got in zip(stock.logits(ids, audio), fast.logits(ids, audio), strict=True):
            want, got = np.array(want.astype(mx.float32)), np.array(got.astype(mx.float32))
            tol = 1e-5 if dtype == "float32" else 2e-2
            assert np.abs(got - want).max() <= tol * np.abs(want).max(), dtype


def test_say_is_unchanged_in_length_and_close(monkeypatch, tiny_model, tiny_codec, tmp_path):
    runs = {}
    for on in (False, True):
        monkeypatch.setenv("HIGGS_KERNELS", "1" if on else "0")
        tts = Higgs.from_pretrained(tiny_model, tiny_codec, voices_dir=tmp_path / "voices")
        runs[on] = tts.say("Good morning. How are you?", seed=3, temperature=0, ras_window=0)
    stock, fast = runs[False], runs[True]
    assert len(fast.samples) == len(stock.samples)
    assert (fast.codes == stock.codes).mean() > 0.95
    err = np.sqrt(np.mean((fast.samples - stock.samples) ** 2) / np.mean(stock.samples**2))
    assert err < 0.1
