"""Checkpoint layouts, the no-torch pickle reader, the Hub path, and the errors users see."""

import io
import json
import os
import pickle
import shutil
import zipfile
from collections import OrderedDict
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import higgs_codec
from higgs_codec import CodecError, CodecFileNotFoundError
from higgs_codec.torch_pickle import load_torch_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "codec"
TINY, ORIGINAL, HOSTILE = FIXTURES / "tiny", FIXTURES / "original", FIXTURES / "hostile"
HUBERT = ORIGINAL / "hubert"


def params(codec):
    return dict(tree_flatten(codec.parameters()))


def copy_tiny(tmp_path, name="ckpt"):
    out = tmp_path / name
    shutil.copytree(TINY, out)
    return out


def test_original_layout_loads_the_same_weights(codec, tmp_path):
    original = higgs_codec.load_codec(ORIGINAL, semantic_model=HUBERT)
    a, b = params(codec), params(original)
    assert a.keys() == b.keys()
    for k in a:
        scale = max(float(mx.abs(a[k]).max()), 1e-6)
        assert float(mx.abs(a[k] - b[k]).max()) <= 1e-6 * scale, k


def test_original_layout_encodes_and_decodes_like_the_reference(ref):
    original = higgs_codec.load_codec(ORIGINAL, semantic_model=HUBERT)
    codes = np.array(original.encode(ref["stereo16k/input"], 16000))
    assert np.array_equal(codes, ref["stereo16k/codes"])
    want = ref["random37/decoded"]
    got = np.array(original.decode(ref["random37/codes"]))
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("path", [TINY, ORIGINAL])
def test_decode_only_holds_only_the_decoder(path, ref):
    codec = higgs_codec.load_codec(path, decode_only=True)
    names = params(codec).keys()
    assert names and all(n.startswith(("acoustic_decoder.", "fc2.", "quantizer.")) for n in names)
    assert not any("project_in" in n for n in names)
    want = ref["random37/decoded"]
    got = np.array(codec.decode(ref["random37/codes"]))
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    with pytest.raises(CodecError, match="decode_only"):
        codec.encode(np.zeros(24000, np.float32), 24000)


def test_audio_tokenizer_subfolder_of_a_model_repo(tmp_path, ref):
    repo = tmp_path / "model"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"model_type": "higgs_audio_v2"}))
    (repo / "model.safetensors").write_bytes(b"the language model would be here")
    shutil.copytree(TINY, repo / "audio_tokenizer")
    codec = higgs_codec.load_codec(repo, decode_only=True)
    assert codec.decode(ref["random1/codes"]).shape == (960,)


def test_weights_already_in_mlx_layout_load_too(codec, tmp_path, ref):
    """An MLX re-upload may store conv weights channels-last; both layouts load."""
    out = copy_tiny(tmp_path)
    mx.save_safetensors(str(out / "model.safetensors"), params(codec))
    again = higgs_codec.load_codec(out)
    for k, v in params(codec).items():
        assert mx.array_equal(v, params(again)[k]), k


