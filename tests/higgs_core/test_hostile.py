"""Broken, absurd or hostile checkpoints fail with one clear CheckpointError, before
anything large is allocated and without reading outside the checkpoint folder."""

import json
import os
import shutil

import pytest

from higgs_core import CheckpointError, load_model
from higgs_core.config import ModelConfig

from .conftest import FIXTURES


@pytest.fixture
def checkpoint(tmp_path):
    """A copy of the tiny sharded checkpoint to break."""
    dst = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "tiny-original-sharded", dst)
    return dst


def edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["text_config"].update(num_hidden_layers=10**9),
            "num_hidden_layers=1000000000",
        ),
        (lambda c: c["text_config"].update(num_attention_heads=0), "num_attention_heads=0"),
        (lambda c: c["text_config"].update(hidden_size=-32), "hidden_size=-32"),
        (lambda c: c["text_config"].update(intermediate_size="big"), "intermediate_size='big'"),
        (lambda c: c["text_config"].update(vocab_size=1 << 30), "vocab_size"),
        (lambda c: c["text_config"].update(rms_norm_eps=-1), "rms_norm_eps"),
        (lambda c: c.update(audio_num_codebooks=0), "num_codebooks=0"),
        (
            lambda c: c["text_config"].update(hidden_size=60000, intermediate_size=200000),
            "parameters",
        ),
    ],
)
def test_absurd_configs_fail_before_anything_is_built(checkpoint, change, message, monkeypatch):
    import higgs_core.loading

    built = []

    class Counted(higgs_core.loading.HiggsAudioModel):
        def __init__(self, *args):
            built.append(args)
            super().__init__(*args)

    monkeypatch.setattr(higgs_core.loading, "HiggsAudioModel", Counted)
    edit_config(checkpoint, change)
    with pytest.raises(CheckpointError, match="config") as info:
        load_model(checkpoint)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert built == []  # refused from the config alone: no model was built


def test_a_config_that_is_not_an_object(checkpoint):
    (checkpoint / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match="must hold a JSON object, not a list"):
        load_model(checkpoint)
    with pytest.raises(CheckpointError, match="not a list"):
        ModelConfig.from_dict([1, 2])


def test_shard_index_entries_stay_in_the_folder(checkpoint):
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    for evil in ("../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors"):
        index["weight_map"][first] = evil
        (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match="not a file in the checkpoint"):
            load_model(checkpoint)


def test_special_files_are_refused(checkpoint):
    config = checkpoint / "config.json"
    config.unlink()
    os.mkfifo(config)  # a read would block forever
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_model(checkpoint)
    config.unlink()
    config.symlink_to("/dev/zero")  # a read would never end
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_model(checkpoint)


def test_a_damaged_shard_is_one_clear_line(checkpoint):
    shard = sorted(checkpoint.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot load") as info:
        load_model(checkpoint)
    assert "\n" not in str(info.value)
