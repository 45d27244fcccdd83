"""Reading checkpoints: both config layouts, the hub path, and the errors users see."""

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from higgs_core import (
    CheckpointError,
    ModelConfig,
    ModelNotFoundError,
    load_model,
    resolve_path,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "core"


def copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def rewrite_weights(path: Path, edit):
    file = path / "model.safetensors"
    weights = dict(mx.load(str(file)))
    edit(weights)
    mx.save_safetensors(str(file), weights)


@pytest.mark.parametrize("layout", ["tiny-transformers", "tiny-original"])
def test_config_fields_the_cli_reads(layout):
    config = load_model(FIXTURES / layout).config
    assert config.num_codebooks == 8
    assert config.codebook_size == 1024  # real codes; transformers' 1026 counts BOS/EOS
    assert config.audio_vocab_size == 1026
    assert (config.audio_stream_bos_id, config.audio_stream_eos_id) == (1024, 1025)
    assert config.audio_out_token_id == 400
    assert config.audio_in_token_id == 399
    assert config.audio_out_bos_token_id == 397
    assert config.audio_eos_token_id == 396
    assert config.pad_token_id == 385
    assert config.vocab_size == 640
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)


def test_release_defaults_describe_the_real_model():
    config = ModelConfig()
    assert config.audio_out_token_id == 128016 and config.audio_eos_token_id == 128012
    assert config.num_hidden_layers == 28 and config.hidden_size == 3072


def test_unknown_layout_names_what_it_found(tmp_path):
    path = copy("tiny-original", tmp_path)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    with pytest.raises(CheckpointError, match=r"unknown config layout: model_type='llama'"):
        load_model(path)


def test_transformers_codebook_size_must_count_bos_and_eos(tmp_path):
    path = copy("tiny-transformers", tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["codebook_size"] = 1024
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="1026"):
        load_model(path)


def test_unsupported_original_variant_is_named(tmp_path):
    path = copy("tiny-original", tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["audio_adapter_type"] = "stack"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="audio_adapter_type 'stack'"):
        load_model(path)


def test_missing_weight_is_named(tmp_path):
    path = copy("tiny-original", tmp_path)
    rewrite_weights(path, lambda w: w.pop("layers.1.audio_mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 weight\(s\): layers\.1\.audio_mlp\.up"):
        load_model(path)


def test_unexpected_weight_is_named(tmp_path):
    path = copy("tiny-transformers", tmp_path)
    rewrite_weights(path, lambda w: w.update({"model.layers.0.extra.weight": mx.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected 1 weight\(s\): layers\.0\.extra\."):
        load_model(path)


def test_wrong_shape_is_an_error(tmp_path):
    path = copy("tiny-original", tmp_path)
    rewrite_weights(path, lambda w: w.update({"norm.weight": mx.ones(16)}))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(path)


def test_missing_shard_is_named(tmp_path):
    path = copy("tiny-original-sharded", tmp_path)
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors"):
        load_model(path)


def test_directory_without_config_or_weights(tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_model(tmp_path)
    shutil.copy(FIXTURES / "tiny-original" / "config.json", tmp_path)
    with pytest.raises(CheckpointError, match=r"no model\*\.safetensors"):
        load_model(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such checkpoint directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="no such checkpoint directory"):
        load_model("./not/a/checkpoint")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        load_model(FIXTURES / "tiny-original" / "config.json")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_id_offline_and_uncached_says_how_to_pass_a_path(offline_hub):
    with pytest.raises(ModelNotFoundError) as err:
        load_model("bosonai/higgs-audio-v2-generation-3B-base")
    message = str(err.value)
    assert "'bosonai/higgs-audio-v2-generation-3B-base'" in message
    assert "not in the local cache" in message
    assert "`hf download bosonai/higgs-audio-v2-generation-3B-base --local-dir DIR`" in message


def test_hub_id_found_in_the_cache_loads_offline(offline_hub, ref):
    repo = offline_hub / "models--someone--tiny-higgs"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(FIXTURES / "tiny-original-sharded", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve_path("someone/tiny-higgs") == repo / "snapshots" / commit
    model = load_model("someone/tiny-higgs", dtype=mx.float32)
    _, audio = model.logits(ref["input_ids"][None], ref["audio_ids"][None])
    rows = np.array(audio[0])[ref["rows"]]
    assert np.abs(rows - ref["audio_logits_rows"]).max() <= 1e-4 * np.abs(rows).max()


def test_text_head_is_optional(tmp_path, ref):
    path = copy("tiny-transformers", tmp_path)
    rewrite_weights(path, lambda w: w.pop("text_lm_head.weight"))
    model = load_model(path, dtype=mx.float32)
    assert not model.config.has_text_head
    text, audio = model.logits(ref["input_ids"][None], ref["audio_ids"][None])
    assert text is None
    rows = np.array(audio[0])[ref["rows"]]
    assert np.abs(rows - ref["audio_logits_rows"]).max() <= 1e-4 * np.abs(rows).max()


def test_partially_frozen_splits_of_the_release_are_merged(tmp_path, ref):
    path = copy("tiny-original", tmp_path)

    def split(w):
        table = w.pop("embed_tokens.weight")
        w["embed_tokens.embedding_frozen.weight"] = table[:600]
        w["embed_tokens.embedding_trainable.weight"] = table[600:]

    rewrite_weights(path, split)
    model = load_model(path)
    want = load_model(FIXTURES / "tiny-original")
    assert mx.array_equal(model.embed_tokens.weight, want.embed_tokens.weight)


def test_loading_is_lazy(tmp_path):
    # bf16 on disk, bf16 in memory: no second copy while loading
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    model = load_model(FIXTURES / "tiny-original")
    size = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    assert mx.get_peak_memory() - before <= 1.1 * size


def test_dtype_by_name():
    model = load_model(FIXTURES / "tiny-original", dtype="float16")
    assert model.layers[0].mlp.up_proj.weight.dtype == mx.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        load_model(FIXTURES / "tiny-original", dtype="fp8")