def test_sharded_safetensors(codec, tmp_path):
    out = copy_tiny(tmp_path)
    weights = mx.load(str(out / "model.safetensors"))
    (out / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for file, keys in shards.items():
        mx.save_safetensors(str(out / file), {k: weights[k] for k in keys})
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = higgs_codec.load_codec(out)
    assert all(mx.array_equal(v, params(loaded)[k]) for k, v in params(codec).items())


def test_missing_unexpected_and_misshapen_weights_are_named(tmp_path):
    out = copy_tiny(tmp_path)
    weights = mx.load(str(out / "model.safetensors"))
    base = dict(weights)
    del weights["acoustic_decoder.conv2.bias"]
    weights["acoustic_decoder.extra.weight"] = mx.zeros((2,))
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    with pytest.raises(
        CodecError, match=r"1 missing \(e\.g\. acoustic_decoder\.conv2\.bias\)"
    ) as e:
        higgs_codec.load_codec(out)
    assert "acoustic_decoder.extra.weight" in str(e.value)

    base["fc2.weight"] = mx.zeros((3, 3))
    mx.save_safetensors(str(out / "model.safetensors"), base)
    with pytest.raises(CodecError, match=r"fc2\.weight has shape \(3, 3\)"):
        higgs_codec.load_codec(out)


def test_the_config_decides_the_architecture(tmp_path):
    """Without the checkpoint's target_bandwidths, transformers' default (…, 4 kbps) would
    mean 16 quantizers; the loader follows the config and the weights then disagree."""
    out = copy_tiny(tmp_path)
    config = json.loads((out / "config.json").read_text())
    del config["target_bandwidths"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CodecError, match=r"missing.*quantizer\.quantizers\.(8|9|1\d)\."):
        higgs_codec.load_codec(out)


def test_wrong_or_missing_checkpoints(tmp_path):
    with pytest.raises(CodecFileNotFoundError, match="no such codec directory"):
        higgs_codec.load_codec(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        higgs_codec.load_codec("./no/such/dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(CodecError, match=r"not a codec checkpoint.*notes\.txt"):
        higgs_codec.load_codec(empty)
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"model_type": "higgs_audio_v2"}))
    with pytest.raises(CodecError, match="language model"):
        higgs_codec.load_codec(lm)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(TINY / "config.json", no_weights)
    with pytest.raises(CodecError, match=r"no model\.safetensors"):
        higgs_codec.load_codec(no_weights)
    broken = copy_tiny(tmp_path, "broken")
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CodecError, match="could not read weights"):
        higgs_codec.load_codec(broken)


def test_a_file_path_is_refused_as_for_the_model():
    # One rule for model and codec: a checkpoint is a directory.
    with pytest.raises(CodecError, match=r"config\.json is a file; pass the codec's directory"):
        higgs_codec.load_codec(TINY / "config.json", decode_only=True)


# -- the restricted pickle reader -----------------------------------------------------


def test_hostile_checkpoint_is_refused_before_it_runs():
    os.environ.pop("HIGGS_CODEC_HOSTILE_PICKLE_RAN", None)
    with pytest.raises(CodecError, match=r"refusing.*exec"):
        higgs_codec.load_codec(HOSTILE, decode_only=True)
    with pytest.raises(CodecError, match="refusing"):
        load_torch_checkpoint(HOSTILE / "model.pth")
    assert "HIGGS_CODEC_HOSTILE_PICKLE_RAN" not in os.environ


class _System:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _torch_like_zip(path, payload):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
    return path


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps({"w": _System()}, protocol=2),
        pickle.dumps({"w": _System()}, protocol=5),
        pickle.dumps({"w": shutil.rmtree}, protocol=4),
    ],
)
def test_other_hostile_pickles_are_refused(tmp_path, payload):
    path = _torch_like_zip(tmp_path / "model.pth", payload)
    with pytest.raises(CodecError, match="refusing"):
        load_torch_checkpoint(path)


def test_pickle_reader_reads_what_torch_saved():
    weights = load_torch_checkpoint(ORIGINAL / "model.pth")
    assert weights["decoder_2.model.1.block.1.weight_v"].shape == (64, 32, 16)
    assert weights["decoder_2.model.1.block.1.weight_v"].dtype == np.float32
    assert "semantic_model_extra_state" not in weights  # a BytesIO entry, dropped
    assert weights["quantizer.vq.layers.3._codebook.embed"].shape == (1024, 8)


