"""`higgs voices` and voice use end to end on the tiny offline checkpoints."""

import json
import subprocess
import sys

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from higgs_cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def recording(tmp_path, seconds=1.5, rate=16000):
    path = tmp_path / "me.wav"
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), rate)
    return path


def hidden(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []


def test_builtin_voice_is_pinned_once_and_reused(home, tmp_path, steer):
    steer(100)  # the model ends the pin itself after 4 s
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    r = run("say", "Hello there.", "--voice", "en_woman", "-o", str(a), "--max-seconds", "2")
    assert r.exit_code == 0, r.stderr
    pins = list((home / "voices" / "en_woman").glob("codes-pin-*.npy"))
    assert len(pins) == 1
    before = pins[0].stat().st_mtime_ns, pins[0].read_bytes()
    r = run("say", "Hello there.", "--voice", "en_woman", "-o", str(b), "--max-seconds", "2")
    assert r.exit_code == 0, r.stderr
    assert (pins[0].stat().st_mtime_ns, pins[0].read_bytes()) == before  # not made again
    assert sf.read(a)[0].tolist() == sf.read(b)[0].tolist()  # same pin, same seed, same audio
    shown = run("voices", "show", "en_woman").stdout
    assert "kind         builtin" in shown and pins[0].stem.removeprefix("codes-") in shown
    assert "made by" in shown and "tiny-model" in shown and "seed 11" in shown


def test_a_pin_serves_every_model_with_the_same_codec(home, tmp_path, tiny_model, steer):
    # bf16, quantized, a re-download elsewhere: a pin is codes plus a transcript, so
    # the first model to need it makes it and every later one reuses it.
    steer(100)
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    for f in tiny_model.iterdir():
        (copy / f.name).symlink_to(f.resolve())
    out = tmp_path / "x.wav"
    assert (
        run("say", "Hi.", "--voice", "en_man", "-o", str(out), "--max-seconds", "1").exit_code == 0
    )
    pin = next((home / "voices" / "en_man").glob("codes-pin-*.npy"))
    before = pin.stat().st_mtime_ns
    steer(None)  # a second pin would now be rejected: reuse shows as no rebuild and no warning
    r = run("say", "Hi.", "--voice", "en_man", "--model", str(copy), "-o", str(out))
    assert r.exit_code == 0 and "warning" not in r.stderr, r.stderr
    assert pin.stat().st_mtime_ns == before
    assert len(list((home / "voices" / "en_man").glob("codes-pin-*.npy"))) == 1
    q8 = tmp_path / "q8"
    assert run("convert", str(tiny_model), str(q8), "--bits", "8").exit_code == 0
    r = run("say", "Hi.", "--voice", "en_man", "--model", str(q8), "-o", str(out))
    assert r.exit_code == 0 and "warning" not in r.stderr, r.stderr
    assert pin.stat().st_mtime_ns == before


def test_a_pin_the_model_did_not_end_well_is_not_kept(home, tmp_path, steer):
    # Unsteered, the tiny model stops on EOS after under a second: below the 2 s a pin
    # needs. Each seed is tried, then one take serves this run only, with a warning.
    out = tmp_path / "x.wav"
    r = run("say", "Hi.", "--voice", "en_woman", "-o", str(out), "--max-seconds", "1")
    assert r.exit_code == 0
    assert r.stderr.count("4 tries at pinning 'en_woman' gave no clean take") == 1, r.stderr
    assert not list(home.glob("voices/en_woman/codes-pin-*"))
    # Too long is no better: a pin that runs to its 12 s budget is refused too.
    steer(10_000)
    r = run("say", "Hi.", "--voice", "en_woman", "-o", str(out), "--max-seconds", "1")
    assert "max_frames at 12.0 s" in r.stderr, r.stderr
    assert not list(home.glob("voices/en_woman/codes-pin-*"))
    # The next seed is tried when a take is refused: here the second one is kept.
    steer([10_000, 100])
    r = run("say", "Hi.", "--voice", "en_woman", "-o", str(out))
    assert r.exit_code == 0 and "tries at pinning" not in r.stderr, r.stderr
    assert "seed 12" in run("voices", "show", "en_woman").stdout


def test_an_unwritable_home_does_not_break_a_builtin_voice(home, tmp_path, monkeypatch, steer):
    # A HIGGS_HOME that cannot be written (read-only, full, or, here, under a file so
    # that even root cannot create it): the pin is used from memory, with a warning.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("HIGGS_HOME", str(blocker / "home"))
    steer(100)
    out = tmp_path / "x.wav"
    r = run("say", "Hi. Again.", "--voice", "en_man", "-o", str(out), "--chunk-words", "1")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("cannot store the pin of 'en_man'") == 1, r.stderr  # once, two chunks
    assert sf.info(out).frames > 0


def test_pin_is_the_same_from_run_to_run(home, tts, tmp_path):
    from higgs_cli.voices import VoiceStore

    tts.voices = VoiceStore(tmp_path / "v1")
    first = tts.speaker("en_man").codes
    tts.voices = VoiceStore(tmp_path / "v2")  # a fresh store pins again, identically
    assert np.array_equal(first, tts.speaker("en_man").codes)


def test_add_list_use_remove_and_restart(home, tmp_path):
    wav = recording(tmp_path)
    r = run("voices", "add", "me", "--audio", str(wav), "--text", "A test tone.")
    assert r.exit_code == 0, r.stderr
    folder = home / "voices" / "me"
    assert sorted(p.name for p in folder.iterdir())[0] == "audio.wav"
    assert len(list(folder.glob("codes-codec-*.npy"))) == 1
    # A separate process (a restart) lists and uses it.
    env_run = subprocess.run(
        [sys.executable, "-m", "higgs_cli", "voices", "list"], capture_output=True, text=True
    )
    assert env_run.returncode == 0 and "me " in env_run.stdout and "A test tone." in env_run.stdout
    out = tmp_path / "me-says.wav"
    r = run("say", "Hello.", "--voice", "me", "-o", str(out), "--max-seconds", "1")
    assert r.exit_code == 0, r.stderr
    assert sf.info(out).samplerate == 24000
    assert run("voices", "remove", "me").exit_code == 0
    assert not folder.exists() and hidden(home / "voices") == []
    r = run("say", "Hello.", "--voice", "me")
    assert r.exit_code == 1 and "unknown voice 'me'" in r.stderr


def test_ref_audio_clones_without_storing(home, tmp_path):
    wav = recording(tmp_path)
    out = tmp_path / "clone.wav"
    r = run(
        "say",
        "Hi.",
        "--ref-audio",
        str(wav),
        "--ref-text",
        "A tone.",
        "-o",
        str(out),
        "--max-seconds",
        "1",
    )
    assert r.exit_code == 0, r.stderr
    assert not (home / "voices").exists() or not any((home / "voices").iterdir())


def test_failed_add_keeps_what_was_there(home, tmp_path):
    wav = recording(tmp_path)
    assert run("voices", "add", "me", "--audio", str(wav), "--text", "Original.").exit_code == 0
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF but not really a wave file")
    r = run("voices", "add", "me", "--audio", str(bad), "--text", "Replacement.", "--force")
    assert r.exit_code == 1 and r.stderr.startswith("higgs: error: ") and r.stderr.count("\n") == 1
    assert "Original." in run("voices", "show", "me").stdout
    r = run("voices", "add", "you", "--audio", str(bad), "--text", "x")
    assert r.exit_code == 1
    assert not (home / "voices" / "you").exists() and hidden(home / "voices") == []
    r = run("voices", "add", "../up", "--audio", str(wav), "--text", "x")
    assert r.exit_code == 1 and "invalid voice name" in r.stderr
    r = run("voices", "add", "me", "--audio", str(wav), "--text", "Again.")
    assert r.exit_code == 1
    assert r.stderr == "higgs: error: voice 'me' already exists; remove it first or pass --force\n"


def test_damaged_entries_are_reported(home, tmp_path):
    wav = recording(tmp_path)
    assert run("voices", "add", "me", "--audio", str(wav), "--text", "Tone.").exit_code == 0
    (home / "voices" / "me" / "voice.json").write_text("{garbage")
    r = run("say", "Hello.", "--voice", "me")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "damaged" in r.stderr and "higgs voices remove me" in r.stderr
    listed = run("voices", "list")
    assert listed.exit_code == 0 and "me" in listed.stdout and "damaged" in listed.stdout
    r = run("voices", "remove", "me")
    assert r.exit_code == 0 and r.stderr == "removed voice 'me'\n"


def test_damaged_pin_is_made_again_with_a_warning(home, tmp_path, steer):
    steer(100)
    out = tmp_path / "x.wav"
    assert (
        run("say", "Hi.", "--voice", "en_man", "-o", str(out), "--max-seconds", "1").exit_code == 0
    )
    pin = next((home / "voices" / "en_man").glob("codes-pin-*.npy"))
    good = pin.read_bytes()
    pin.write_bytes(good[:30])
    r = run("say", "Hi.", "--voice", "en_man", "-o", str(out), "--max-seconds", "1")
    assert r.exit_code == 0
    assert "warning" in r.stderr and "damaged" in r.stderr
    assert pin.read_bytes() == good  # the same seed pins the same codes


def test_reference_recordings_are_capped_in_length_before_anything_loads(home, tmp_path):
    long = recording(tmp_path, seconds=40)
    r = run("voices", "add", "long", "--audio", str(long), "--text", "A long tone.")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "40.0 s long; reference audio may be at most 30 s" in r.stderr
    assert str(long) in r.stderr and "(--max-ref-seconds raises the limit)" in r.stderr
    assert not (home / "voices" / "long").exists()
    # Before the model loads: a model that does not exist is never reached.
    r = run("say", "Hi.", "--ref-audio", str(long), "--ref-text", "A tone.", "--model", "/no/model")
    assert r.exit_code == 1 and "at most 30 s" in r.stderr and "/no/model" not in r.stderr
    r = run("voices", "add", "long", "--audio", str(long), "--text", "x", "--max-ref-seconds", "60")
    assert r.exit_code == 0, r.stderr
    # higgs batch takes the same option for its rows' references
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "r", "text": "Hi.", "ref_audio": str(long), "ref_text": "x"}))
    r = run("batch", str(rows), "-o", str(tmp_path / "out"), "--max-seconds", "0.4")
    assert r.exit_code == 1
    assert "at most 30 s" in (tmp_path / "out" / "results.jsonl").read_text()
    r = run("batch", str(rows), "-o", str(tmp_path / "out"), "--max-seconds", "0.4",
            "--max-ref-seconds", "60")  # fmt: skip
    assert r.exit_code == 0, r.stderr


def test_one_name_for_the_longest_reference():
    # --max-ref-seconds wherever a reference recording is read; --max-seconds only ever
    # for the audio made.
    import click

    from higgs_cli.main import cli

    ctx = click.Context(cli)
    for name in ("say", "batch", "serve", "voices add"):
        command = cli
        for part in name.split():
            command = command.get_command(ctx, part)
        options = {o for p in command.params for o in p.opts}
        assert "--max-ref-seconds" in options, name
        if "--max-seconds" in options:
            [p] = [p for p in command.params if "--max-seconds" in p.opts]
            assert "seconds of audio" in p.help, name


def test_voices_add_and_remove_word_their_lines_alike(home, tmp_path, steer):
    wav = recording(tmp_path)
    r = run("voices", "add", "me", "--audio", str(wav), "--text", "Tone.")
    assert r.stderr == "added voice 'me'\n"
    assert run("voices", "remove", "me").stderr == "removed voice 'me'\n"
    steer(60)
    assert run("say", "Hi.", "--voice", "en_man", "-o", str(tmp_path / "x.wav")).exit_code == 0
    r = run("voices", "remove", "en_man")
    assert r.stderr == "forgot the pin of built-in voice 'en_man' (made again on next use)\n"
