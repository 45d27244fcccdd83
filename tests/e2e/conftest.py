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