def test_pickle_reader_rejects_non_checkpoints(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(CodecError, match="not a zip-format"):
        load_torch_checkpoint(junk)
    missing_storage = _torch_like_zip(
        tmp_path / "m.pth",
        b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\n"
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x009X\x03\x00\x00\x00cpuK\x02tQ"
        b"K\x00K\x02\x85K\x01\x85\x89tRs.",
    )
    with pytest.raises(CodecError, match="refusing"):
        load_torch_checkpoint(missing_storage)


# -- the Hub path, offline ---------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def add(repo_id, files):
        folder = cache / ("models--" + repo_id.replace("/", "--"))
        commit = "0123456789abcdef0123456789abcdef01234567"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(commit)
        snapshot = folder / "snapshots" / commit
        for name, source in files.items():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, snapshot / name)

    return add


def test_hub_repo_from_the_cache(offline_hub, ref):
    offline_hub("someone/tiny-codec", {f.name: f for f in TINY.iterdir()})
    codec = higgs_codec.load_codec("someone/tiny-codec", decode_only=True)
    assert codec.decode(ref["random1/codes"]).shape == (960,)


def test_hub_model_repo_with_audio_tokenizer_folder(offline_hub, tmp_path, ref):
    lm_config = tmp_path / "config.json"
    lm_config.write_text(json.dumps({"model_type": "higgs_audio_v2"}))
    files = {"config.json": lm_config}
    files |= {f"audio_tokenizer/{f.name}": f for f in TINY.iterdir()}
    offline_hub("someone/tts-model", files)
    codec = higgs_codec.load_codec("someone/tts-model", decode_only=True)
    assert codec.decode(ref["random1/codes"]).shape == (960,)


def test_hub_repo_offline_and_not_cached_says_what_to_do(offline_hub):
    with pytest.raises(CodecError, match=r"someone/absent.*local cache.*hf download"):
        higgs_codec.load_codec("someone/absent")


def test_original_layout_without_a_hubert_config_offline(offline_hub):
    with pytest.raises(CodecError, match=r"bosonai/hubert_base.*as semantic_model="):
        higgs_codec.load_codec(ORIGINAL)


def test_bfloat16_checkpoints_load_as_float32(codec, tmp_path):
    out = copy_tiny(tmp_path)
    weights = mx.load(str(out / "model.safetensors"))
    mx.save_safetensors(
        str(out / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in weights.items()}
    )
    loaded = params(higgs_codec.load_codec(out))
    for k, v in params(codec).items():
        assert loaded[k].dtype == mx.float32
        if k == "semantic_model.encoder.pos_conv_embed.conv.weight":  # folded from bf16 g, v
            assert mx.allclose(loaded[k], v, rtol=2e-2, atol=1e-4), k
        else:
            assert mx.array_equal(loaded[k], v.astype(mx.bfloat16).astype(mx.float32)), k


# -- bounded work: what a small hostile file can no longer cost ---------------------------


def _fake_torch(monkeypatch):
    """Importable stand-ins for the names torch pickles refer to, so that the test can
    write checkpoints the way torch.save does without torch."""
    import sys
    import types

    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        pass

    def _rebuild_parameter(*args):
        pass

    FloatStorage.__module__ = "torch"
    _rebuild_tensor_v2.__module__ = _rebuild_parameter.__module__ = "torch._utils"
    for obj in (FloatStorage, _rebuild_tensor_v2, _rebuild_parameter):
        obj.__qualname__ = obj.__name__
    torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    utils._rebuild_parameter = _rebuild_parameter
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return FloatStorage, _rebuild_tensor_v2


def _tensor_checkpoint(path, monkeypatch, size, stride, values=1):
    storage_type, rebuild = _fake_torch(monkeypatch)

    class Tensor:
        def __reduce__(self):
            return (rebuild, (storage, 0, size, stride, False, OrderedDict()))

    class Storage:
        pass

    storage = Storage()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", storage_type, "0", "cpu", values) if obj is storage else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(OrderedDict(w=Tensor()))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", np.zeros(values, np.float32).tobytes())
    return path


