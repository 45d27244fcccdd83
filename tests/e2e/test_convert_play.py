"""`higgs convert` and `--play` on the tiny offline checkpoints."""

import builtins
import json

import mlx.core as mx
import soundfile as sf
from click.testing import CliRunner

import higgs_core
from higgs_cli.main import cli


def test_convert_then_speak(home, tiny_model, tmp_path):
    out = tmp_path / "q8"
    r = CliRunner().invoke(
        cli, ["convert", str(tiny_model), str(out), "--bits", "8", "--group-size", "32"]
    )
    assert r.exit_code == 0, r.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 8
    assert (out / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()
    model = higgs_core.load_model(out)
    # The audio embedding table and audio head stay in full precision.
    assert model.audio_codebook_embeddings.weight.dtype != mx.uint32
    assert "scales" not in model.audio_decoder_proj.audio_lm_head
    assert "scales" in model.layers[0].audio_mlp.gate_proj
    wav = tmp_path / "q8.wav"
    r = CliRunner().invoke(
        cli, ["say", "Hello.", "--model", str(out), "-o", str(wav), "--max-seconds", "1"]
    )
    assert r.exit_code == 0, r.stderr
    assert sf.info(wav).samplerate == 24000
    # Converting into a folder that is not empty needs --force.
    r = CliRunner().invoke(cli, ["convert", str(tiny_model), str(out), "--bits", "4"])
    assert r.exit_code == 1 and "not empty" in r.stderr


def test_play_without_the_extra_fails_fast(home, monkeypatch):
    real_import = builtins.__import__

    def no_sounddevice(name, *args, **kwargs):
        if name == "sounddevice":
            raise ImportError("No module named 'sounddevice'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sounddevice)
    loads = []
    monkeypatch.setattr(higgs_core, "load_model", lambda *a, **k: loads.append(a))
    r = CliRunner().invoke(cli, ["say", "Hello.", "--play"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "'play' extra" in r.stderr
    assert loads == []  # failed before loading the model


def test_bench_prints_its_figures():
    r = CliRunner().invoke(
        cli, ["bench", "--layers", "1", "--bits", "0", "--frames", "2", "--prompt", "16"]
    )
    assert r.exit_code == 0, r.stderr
    for label in ("prefill", "decode step", "real-time", "floor", "step / floor", "peak memory"):
        assert label in r.stdout
    assert "[bfloat16] 1/28 layers" in r.stdout
