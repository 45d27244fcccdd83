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
    second. Through the library's seam for it (``Higgs.logits_processors``), this
    pushes each stream's audio logits: stream EOS is ruled out before frame ``n`` and
    made certain on codebook 0 from then on; the real sampler, RAS and ramp-out do
    the rest. ``steer(None)`` stops steering the generations submitted from then on.
    """
    import itertools

    import mlx.core as mx

    from higgs_cli.pipeline import Higgs

    state: dict = {"n": None, "order": itertools.count()}

    def processors(tts):
        if state["n"] is None:
            return None
        wants = state["n"]
        n = wants[min(next(state["order"]), len(wants) - 1)]  # in order of submission

        def push(frame, logits):
            K, V = logits.shape
            eos = mx.arange(V)[None, :] == tts.model.config.audio_stream_eos_id
            if frame >= n:
                return logits + mx.where(eos & (mx.arange(K)[:, None] == 0), 1e4, 0.0)
            return logits + mx.where(eos, -1e4, 0.0)

        return push

    monkeypatch.setattr(Higgs, "logits_processors", processors)

    def set_after(n):
        state["n"] = None if n is None else list(n) if isinstance(n, list | tuple) else [n]
        state["order"] = itertools.count()

    return set_after
