"""`higgs say` end to end on the tiny offline checkpoints."""

import io

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

import higgs_core
from higgs_cli.main import cli
from higgs_cli.output import pcm16

TEXT = "Good morning. How are you today?"


def say(*args, input=None):
    result = CliRunner().invoke(cli, ["say", *args], input=input, catch_exceptions=False)
    return result


def read_wav(path):
    data, sr = sf.read(path, dtype="int16")
    info = sf.info(path)
    return data, sr, info


def snr_db(ref, test):
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - test) ** 2), 1e-30))


def test_say_writes_a_wav_of_frames_times_hop(home, tmp_path, tts):
    out = tmp_path / "out.wav"
    r = say(TEXT, "-o", str(out), "--seed", "3", "--max-seconds", "3")
    assert r.exit_code == 0, r.stderr
    assert f"wrote {out}" in r.stderr
    data, sr, info = read_wav(out)
    assert sr == 24000 and info.channels == 1 and info.subtype == "PCM_16"
    # The same request through the Python API: same codes, same samples.
    speech = tts.say(TEXT, seed=3, max_seconds=3)
    assert speech.codes.shape[0] == 8
    assert len(data) == speech.codes.shape[1] * 960 == len(speech.samples)
    assert data.tobytes() == pcm16(speech.samples)


def test_seeded_runs_repeat_and_seeds_differ(tts):
    a = tts.say(TEXT, seed=5, max_seconds=2)
    b = tts.say(TEXT, seed=5, max_seconds=2)
    c = tts.say(TEXT, seed=6, max_seconds=2)
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.samples, b.samples)
    assert not np.array_equal(a.codes, c.codes)


def test_stream_matches_the_whole_decode(home, tmp_path):
    whole, streamed = tmp_path / "whole.wav", tmp_path / "streamed.wav"
    args = ["--seed", "7", "--max-seconds", "3"]
    assert say(TEXT, "-o", str(whole), *args).exit_code == 0
    assert say(TEXT, "-o", str(streamed), "--stream", *args).exit_code == 0
    a, _, _ = read_wav(whole)
    b, _, _ = read_wav(streamed)
    assert len(a) == len(b) > 0
    assert snr_db(a, b) > 40


def test_stream_api_yields_pieces_that_add_up(tts):
    stream = tts.stream(TEXT, seed=4, max_seconds=3)
    assert stream.speech is None
    pieces = list(stream)
    assert len(pieces) > 1  # audio left before the end
    speech = stream.speech
    assert np.array_equal(np.concatenate(pieces), speech.samples)
    whole = tts.say(TEXT, seed=4, max_seconds=3)
    assert np.array_equal(whole.codes, speech.codes)
    assert snr_db(whole.samples, speech.samples) > 40


def test_text_from_file_and_stdin_and_stdout_output(home, tmp_path):
    f = tmp_path / "in.txt"
    f.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "f.wav"
    assert say("-f", str(f), "-o", str(out), "--max-seconds", "1").exit_code == 0
    r = say("-o", "-", "--format", "pcm", "--max-seconds", "1", input=TEXT)
    assert r.exit_code == 0
    from_file, _, _ = read_wav(out)
    assert r.stdout_bytes == from_file.tobytes()  # same text, same seed, raw pcm
    r = say(TEXT, "-o", "-", "--max-seconds", "1")
    data, sr = sf.read(io.BytesIO(r.stdout_bytes), dtype="int16")
    assert sr == 24000 and np.array_equal(data, from_file)