def test_a_tiny_file_cannot_make_a_huge_tensor(tmp_path, monkeypatch):
    # One stored value, viewed as 16384 x 16384 through zero strides: 1 GiB once copied.
    path = _tensor_checkpoint(tmp_path / "m.pth", monkeypatch, (16384, 16384), (0, 0))
    assert path.stat().st_size < 1024
    with pytest.raises(CodecError, match="more values than its storage"):
        load_torch_checkpoint(path)
    # A genuine tensor still loads.
    ok = _tensor_checkpoint(tmp_path / "ok.pth", monkeypatch, (2, 3), (3, 1), values=6)
    assert load_torch_checkpoint(ok)["w"].shape == (2, 3)


def test_compressed_members_are_refused(tmp_path):
    path = tmp_path / "m.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        z.writestr("archive/data/0", b"\0" * (64 << 20), compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < (1 << 20)  # 64 MB of zeros in well under 1 MB
    with pytest.raises(CodecError, match="archive/data/0 is compressed"):
        load_torch_checkpoint(path)


def test_a_huge_memo_index_is_refused_before_unpickling(tmp_path):
    # EMPTY_DICT, LONG_BINPUT 0x0ffffff0, STOP: the C unpickler would size its memo
    # to 2^28 slots (2 GiB) for these 9 bytes.
    path = _torch_like_zip(tmp_path / "m.pth", b"\x80\x02}r\xf0\xff\xff\x0f.")
    with pytest.raises(CodecError, match="memo slot 268435440"):
        load_torch_checkpoint(path)


def test_build_cannot_set_state_on_an_allowed_function(tmp_path):
    from higgs_codec import torch_pickle

    defaults = torch_pickle._rebuild_parameter.__defaults__
    # GLOBAL torch._utils._rebuild_parameter, state (None, {"__defaults__": (5,)}), BUILD.
    payload = (
        b"\x80\x02ctorch._utils\n_rebuild_parameter\nN}X\x0c\x00\x00\x00__defaults__"
        b"K\x05\x85s\x86b0}."
    )
    with pytest.raises(CodecError, match="sets the state of function objects"):
        load_torch_checkpoint(_torch_like_zip(tmp_path / "m.pth", payload))
    assert torch_pickle._rebuild_parameter.__defaults__ == defaults


@pytest.fixture
def broken(tmp_path):
    """A copy of the tiny transformers-layout codec to break."""
    dst = tmp_path / "codec"
    shutil.copytree(TINY, dst)
    return dst


def _edit(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(target_bandwidths=[1e9]), "target_bandwidths"),
        (lambda c: c.update(codebook_size=-5), "codebook_size=-5"),
        (lambda c: c.update(codebook_size=0), "codebook_size=0"),
        (lambda c: c.update(sample_rate="fast"), "malformed codec config"),
        (lambda c: c["acoustic_model_config"].update(downsampling_ratios=[0, 5]), "ratios"),
        (lambda c: c["semantic_model_config"].update(num_hidden_layers=10**6), "num_hidden_layers"),
        (lambda c: c["semantic_model_config"].update(num_attention_heads=0), "num_attention_heads"),
    ],
)
def test_absurd_codec_configs_are_one_clear_error(broken, change, message):
    _edit(broken, change)
    with pytest.raises(CodecError, match="config") as info:
        higgs_codec.load_codec(broken)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_codec_files_must_be_regular_and_inside(broken):
    config = broken / "config.json"
    config.unlink()
    config.symlink_to("/dev/zero")
    with pytest.raises(CodecError, match="not a regular file"):
        higgs_codec.load_codec(broken)
    config.unlink()
    (broken / "config.json").write_text("[1]")
    with pytest.raises(CodecError, match="not a list"):
        higgs_codec.load_codec(broken)


def test_a_shard_index_pointing_outside_is_refused(codec, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(TINY, folder)
    index = {"weight_map": {"fc.weight": "../../../etc/passwd"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CodecError, match="not a file in the checkpoint"):
        higgs_codec.load_codec(folder)
