"""Offline end-to-end fixtures: the tiny random model (original layout, sharded)
with the tiny tokenizer, and the tiny codec. Random weights: the audio is noise."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """tests/fixtures/tiny-model links core's sharded original-layout checkpoint and the
    tiny tokenizer into one folder, as a hub snapshot holds them."""
    return FIXTURES / "tiny-model"


@pytest.fixture(scope="session")
def tiny_codec() -> Path:
    return FIXTURES / "codec" / "tiny"


@pytest.fixture
def home(tmp_path, monkeypatch, tiny_model, tiny_codec) -> Path:
    """A fresh per-user data folder, with the CLI pointed at the tiny checkpoints."""
    monkeypatch.setenv("HIGGS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HIGGS_MODEL", str(tiny_model))
    monkeypatch.setenv("HIGGS_CODEC", str(tiny_codec))
    return tmp_path / "home"


@pytest.fixture(scope="session")
def tts(tiny_model, tiny_codec, tmp_path_factory):
    from higgs_cli.pipeline import Higgs

    return Higgs.from_pretrained(
        tiny_model, tiny_codec, voices_dir=tmp_path_factory.mktemp("voices")
    )


@pytest.fixture
def steer(monkeypatch):
    """``steer(n)``: every generation from here on ends on its own after frame ``n``;
    ``steer([n0, n1, ...])``: the i-th generation after ``n_i`` (the last one repeats).

    The tiny model's weights are random, so it stops (on EOS) after well under a
    second. This pushes its audio logits: stream EOS is ruled out before frame
    ``n`` and made certain on codebook 0 from then on; the real sampler, RAS and
    ramp-out do the rest. ``steer(None)`` stops steering.
    """
    import mlx.core as mx

    from higgs_core.model import HiggsAudioModel

    real = HiggsAudioModel.step_rows
    after: dict = {"n": None}
    steps: dict[int, int] = {}  # decode steps so far, per stream (its cache)
    order: dict[int, int] = {}  # which generation a stream is, in order of submission

    def push(t, n, K, V, eos):
        is_eos = mx.arange(V)[None, :] == eos
        if t + 1 >= n:  # this step makes frame t + 1
            return mx.where(is_eos & (mx.arange(K)[:, None] == 0), 1e4, 0.0)
        return mx.broadcast_to(mx.where(is_eos, -1e4, 0.0), (K, V))  # rows stack alike

    def step_rows(self, frames, caches):
        logits = real(self, frames, caches)
        if after["n"] is None:
            return logits
        _, K, V = logits.shape
        pushes = []
        for cache in caches:
            steps[id(cache)] = t = steps.get(id(cache), 0) + 1
            n = after["n"][min(order[id(cache)], len(after["n"]) - 1)]
            pushes.append(push(t, n, K, V, self.config.audio_stream_eos_id))
        return logits + mx.stack(pushes).astype(logits.dtype)

    monkeypatch.setattr(HiggsAudioModel, "step_rows", step_rows)

    from higgs_core import Batch

    submit = Batch.submit

    def submitted(self, *args, **kwargs):
        # A new stream: count its steps from 0 (the id of a finished stream's cache
        # may come back for a new one).
        stream = submit(self, *args, **kwargs)
        steps[id(stream.cache)] = 0
        order[id(stream.cache)] = len(order)
        return stream

    monkeypatch.setattr(Batch, "submit", submitted)

    def set_after(n):
        after["n"] = None if n is None else list(n) if isinstance(n, list | tuple) else [n]
        steps.clear()
        order.clear()

    return set_after
