"""`higgs convert` and `--play` on the tiny offline checkpoints."""

import builtins
import json

import mlx.core as mx
import pytest
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


def test_bench_batch_prints_a_row_per_batch_size():
    sizes = ["--batch", "2", "--batch", "1"]
    r = CliRunner().invoke(
        cli, ["bench", "--layers", "1", "--bits", "4", *sizes, "--frames", "2", "--prompt", "16"]
    )
    assert r.exit_code == 0, r.stderr
    assert "[q4, batched] 1/28 layers" in r.stdout
    rows = [line.split() for line in r.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"]  # sorted, each once
    assert rows[0][3] == "1.00x" and float(rows[1][3].rstrip("x")) > 0
    assert all(float(row[1]) > 0 for row in rows)


def test_convert_never_writes_over_or_into_its_source(home, tiny_model, tmp_path):
    import shutil

    src = tmp_path / "model"
    shutil.copytree(tiny_model, src, symlinks=False)
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    for dst in (src, src / "q8", tmp_path / "link"):
        if dst.name == "link":
            dst.symlink_to(src)
        r = CliRunner().invoke(cli, ["convert", str(src), str(dst), "--bits", "8", "--force"])
        assert r.exit_code == 1 and "is the source model" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before
    assert higgs_core.load_model(src).config.quantization is None


@pytest.mark.parametrize(
    "args, line",
    [
        ([], "give a command (batch, bench, convert, say, serve, voices); higgs --help says more"),
        (
            ["convert", "/no/src", "OUT", "--bits", "8"],
            "no such checkpoint directory: /no/src (the SRC to convert)",
        ),
        (["convert", "SRC", "OUT"], "Missing option '--bits'. Choose from: 4, 6, 8"),
    ],
)  # fmt: skip
def test_command_line_mistakes_are_one_line(home, tmp_path, tiny_model, args, line):
    args = [
        str(tiny_model) if a == "SRC" else str(tmp_path / "q") if a == "OUT" else a for a in args
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0 and r.stderr == f"higgs: error: {line}\n", r.stderr


def test_requantizing_says_so_in_words(home, tmp_path, tiny_model):
    assert (
        CliRunner()
        .invoke(cli, ["convert", str(tiny_model), str(tmp_path / "q8"), "--bits", "8"])
        .exit_code
        == 0
    )
    r = CliRunner().invoke(
        cli, ["convert", str(tmp_path / "q8"), str(tmp_path / "q4"), "--bits", "4"]
    )
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "{" not in r.stderr, r.stderr
    assert "already quantized (8-bit, groups of 64): quantize the unquantized model" in r.stderr
