"""Bulk synthesis speed: `higgs batch` against speaking the rows one by one.

    uv run python benchmarks/bench_batch.py [--rows 32] [--max-batch 8]

On the tiny offline fixtures (default), the real model's width with a few layers
(``--full-width L``: random weights, see bench_serve.py) or a given
--model/--codec, the same manifest of one-sentence rows is spoken:

- say, row by row: one process, the model loaded once, ``Higgs.say`` per row;
- say, a process per row: what a shell loop over ``higgs say`` costs (the first
  few rows, extrapolated);
- ``higgs batch``, locally: rows decoded together, ``--max-batch`` at a time;
- ``higgs batch --ray`` on a local Ray cluster with 1 and with 2 actors.

For each: rows/s and audio seconds per second (wall time, model loading
included; for the in-process runs the load is timed apart), and the ratio to
row-by-row say.
"""

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "Good morning, and welcome.",
    "The weather today is clear and mild.",
    "Please remember to bring your ticket.",
    "We will begin again in five minutes.",
]


def audio_seconds(folder: Path) -> float:
    return sum(sf.info(p).duration for p in folder.glob("*.wav"))


def higgs(*args, env):
    cmd = [sys.executable, "-m", "higgs_cli", *map(str, args)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=3.0, help="per row")
    ap.add_argument("--model", default=str(ROOT / "tests/fixtures/tiny-model"))
    ap.add_argument("--codec", default=str(ROOT / "tests/fixtures/codec/tiny"))
    ap.add_argument("--shell-rows", type=int, default=4, help="rows timed as separate processes")
    ap.add_argument("--full-width", type=int, metavar="LAYERS", help="real width, random weights")
    args = ap.parse_args()
    if args.full_width:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_serve import full_width_checkpoint

        args.model = full_width_checkpoint(args.full_width)
        atexit.register(shutil.rmtree, args.model, ignore_errors=True)  # GBs of random weights

    work = Path(tempfile.mkdtemp(prefix="higgs-bench-batch-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    env = {
        **os.environ,
        "HIGGS_HOME": str(work / "home"),
        "HIGGS_MODEL": args.model,
        "HIGGS_CODEC": args.codec,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    os.environ.update(env)
    rows = [{"id": f"r{i:03d}", "text": TEXTS[i % len(TEXTS)], "seed": i} for i in range(args.rows)]
    manifest = work / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = []

    from higgs_cli.pipeline import Higgs

    t0 = time.perf_counter()
    tts = Higgs.from_pretrained(args.model, args.codec)
    load = time.perf_counter() - t0
    out = work / "say"
    out.mkdir()
    from higgs_cli.output import write_clip

    t0 = time.perf_counter()
    for r in rows:
        speech = tts.say(r["text"], seed=r["seed"], max_seconds=args.max_seconds)
        write_clip(str(out / f"{r['id']}.wav"), speech.samples, speech.sample_rate, "wav")
    wall = time.perf_counter() - t0
    figures.append(("say, row by row (1 process)", wall + load, audio_seconds(out), load))

    shell = work / "shell"
    shell.mkdir()
    t0 = time.perf_counter()
    for r in rows[: args.shell_rows]:
        higgs(
            "say",
            r["text"],
            "-o",
            shell / f"{r['id']}.wav",
            "--seed",
            r["seed"],
            "--max-seconds",
            args.max_seconds,
            "-q",
            env=env,
        )
    per_row = (time.perf_counter() - t0) / args.shell_rows
    per_audio = audio_seconds(shell) / args.shell_rows
    figures.append(("say, a process per row", per_row * len(rows), per_audio * len(rows), None))

    from higgs_cli.batch import Defaults, Results, Tally, read_manifest, run_local
    from higgs_cli.settings import Settings

    out = work / "batch"
    out.mkdir()
    todo = read_manifest(manifest, Defaults(Settings(max_seconds=args.max_seconds)))
    t0 = time.perf_counter()
    run_local(tts, todo, out, Results(out), Tally(len(todo)), max_batch=args.max_batch)
    wall = time.perf_counter() - t0
    figures.append(
        (
            f"higgs batch, local (--max-batch {args.max_batch})",
            wall + load,
            audio_seconds(out),
            load,
        )
    )
    del tts

    for workers in (1, 2):
        out = work / f"ray{workers}"
        wall = higgs(
            "batch",
            manifest,
            "-o",
            out,
            "--ray",
            "--workers",
            workers,
            "--max-batch",
            args.max_batch,
            "--max-seconds",
            args.max_seconds,
            "-q",
            env=env,
        )
        figures.append((f"higgs batch --ray, {workers} actor(s)", wall, audio_seconds(out), None))

    base = figures[0][1]
    print(f"{len(rows)} rows on {args.model}")
    print(f"{'':40} {'wall s':>8} {'rows/s':>8} {'audio s/s':>10} {'vs say':>7}")
    for name, wall, audio, load in figures:
        note = f"  (model load {load:.1f} s included)" if load else ""
        print(
            f"{name:40} {wall:8.1f} {len(rows) / wall:8.2f} {audio / wall:10.2f} "
            f"{base / wall:6.2f}x{note}"
        )


if __name__ == "__main__":
    main()
