"""`higgs batch` end to end on the tiny fixtures: locally and on a real local Ray cluster,
through the `higgs` entry point."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from click.testing import CliRunner

from higgs_cli.main import cli

GOOD = [
    {"id": "a", "text": "Good morning.", "seed": 1},
    {"id": "b", "text": "How are you today?", "seed": 2, "temperature": 0.5},
    {"id": "c", "text": "Fine, thanks. And you?", "format": "flac", "seed": 3},
    {"id": "d", "text": "A voice of its own.", "voice": "en_man", "seed": 4},
]
BAD = [
    ("not json at all", "not valid JSON"),
    ({"id": "../up", "text": "x"}, "not a safe file name"),
    ({"id": "a", "text": "dup"}, "duplicate id 'a'"),
    ({"id": "e"}, "missing text"),
    ({"id": "f", "text": "Hi.", "voice": "nobody"}, "unknown voice 'nobody'"),
    ({"id": "g", "text": "Hi.", "ref_audio": "BADWAV", "ref_text": "x"}, "bad.wav"),
    ({"id": "h", "text": "Hi.", "top_p": 0}, "top_p"),
    ({"id": "i", "text": "Say <|AUDIO_OUT|> now."}, "control token <|AUDIO_OUT|>"),
    ({"id": "j", "text": "Hi.", "seed": -1}, "seed"),
]


def manifest(tmp_path, rows, name="manifest.jsonl"):
    path = tmp_path / name
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not a wave at all")
    lines = []
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
        else:
            lines.append(json.dumps(row).replace("BADWAV", str(bad)))
    path.write_text("\n".join(lines) + "\n")
    return path


def higgs(*args, env=None, timeout=600):
    """The `higgs` entry point in a process of its own."""
    cmd = [sys.executable, "-m", "higgs_cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def results(outdir):
    return [json.loads(line) for line in (outdir / "results.jsonl").read_text().splitlines()]


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_local_batch_speaks_good_rows_and_reports_bad_ones(home, tmp_path, steer):
    out = tmp_path / "out"
    path = manifest(tmp_path, GOOD + [row for row, _ in BAD])
    r = higgs("batch", path, "-o", out, "--max-seconds", "2", "--max-batch", "3")
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"higgs batch: 4 of {len(GOOD) + len(BAD)} rows spoken, {len(BAD)} failed, 0 already "
        "done; " + r.stderr.strip().splitlines()[-1].split("done; ")[1]
    )
    lines = results(out)
    assert {e["id"] for e in lines if e["error"] is None} == {"a", "b", "c", "d"}
    errors = [e["error"] for e in lines if e["error"] is not None]
    for _, message in BAD:
        assert any(message in e for e in errors), (message, errors)
    for e in lines:
        if e["error"] is None:
            info = sf.info(out / e["output"])
            assert info.samplerate == 24000 and info.frames == round(e["audio_seconds"] * 24000)
            assert e["frames"] > 0 and e["stop"] and e["seconds"] > 0
    assert sf.info(out / "c.flac").format == "FLAC"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_results_keep_one_line_per_row_the_latest_outcome(home, tmp_path, steer):
    # Re-runs of a manifest with bad rows: each row keeps one line (the bad ones their
    # latest error, the finished ones their success); a row mended in place succeeds and
    # its error goes; a duplicate id's error stays beside the first row's success.
    steer(30)
    out = tmp_path / "out"
    rows = GOOD[:2] + [row for row, _ in BAD]
    path = manifest(tmp_path, rows)
    for _ in range(3):
        run("batch", path, "-o", out, "--max-seconds", "1", "-q")
        lines = results(out)
        assert len(lines) == len(rows), [(e["id"], e["line"]) for e in lines]
    assert len({(e["id"], e["line"]) for e in lines}) == len(rows)
    assert sorted(e["id"] for e in lines if e["error"] is None) == ["a", "b"]
    successes = {e["id"]: e for e in lines if e["error"] is None}
    mended = [r if not (isinstance(r, dict) and r.get("id") == "h") else {**r, "top_p": 0.5}
              for r in rows]  # fmt: skip
    manifest(tmp_path, mended)
    run("batch", path, "-o", out, "--max-seconds", "1", "-q")
    lines = results(out)
    assert len(lines) == len(rows)
    assert sorted(e["id"] for e in lines if e["error"] is None) == ["a", "b", "h"]
    assert {e["id"]: e for e in lines if e["id"] in ("a", "b")} == successes  # kept as is
    assert sorted((e["line"], e["error"] or "") for e in lines if e["id"] == "a") == [
        (1, ""),
        (5, "duplicate id 'a'"),
    ]


def test_an_empty_manifest_says_so(home, tmp_path):
    for name in ("rows.jsonl", "rows.csv"):
        (tmp_path / name).write_text("\n  \n")
        r = run("batch", tmp_path / name, "-o", tmp_path / "out")
        assert r.exit_code == 1 and "is empty: it has no rows" in r.stderr, r.stderr


def test_each_row_is_what_higgs_say_makes_of_it(home, tmp_path):
    out = tmp_path / "out"
    path = manifest(tmp_path, GOOD)
    assert run("batch", path, "-o", out, "--max-seconds", "2", "-q").exit_code == 0
    for row in GOOD:
        fmt = row.get("format", "wav")
        alone = tmp_path / f"say-{row['id']}.{fmt}"
        args = ["say", row["text"], "-o", alone, "--seed", row["seed"], "--max-seconds", "2"]
        if "temperature" in row:
            args += ["--temperature", row["temperature"]]
        if "voice" in row:
            args += ["--voice", row["voice"]]
        assert run(*args).exit_code == 0
        assert (out / f"{row['id']}.{fmt}").read_bytes() == alone.read_bytes(), row["id"]


def test_a_killed_run_resumes_where_it_stopped(home, tmp_path, steer):
    rows = [
        {"id": f"r{i:02d}", "text": f"Sentence number {i} of many.", "seed": i} for i in range(14)
    ]
    path = manifest(tmp_path, rows)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "higgs_cli", "batch", str(path), "-o", str(out)]
    cmd += ["--max-batch", "2", "--max-seconds", "3"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "results.jsonl").exists() and len(results(out)) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {e["id"]: e for e in results(out) if e["error"] is None}
    assert 4 <= len(before) < len(rows)
    mtimes = {i: (out / e["output"]).stat().st_mtime_ns for i, e in before.items()}
    # What the kill left is never taken for a finished file.
    leftovers = {p.name for p in out.iterdir()} - {"results.jsonl"}
    assert all(name.startswith(".") or name.removesuffix(".wav") in before for name in leftovers)
    r = higgs("batch", path, "-o", out, "--max-batch", "2", "--max-seconds", "3")
    assert r.returncode == 0, r.stderr
    assert f"{len(before)} already done" in r.stderr
    after = results(out)
    ok = [e["id"] for e in after if e["error"] is None]
    assert sorted(ok) == sorted(set(ok)) == [row["id"] for row in rows]  # each row once
    for i in before:  # finished rows untouched
        assert (out / f"{i}.wav").stat().st_mtime_ns == mtimes[i]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_csv_manifests_and_what_the_command_refuses(home, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text('id,text,seed\nx,"Hello, there.",5\ny,Second line.,6\n')
    out = tmp_path / "out"
    assert run("batch", csv, "-o", out, "--max-seconds", "1").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl", "x.wav", "y.wav"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,words\na,b\n")
    for args, message in [
        ([bad, "-o", out], "needs a header with 'id' and 'text'"),
        ([tmp_path / "none.jsonl", "-o", out], "does not exist"),
        ([csv, "-o", tmp_path / "m.csv" / "sub"], "cannot write into"),
        ([csv, "-o", "s3://bucket/x"], "needs --ray"),
    ]:
        r = run("batch", *args)
        assert r.exit_code != 0 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_ray_is_imported_only_for_ray(home, tmp_path):
    path = manifest(tmp_path, GOOD[:1])
    code = (
        "import sys\n"
        "from higgs_cli.main import cli\n"
        f"try:\n    cli(['batch', {str(path)!r}, '-o', {str(tmp_path / 'o')!r}, '-q'])\n"
        "except SystemExit:\n    pass\n"
        "print('ray' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


def test_ray_without_the_extra_is_one_line(home, tmp_path):
    fake = tmp_path / "no-ray"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    path = manifest(tmp_path, GOOD[:1])
    r = higgs("batch", path, "-o", tmp_path / "o", "--ray", env=env)
    assert r.returncode == 1
    assert r.stderr == (
        "higgs: error: --ray needs the optional 'ray' extra: pip install 'higgs-cli[ray]' "
        "(or uv sync --extra ray)\n"
    )


# A private test cluster: no token to hand around, no usage reports.
RAY_ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster (2 CPUs, no dashboard) for the session; its address."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tmp_path_factory.mktemp("ray")
    start = [ray, "start", "--head", "--num-cpus", "2", "--include-dashboard=false"]
    start += ["--port", str(port), "--temp-dir", str(temp), "--disable-usage-stats"]
    subprocess.run(start, check=True, capture_output=True, env=RAY_ENV, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=RAY_ENV, timeout=120)


def test_ray_batch_matches_the_local_one(home, tmp_path, ray_cluster):
    rows = [*GOOD, {"id": "z", "text": "One more for the other worker.", "seed": 9}]
    path = manifest(tmp_path, [*rows, BAD[3][0], BAD[4][0]])
    local, remote = tmp_path / "local", tmp_path / "ray"
    env = {**RAY_ENV, **os.environ}
    assert run("batch", path, "-o", local, "--max-seconds", "2", "-q").exit_code == 1
    r = higgs(
        "batch",
        path,
        "-o",
        remote,
        "--max-seconds",
        "2",
        "--ray",
        ray_cluster,
        "--workers",
        "2",
        "--max-batch",
        "2",
        env=env,
    )
    assert r.returncode == 1, r.stderr  # the two bad rows
    assert "5 of 7 rows spoken, 2 failed" in r.stderr
    for row in rows:
        fmt = row.get("format", "wav")
        a, b = (
            (local / f"{row['id']}.{fmt}").read_bytes(),
            (remote / f"{row['id']}.{fmt}").read_bytes(),
        )
        assert a == b, row["id"]  # the same audio, whichever actor spoke it
    got = {e["id"]: e for e in results(remote)}
    assert got["e"]["error"] == "missing text" and "unknown voice" in got["f"]["error"]
    # OUTDIR as a pyarrow filesystem URI (file:// here; s3:// alike).
    uri = f"file://{tmp_path / 'by-uri'}"
    small = manifest(tmp_path, rows[:2], "small.jsonl")
    r = higgs("batch", small, "-o", uri, "--ray", ray_cluster, "--max-seconds", "2", env=env)
    assert r.returncode == 0, r.stderr
    # A run that went well says so, and nothing at error level (Ray's core logs
    # "[date time E pid tid]") and no warnings.
    assert not re.search(r"^\[[^\]]* E \d+ \d+\]", r.stderr, re.M), r.stderr
    assert "Warning" not in r.stderr and "higgs: error" not in r.stderr, r.stderr
    assert (tmp_path / "by-uri" / "a.wav").read_bytes() == (local / "a.wav").read_bytes()
    assert {e["id"] for e in results(tmp_path / "by-uri")} == {"a", "b"}
    # Resumable on the cluster too: nothing left to do.
    r = higgs(
        "batch",
        path,
        "-o",
        remote,
        "--ray",
        ray_cluster,
        "--max-seconds",
        "2",
        env=env,
    )
    assert "5 already done" in r.stderr


def test_a_relative_ref_audio_is_taken_from_the_manifests_folder(home, tmp_path, tts, monkeypatch):
    # The manifest and its recordings move together; where the command runs from is
    # not where they are.
    import numpy as np

    folder = tmp_path / "job"
    (folder / "refs").mkdir(parents=True)
    t = np.arange(24000) / 24000
    sf.write(folder / "refs" / "me.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 24000)
    row = {"id": "r", "text": "Hello.", "seed": 2, "ref_audio": "refs/me.wav", "ref_text": "A hum."}
    (folder / "rows.jsonl").write_text(json.dumps(row) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = CliRunner().invoke(cli, ["batch", str(folder / "rows.jsonl"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    [entry] = results(tmp_path / "out")
    assert entry["error"] is None, entry
    got, _ = sf.read(tmp_path / "out" / "r.wav", dtype="int16")
    want = tts.say("Hello.", seed=2, refs=[(folder / "refs" / "me.wav", "A hum.")])
    from higgs_cli.output import pcm16

    assert got.tobytes() == pcm16(want.samples)
