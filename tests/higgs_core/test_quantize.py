"""Quantization and the MLX layout: what gets quantized, and save/load round trips."""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from higgs_core import load_model, quantize, save_model
from higgs_core.kernels import DequantizingLinear, use_kernels

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "core"


def float_linear(layer) -> bool:
    """An unquantized linear layer (stock, or higgs-kernels' float twin of one)."""
    return isinstance(layer, nn.Linear) and mx.issubdtype(layer.weight.dtype, mx.floating)


@pytest.fixture
def fresh():
    return load_model(FIXTURES / "tiny-original", dtype=mx.float32)


@pytest.fixture(scope="module")
def short(ref):
    ids = ref["input_ids"][:400]
    return ids[None], ref["audio_ids"][None, : int((ids == 400).sum())]


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_quantize_keeps_the_audio_table_and_head_in_float(fresh, bits):
    quantize(fresh, bits, group_size=32)
    assert type(fresh.audio_codebook_embeddings) is nn.Embedding
    assert float_linear(fresh.audio_decoder_proj.audio_lm_head)
    assert fresh.audio_codebook_embeddings.weight.dtype == mx.float32
    assert isinstance(fresh.embed_tokens, nn.QuantizedEmbedding)
    assert isinstance(fresh.audio_decoder_proj.text_lm_head, nn.QuantizedLinear)
    for layer in fresh.layers:
        for linear in (layer.self_attn.q_proj, layer.mlp.up_proj, layer.audio_mlp.down_proj):
            assert isinstance(linear, nn.QuantizedLinear)
            assert linear.bits == bits
    assert fresh.config.quantization == {"group_size": 32, "bits": bits, "mode": "affine"}


def test_quantized_logits_stay_close(short):
    # The tiny random model is far touchier than the real one; compare the bit widths.
    want = np.array(load_model(FIXTURES / "tiny-original", dtype=mx.float32).logits(*short)[1])
    rms, agree = {}, {}
    for bits in (4, 6, 8):
        model = quantize(load_model(FIXTURES / "tiny-original", dtype=mx.float32), bits, 32)
        got = np.array(model.logits(*short)[1])
        rms[bits] = np.sqrt(((got - want) ** 2).mean() / (want**2).mean())
        agree[bits] = (got.argmax(-1) == want.argmax(-1)).mean()
    assert rms[8] < 0.05 and agree[8] > 0.9
    assert rms[8] < rms[6] < rms[4] < 0.6


def test_layers_the_group_size_does_not_divide_stay_float(fresh):
    quantize(fresh, 8)  # group 64: the 32-wide inputs cannot be grouped
    assert float_linear(fresh.layers[0].self_attn.q_proj)
    assert isinstance(fresh.layers[0].self_attn.o_proj, nn.QuantizedLinear)  # 64 wide


def test_bad_bits_and_double_quantization(fresh):
    with pytest.raises(ValueError, match="bits must be 4, 6 or 8"):
        quantize(fresh, 5)
    quantize(fresh, 8, 32)
    with pytest.raises(ValueError, match="already quantized"):
        quantize(fresh, 4, 32)


def test_quantized_save_load_round_trip(fresh, short, tmp_path):
    quantize(fresh, 6, group_size=32)
    want_text, want_audio = fresh.logits(*short)
    save_model(fresh, tmp_path / "q6")
    config = json.loads((tmp_path / "q6" / "config.json").read_text())
    assert config["model_type"] == "higgs_audio"
    assert config["quantization"] == {"group_size": 32, "bits": 6, "mode": "affine"}
    keys = mx.load(str(tmp_path / "q6" / "model.safetensors")).keys()
    assert "layers.0.audio_mlp.up_proj.scales" in keys
    assert "audio_codebook_embeddings.scales" not in keys
    assert "audio_decoder_proj.audio_lm_head.scales" not in keys

    loaded = load_model(tmp_path / "q6")
    assert float_linear(loaded.audio_decoder_proj.audio_lm_head)
    text, audio = loaded.logits(*short)
    assert mx.array_equal(text, want_text) and mx.array_equal(audio, want_audio)


def test_only_modules_with_stored_scales_are_quantized(fresh, short, tmp_path):
    # A mixed checkpoint: layer 0's MLP at 4 bits, the text embedding at 8, the rest float.
    def predicate(path, module):
        if path.startswith("layers.0.mlp."):
            return {"group_size": 32, "bits": 4}
        return path == "embed_tokens"

    nn.quantize(fresh, group_size=32, bits=8, class_predicate=predicate)
    fresh.config = fresh.config.replace(quantization={"group_size": 32, "bits": 8})
    use_kernels(fresh)  # run the new layers as load_model will (higgs-kernels on a CPU)
    want = fresh.logits(*short)[1]
    save_model(fresh, tmp_path / "mixed")
    loaded = load_model(tmp_path / "mixed")
    assert loaded.layers[0].mlp.up_proj.bits == 4
    assert loaded.embed_tokens.bits == 8
    assert float_linear(loaded.layers[0].audio_mlp.up_proj)
    assert float_linear(loaded.layers[1].mlp.up_proj)
    assert mx.array_equal(loaded.logits(*short)[1], want)


def test_float_save_load_round_trip_and_sharding(fresh, short, tmp_path):
    want = fresh.logits(*short)
    save_model(fresh, tmp_path / "f32", max_shard_gb=1 / 2**20)  # ~1 MB shards
    index = json.loads((tmp_path / "f32" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = load_model(tmp_path / "f32")
    got = loaded.logits(*short)
    assert mx.array_equal(got[0], want[0]) and mx.array_equal(got[1], want[1])


@pytest.mark.parametrize("bits", [4, 8])
def test_multi_row_projection_matches_the_quantized_matmul(fresh, bits):
    # prefill rows on the CPU go through dequantize + matmul instead of
    # quantized_matmul; the two must agree
    quantize(fresh, bits, group_size=32)
    layer = fresh.layers[1].audio_mlp.up_proj
    x = mx.random.normal((1, 37, 32), key=mx.random.key(1))
    layer.__class__ = nn.QuantizedLinear  # the stock layer, whatever use_kernels made of it
    want = np.array(layer(x))
    layer.__class__ = DequantizingLinear
    got = np.array(layer(x))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_stock_cpu_quantized_layers_dequantize_for_prefill(monkeypatch):
    # Without the kernels, on the CPU, use_kernels gives quantized layers the stock
    # CPU strategy; the model's code calls them as plain layers either way.
    monkeypatch.setenv("HIGGS_KERNELS", "0")
    model = quantize(load_model(FIXTURES / "tiny-original", dtype=mx.float32), 4, group_size=32)
    layers = [layer.self_attn.q_proj for layer in model.layers]
    if mx.default_device() == mx.cpu:
        assert all(type(q) is DequantizingLinear for q in layers)
    else:
        assert all(type(q) is nn.QuantizedLinear for q in layers)


def test_quantize_leaves_no_float_copy_behind():
    model = load_model(FIXTURES / "tiny-original")  # bf16
    mx.clear_cache()
    before = mx.get_active_memory()
    float_size = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    quantize(model, 8, group_size=32)
    size = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    assert size < float_size
    assert mx.get_active_memory() - before <= size - float_size + 4096