def test_flac_and_default_file_name(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert say("Good morning!", "--format", "flac", "--max-seconds", "1").exit_code == 0
    assert say("Good morning!", "--format", "flac", "--max-seconds", "1").exit_code == 0
    assert sorted(p.name for p in tmp_path.glob("*.flac")) == [
        "good-morning-2.flac",
        "good-morning.flac",
    ]
    assert sf.info(tmp_path / "good-morning.flac").samplerate == 24000


def test_the_extension_decides_the_format(home, tmp_path):
    for name, fmt, args in [
        ("a.flac", "FLAC", []),
        ("b.FLAC", "FLAC", ["--format", "flac"]),
        ("c.wav", "WAV", []),
        ("d", "FLAC", ["--format", "flac"]),  # no extension: as --format says
        ("e", "WAV", []),
    ]:
        r = say("Hi.", "-o", str(tmp_path / name), "--max-seconds", "1", *args)
        assert r.exit_code == 0, r.stderr
        assert sf.info(tmp_path / name).format == fmt, name


def test_non_ascii_text_names_its_file(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for text in ("Grüße aus München.", "你好，世界。", "नमस्ते दुनिया।"):
        assert say(text, "--max-seconds", "1").exit_code == 0
    names = sorted(p.name for p in tmp_path.glob("*.wav"))
    assert names == sorted(["grüße-aus-münchen.wav", "你好-世界.wav", "नमस्ते-दुनिया.wav"])


def test_progress_audio_seconds_only_grow(tts, steer):
    steer(40)  # every chunk runs 40 frames, so each reports several times
    seen = []
    speech = tts.say(
        "First part is here. Second part follows now. Third part ends it.",
        chunk_words=4,
        max_seconds=30,
        progress=seen.append,
    )
    seconds = [p.audio_seconds for p in seen]
    assert len({p.chunk for p in seen}) == 3 and len(seen) > 6
    assert seconds == sorted(seconds), seconds
    assert seconds[-1] == pytest.approx(speech.duration)
    finished = [p.audio_seconds for p in seen if p.done]
    assert len(finished) == 3 and finished[-1] == pytest.approx(speech.duration)


def test_long_text_is_chunked_with_context(tts, monkeypatch):
    calls = []
    real = higgs_core.Batch.submit

    def spy(self, input_ids, audio_ids=None, **kw):
        calls.append((np.array(input_ids), None if audio_ids is None else np.array(audio_ids)))
        return real(self, input_ids, audio_ids, **kw)

    monkeypatch.setattr(higgs_core.Batch, "submit", spy)
    text = "First part is here. Second part follows now. Third part ends it."
    speech = tts.say(text, seed=1, chunk_words=4, context_chunks=1, max_seconds=30)
    assert speech.chunks == [
        "First part is here.",
        "Second part follows now.",
        "Third part ends it.",
    ]
    assert len(calls) == 3
    first_codes = speech.codes[:, : _chunk_len(calls, 0, tts)]
    # Chunk 2's prompt replays chunk 1's text and its audio (delayed) as context.
    ids2, audio2 = calls[1]
    assert _contains(
        ids2, tts.tokenizer.encode("First part is here.", add_special_tokens=False).ids
    )
    assert audio2 is not None and audio2.shape[0] == first_codes.shape[1] + 2 + 7
    assert np.array_equal(audio2[1:-8, 0], first_codes[0])  # codebook 0: BOS, codes, 8 EOS
    # With context_chunks=1, chunk 3 sees chunk 2 but no longer chunk 1.
    ids3, _ = calls[2]
    assert _contains(
        ids3, tts.tokenizer.encode("Second part follows now.", add_special_tokens=False).ids
    )
    assert not _contains(
        ids3, tts.tokenizer.encode("First part is here.", add_special_tokens=False).ids
    )


def test_every_chunk_of_a_dialogue_gets_the_multi_speaker_prompt(tts, monkeypatch):
    # The release reads the speaker tags of the whole text once: a chunk that holds one
    # speaker's turn still gets the multi-speaker instruction and both voices' lines.
    from higgs_cli.prompt import MULTI_SPEAKER_INSTRUCTION

    calls = []
    real = higgs_core.Batch.submit

    def spy(self, input_ids, audio_ids=None, **kw):
        calls.append(tts.tokenizer.decode(list(input_ids), skip_special_tokens=False))
        return real(self, input_ids, audio_ids, **kw)

    monkeypatch.setattr(higgs_core.Batch, "submit", spy)
    text = "[SPEAKER0] Did you hear that noise?\n[SPEAKER1] Hear what, exactly?"
    speech = tts.say(text, seed=1, chunk_words=6, max_seconds=30)
    assert len(speech.chunks) == len(calls) == 2
    for prompt in calls:
        assert MULTI_SPEAKER_INSTRUCTION in prompt
        assert "SPEAKER0: feminine\nSPEAKER1: masculine" in prompt


def test_the_voice_reference_is_the_ras_history(tts, monkeypatch, steer):
    # Repetition-aware sampling looks back over the prompt's audio out: the voice's
    # reference codes, delayed, as the release's RAS window reads its audio_out_ids.
    import mlx.core as mx

    from higgs_sampling import build_delay_pattern

    steer(100)  # so the built-in voice gets pinned
    histories = []
    real = higgs_core.Batch.submit

    def spy(self, input_ids, audio_ids=None, **kw):
        histories.append(kw.get("history"))
        return real(self, input_ids, audio_ids, **kw)

    codes = tts.speaker("en_man").codes  # the voice's reference (pinned before the spy looks)
    monkeypatch.setattr(higgs_core.Batch, "submit", spy)
    tts.say("Good morning.", voice="en_man", seed=3, max_seconds=1)
    cfg = tts.model.config
    delayed = build_delay_pattern(
        mx.array(codes, dtype=mx.int32), cfg.audio_stream_bos_id, cfg.audio_stream_eos_id
    )
    [history] = histories
    assert history is not None and np.array_equal(np.asarray(history), np.array(delayed).T)


def _chunk_len(calls, i, tts):
    # Each later prompt holds chunk i's codes wrapped and delayed: T + 2 + 7 positions.
    _, audio = calls[i + 1]
    return audio.shape[0] - 9


def _contains(ids, sub):
    ids, sub = list(ids), list(sub)
    return any(ids[i : i + len(sub)] == sub for i in range(len(ids) - len(sub) + 1))


@pytest.mark.parametrize(
    "args, message",
    [
        (["-f", "/no/such/file.txt"], "cannot read /no/such/file.txt"),
        (["   "], "there is no text to speak"),
        (["Hi.", "--voice", "nobody"], "unknown voice 'nobody'"),
        (["Hi.", "--voice", "../etc"], "invalid voice name"),
        (["Hi.", "--ref-audio", "/no/ref.wav", "--ref-text", "x"], "/no/ref.wav does not exist"),
        (["Hi.", "--ref-audio", "REF"], "1 --ref-audio but 0 --ref-text"),
        (["Hi.", "-o", "/no/such/dir/x.wav"], "folder /no/such/dir does not exist"),
        (["Hi.", "--top-p", "0"], "'--top-p': 0.0 is not in the range 0<x<=1"),
        (["Hi.", "--temperature", "-1"], "'--temperature': -1.0 is not in the range x>=0"),
        (["Hi.", "--seed", "-1"], "'--seed'"),
        (["Hi.", "--chunk-words", "0"], "'--chunk-words'"),
        (["Hi.", "--max-seconds", "0"], "'--max-seconds'"),
        (["[SPEAKER0] a\n[SPEAKER1] b", "--voice", "en_man"], "1 voice(s) were given"),
        (["[SPEAKER99999999] Hi."], "at most 8 speakers"),
        # voices that would go unused, or a mode with nothing to act on
        (["Hi.", "--voice", "en_man", "--voice", "en_woman"], "2 voices (named or recorded)"),
        (
            ["[SPEAKER0] a\n[SPEAKER1] b", *("--voice", "en_man") * 2, "--voice", "en_woman"],
            "3 voices (named or recorded) were given for SPEAKER0..SPEAKER1",
        ),
        (
            ["Hi.", "--voice", "en_man", "--ref-audio", "REF", "--ref-text", "x"],
            "2 voices (named or recorded) were given for a text with no [SPEAKERn] tags",
        ),
        (["Hi.", "--ref-in-system"], "--ref-in-system puts the voices' reference audio"),
        (["Hi.", "-q", "-v"], "-q (print only errors) and -v (print more) ask for opposites"),
        (["Hi.", "--model", "/no/such/model"], "/no/such/model"),
        (["Hi.", "--stream", "-o", "-", "--format", "flac"], "cannot stream to stdout"),
        (["Hi.", "-o", "x.mp3", "--format", "wav"], "'x.mp3' is named .mp3 but --format is wav"),
        (["Hi.", "-o", "x.m4a"], ".m4a is not a format higgs writes"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(home, tmp_path, args, message):
    args = [str(tmp_path / "r.wav") if a == "REF" else a for a in args]
    (tmp_path / "r.wav").write_bytes(b"")
    # Each is found before the model loads: with no model at all, the same answer.
    for model in ([], ["--model", "/no/such/model"]):
        if model and "--model" in args:
            continue
        r = CliRunner().invoke(cli, ["say", *args, *model])
        assert r.exit_code != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("higgs: error: ") and message in lines[0], lines[0]


def test_unreadable_reference_audio(home, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio at all")
    r = CliRunner().invoke(cli, ["say", "Hi.", "--ref-audio", str(bad), "--ref-text", "hello"])
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("higgs: error: ")
    assert "bad.wav" in r.stderr


def test_wrong_checkpoint_layout(home, tmp_path):
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "whisper"}')
    (bad / "tokenizer.json").write_text("{}")
    r = CliRunner().invoke(cli, ["say", "Hi.", "--model", str(bad)])
    assert r.exit_code == 1 and r.stderr.startswith("higgs: error: ")
    assert "whisper" in r.stderr and r.stderr.count("\n") == 1


def test_debug_shows_the_traceback(home):
    r = CliRunner().invoke(cli, ["say", "Hi.", "--voice", "nobody", "--debug"])
    assert r.exit_code == 1 and "Traceback" in r.stderr


def _higgs(*args, **kwargs):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "higgs_cli", *args], capture_output=True, text=True, **kwargs
    )


def test_an_unwritable_output_fails_before_the_model_loads(home, tmp_path):
    for target, message in [
        ("/proc/nope/out.wav", "cannot write /proc/nope/out.wav"),
        ("/proc/out.wav", "cannot write /proc/out.wav"),
        (str(tmp_path), "it is a folder"),
    ]:
        r = say("Hi.", "-o", target, "--model", "/no/such/model")
        assert r.exit_code == 1 and message in r.stderr and "/no/such/model" not in r.stderr
        assert r.stderr.count("\n") == 1 and ".partial" not in r.stderr


def test_stdout_failures_are_reported(home):
    import os
    import subprocess
    import sys

    # A full disk behind the redirect.
    with open("/dev/full", "wb") as full:
        r = subprocess.run(
            [sys.executable, "-m", "higgs_cli", "say", "Hi.", "-o", "-", "-q"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert r.returncode == 1 and "cannot write to stdout: No space left on device" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    # A reader that went away (a closed pipe), streamed too.
    for extra in ([], ["--stream", "--format", "pcm"]):
        read, write = os.pipe()
        os.close(read)
        cmd = [sys.executable, "-m", "higgs_cli", "say", "Hi.", "-o", "-", "-q"]
        r = subprocess.run(cmd + extra, stdout=write, stderr=subprocess.PIPE, text=True)
        os.close(write)
        assert r.returncode == 1 and "cannot write to stdout" in r.stderr, (extra, r.stderr)
        assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr


def test_binary_audio_is_not_written_to_a_terminal(home):
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    r = subprocess.run(
        [sys.executable, "-m", "higgs_cli", "say", "Hi.", "-o", "-", "--model", "/no/model"],
        stdout=follower,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(follower)
    os.close(leader)
    assert r.returncode == 1 and "refusing to write binary audio to a terminal" in r.stderr


def test_verbose_sums_up_the_stop_reasons(home, tmp_path, steer):
    # Six one-word chunks: -v gives one line of counts, never an entry per chunk.
    steer(12)  # each chunk ends after 12 frames: six fit the budget
    out = tmp_path / "v.wav"
    text = "One. Two. Three. Four. Five. Six."
    r = say(text, "-o", str(out), "--chunk-words", "1", "--max-seconds", "6", "-v")
    assert r.exit_code == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "stop:" in line]
    assert len(lines) == 1 and "chunks         6 (stop: " in lines[0], r.stderr
    counts = lines[0].split("(stop: ")[1].rstrip(")").split(", ")
    assert sum(int(c.split()[0]) for c in counts) == 6, lines
    assert len(counts) == len({c.split()[1] for c in counts}), lines


def test_verbose_names_the_precision_and_the_first_audio_of_a_stream(home, tmp_path, tts):
    out = tmp_path / "v.wav"
    r = say("Good morning.", "-o", str(out), "-v", "--stream")
    assert r.exit_code == 0, r.stderr
    [precision] = [line for line in r.stderr.splitlines() if "precision" in line]
    assert precision.split(None, 1)[1] == f"bfloat16; {tts.model.kernels}"
    [first] = [line for line in r.stderr.splitlines() if "first audio" in line]
    assert float(first.split()[2]) > 0
    r = say("Good morning.", "-o", str(out), "-v")  # whole: no first-audio line
    assert r.exit_code == 0 and "first audio" not in r.stderr


@pytest.mark.parametrize("seconds", [0.04, 0.2, 1.0, 2.5])
def test_max_seconds_is_seconds_of_audio(tts, steer, seconds):
    # The speech never ends on its own: it stops within one frame of the budget (the
    # delay ramp and the dropped last column are not counted against it).
    steer(10**6)
    speech = tts.say("Good morning to you.", seed=1, max_seconds=seconds)
    assert seconds - 1 / tts.frame_rate < speech.duration <= seconds, speech.duration
    assert speech.stop_reasons == ["max_frames"] and "--max-seconds" in speech.warnings[-1]


def test_max_seconds_spans_the_chunks(tts, steer):
    # Each chunk ends on its own after 30 frames (29 columns of audio); the third is cut
    # where the budget runs out, and the fourth is not spoken.
    steer(30)
    text = "One two three. Four five six. Seven eight nine. Ten eleven twelve."
    speech = tts.say(text, seed=1, max_seconds=2.5, chunk_words=3)
    assert len(speech.chunks) == 3 and speech.stop_reasons == ["eos", "eos", "max_frames"]
    assert 2.5 - 1 / tts.frame_rate < speech.duration <= 2.5
    assert "1 more chunk(s) left unspoken" in speech.warnings[-1]


def test_a_budget_under_one_frame_is_refused_before_anything_loads(home, tmp_path):
    r = CliRunner().invoke(
        cli, ["say", "Hi.", "-o", str(tmp_path / "x.wav"), "--max-seconds", "0.03"]
    )
    assert r.exit_code == 2 and "'--max-seconds': 0.03 is not in the range x>=0.04" in r.stderr
    from higgs_cli.settings import Settings

    with pytest.raises(ValueError, match=r"one frame of audio \(0.04 s\) at least"):
        Settings(max_seconds=0.03)


def test_a_gap_in_the_speaker_tags_gets_a_note(home, tmp_path, steer):
    steer(10)
    out = tmp_path / "x.wav"
    r = CliRunner().invoke(cli, ["say", "[SPEAKER0] One.\n[SPEAKER2] Two.", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "higgs: note: the text never uses SPEAKER1;" in r.stderr


def test_temperature_0_is_seed_free_only_without_ras(tts):
    # The release's RAS redraws a repeated code from the raw softmax even when greedy:
    # --help says so, and how to get a run no seed changes.
    text = "Good morning, how are you today?"

    def codes(seed, ras):
        return tts.say(text, seed=seed, temperature=0, ras_window=ras).codes

    assert np.array_equal(codes(1, 0), codes(2, 0))
    assert not np.array_equal(codes(1, 7), codes(2, 7))
    help_ = " ".join(CliRunner().invoke(cli, ["say", "--help"]).output.split())
    assert "--ras-window 0 for a run no seed changes" in help_


def test_play_without_portaudio_says_which_package_to_install(home, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    r = say("Hi.", "--play", "-o", str(tmp_path / "x.wav"))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "apt install libportaudio2" in r.stderr and "brew install portaudio" in r.stderr


def test_progress_counts_frames_and_audio_over_the_same_span(tts, steer):
    # Both count the whole text: the frames do not start again at each chunk.
    steer(30)
    seen = []
    speech = tts.say("One two three. Four five six.", chunk_words=3, progress=seen.append)
    assert len(speech.chunks) == 2
    frames = [p.text_frames for p in seen]
    assert frames == sorted(frames) and frames[-1] == speech.frames
    assert seen[-1].audio_seconds == pytest.approx(speech.duration)


@pytest.mark.parametrize("streamed", [False, True])
def test_play_with_an_output_file_plays_and_writes_it(home, tmp_path, monkeypatch, streamed):
    # --play -o FILE: the speakers get the speech and the file holds the same samples.
    import sys
    import types

    played = []

    class Stream:
        def __init__(self, samplerate, channels, dtype):
            assert (samplerate, channels, dtype) == (24000, 1, "float32")

        def start(self):
            pass

        def write(self, block):
            played.append(np.array(block[:, 0]))

        def stop(self):
            pass

        def close(self):
            played.append(None)  # closed after the last block

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(OutputStream=Stream))
    out = tmp_path / "played.wav"
    args = ["--stream"] if streamed else []
    r = say(TEXT, "--play", "-o", str(out), "--seed", "3", "--max-seconds", "2", *args)
    assert r.exit_code == 0, r.stderr
    assert played and played[-1] is None and all(b is not None for b in played[:-1])
    heard = np.concatenate(played[:-1])
    data, sr, _ = read_wav(out)
    assert sr == 24000 and len(data) == len(heard) > 0
    assert np.array_equal(data, np.frombuffer(pcm16(heard), "<i2"))
