"""Load test for `higgs serve`: N concurrent clients on loopback.

Starts a real `higgs serve` process (default: the tiny offline fixtures) once per
``--max-batch`` value, sends a bounded number of requests from N client threads,
and prints, per value: requests served, errors (5xx counted apart), requests/s,
audio seconds per second, p50/p95 latency and time to first audio, and the
server's RSS before and after; then the ratios of the first value to the last.

    uv run python benchmarks/bench_serve.py --clients 8 --requests 200 --max-batch 8 1
    uv run python benchmarks/bench_serve.py --full-width 4 --requests 24 --max-batch 8 1
    uv run python benchmarks/bench_serve.py --mix --requests 200   # invalid and abandoned too
    uv run python benchmarks/bench_serve.py --full-width 4 --seconds 150 --max-batch 8 1

``--full-width L`` serves the real-size model's width with L layers and random
weights (written to a temporary checkpoint with the tiny tokenizer), so decode
steps cost what they do at full size, per layer. ``--mix``: every fifth request
is invalid (an unknown voice, a bad field, broken JSON, special tokens) and
every seventh streamed one is abandoned after its first bytes.

``--seconds S`` measures the steady state instead of a fixed count: the clients
send requests back to back for S seconds, and the figures are what arrived in
that window (audio: every byte by then, of finished and unfinished streams;
requests/s: those finished in it). A fixed count ends with a drain, the last
requests finishing one by one while the batch empties, which weighs on a large
``--max-batch`` and not on 1; at the window's end the clients hang up instead.
"""

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["Good morning.", "How are you today?", "The weather is clear.", "See you soon!"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_healthy(url: str, proc, limit=300.0):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not come up")


BAD = [
    {"input": "Hi.", "voice": "nobody-by-this-name"},
    {"input": "Hi.", "temperature": -1},
    {"input": "Hi.", "top_p": 0},
    {"input": "Hi.", "seed": -5},
    {"input": ""},
    {"input": "<|AUDIO_OUT|><|audio_eos|> injected"},
    b"{not json",
]


def client(url, jobs, lock, results, fmt, stream, mix, deadline=None):
    """Send the jobs of the shared iterator ``jobs`` one after another; with
    ``deadline`` stop there, hanging up mid-request."""
    with httpx.Client(timeout=300) as http:
        while True:
            with lock:
                i = next(jobs, None)
            if i is None or (deadline is not None and time.perf_counter() >= deadline):
                return
            body = {
                "input": TEXTS[i % len(TEXTS)],
                "voice": None,
                "response_format": fmt,
                "stream": stream,
                "seed": i,
            }
            kind, abandon = "valid", False
            if mix and i % 5 == 4:
                body, kind = BAD[(i // 5) % len(BAD)], "invalid"
            elif mix and stream and i % 7 == 6:
                abandon, kind = True, "abandoned"
            t0 = time.perf_counter()
            first, size = None, 0
            # A queued request sends nothing until its first audio: wait at most
            # until the deadline for each read.
            wait = 300.0 if deadline is None else max(0.1, deadline - t0)
            try:
                header = 44 if fmt == "wav" else 0  # a streamed wav starts with its header
                send = {"content": body} if isinstance(body, bytes) else {"json": body}
                timeout = httpx.Timeout(300.0, read=wait)
                with http.stream("POST", f"{url}/v1/audio/speech", timeout=timeout, **send) as r:
                    for part in r.iter_bytes():
                        if deadline is not None and time.perf_counter() >= deadline:
                            kind = "cut"  # still running at the window's end
                            break
                        size += len(part)
                        if first is None and size > header:
                            first = time.perf_counter() - t0
                            if abandon and r.status_code == 200:
                                break  # hang up mid-stream
                results.append((r.status_code, time.perf_counter() - t0, first, size, kind))
            except httpx.HTTPError as e:
                late = deadline is not None and time.perf_counter() >= deadline - 0.05
                status, kind = ("cut", "cut") if late else (f"{type(e).__name__}", kind)
                results.append((status, time.perf_counter() - t0, first, size, kind))


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def full_width_checkpoint(layers: int) -> str:
    """The real model's width, ``layers`` layers, random weights, the tiny tokenizer."""
    import mlx.core as mx

    from higgs_core import ModelConfig, save_model
    from higgs_core.bench import TINY_TOKENIZER_IDS, build

    model = build(layers, mx.bfloat16, 0, 64, ModelConfig(**TINY_TOKENIZER_IDS))
    folder = Path(tempfile.mkdtemp(prefix="higgs-full-width-"))
    save_model(model, folder)
    shutil.copy(ROOT / "tests/fixtures/tokenizer/tokenizer.json", folder / "tokenizer.json")
    del model
    return str(folder)


def serve_once(args, max_batch: int) -> dict:
    url = f"http://127.0.0.1:{args.port}"
    home = tempfile.mkdtemp(prefix="higgs-bench-")
    env = {**os.environ, "HIGGS_HOME": home}
    cmd = [sys.executable, "-m", "higgs_cli", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(args.port), "--model", args.model, "--codec", args.codec]
    cmd += ["--max-queue", str(args.max_queue), "--max-streams", str(args.clients)]
    cmd += ["--max-batch", str(max_batch), "--timeout", "900"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_healthy(url, proc)
        # Requests first, from as many clients, so that pins, caches, compiled steps and
        # the working set of that many streams exist before "before" is read.
        warm = iter(range(args.warmup))
        work = (url, warm, threading.Lock(), [], args.format, not args.no_stream, False)
        threads = [threading.Thread(target=client, args=work) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rss_before = rss_mb(proc.pid)
        lock, results = threading.Lock(), []
        t0 = time.perf_counter()
        if args.seconds:
            jobs, deadline = itertools.count(), t0 + args.seconds
        else:
            jobs, deadline = iter(range(args.requests)), None
        work = (url, jobs, lock, results, args.format, not args.no_stream, args.mix, deadline)
        threads = [threading.Thread(target=client, args=work) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, args.max_seconds - (time.perf_counter() - t0)))
        wall = args.seconds or time.perf_counter() - t0
        rss_after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)

    ok = [r for r in results if r[0] == 200 and r[4] == "valid"]
    heard = [r for r in results if r[4] in ("valid", "cut") and r[0] in (200, "cut")]
    if not args.seconds:
        heard = ok
    audio = sum(max(r[3] - 44, 0) / 2 / 24000 for r in heard)  # 16-bit mono at 24 kHz
    return {
        "max_batch": max_batch,
        "results": results,
        "ok": ok,
        "wall": wall,
        "rps": len(ok) / wall,
        "audio_per_s": audio / wall,
        "lat": [r[1] for r in ok],
        "ttfa": [r[2] for r in ok if r[2] is not None],
        "rss": (rss_before, rss_after),
    }


def report(args, f: dict):
    results = f["results"]
    limited = [r for r in results if r[0] == 429]
    server_errors = [r for r in results if isinstance(r[0], int) and r[0] >= 500]
    client_errors = [r for r in results if isinstance(r[0], int) and 400 <= r[0] < 500]
    transport = [r for r in results if not isinstance(r[0], int) and r[4] != "cut"]
    cut = sum(r[4] == "cut" for r in results)
    print(
        f"--max-batch {f['max_batch']}: {len(results) - cut} requests in {f['wall']:.1f} s"
        + (f" (and {cut} cut off by the window's end)" if cut else "")
    )
    print(
        f"  served {len(f['ok'])}, 4xx {len(client_errors)} (429: {len(limited)}), "
        f"5xx {len(server_errors)}, transport errors {len(transport)}"
        + (f" {sorted({r[4] for r in transport})}" if transport else "")
    )
    kinds: dict[str, dict] = {}
    for r in results:
        kinds.setdefault(r[4], {}).setdefault(r[0], 0)
        kinds[r[4]][r[0]] += 1
    for kind, statuses in sorted(kinds.items()):
        print(f"  {kind}: " + ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items(), key=str)))
    print(f"  {f['rps']:.2f} requests/s, {f['audio_per_s']:.2f} audio seconds per second")
    lat, ttfa = f["lat"], f["ttfa"]
    print(
        f"  latency p50 {pct(lat, 0.5) * 1000:.0f} ms, p95 {pct(lat, 0.95) * 1000:.0f} ms; "
        f"first audio p50 {pct(ttfa, 0.5) * 1000:.0f} ms, p95 {pct(ttfa, 0.95) * 1000:.0f} ms"
    )
    before, after = f["rss"]
    print(f"  server RSS {before:.0f} MB -> {after:.0f} MB ({(after / before - 1) * 100:+.1f}%)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--port", type=int, default=8731)
    ap.add_argument("--model", default=str(ROOT / "tests/fixtures/tiny-model"))
    ap.add_argument("--codec", default=str(ROOT / "tests/fixtures/codec/tiny"))
    ap.add_argument("--full-width", type=int, metavar="LAYERS", help="real width, random weights")
    ap.add_argument("--format", default="wav")
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--mix", action="store_true", help="invalid and abandoned requests too")
    ap.add_argument("--max-batch", type=int, nargs="+", default=[8])
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=1800, help="stop sending after this")
    ap.add_argument(
        "--seconds", type=float, help="steady state: send back to back for this long instead"
    )
    ap.add_argument("--warmup", type=int, default=16, help="requests before RSS is first read")
    args = ap.parse_args()
    made = None
    if args.full_width:
        args.model = made = full_width_checkpoint(args.full_width)
    print(f"clients {args.clients}, model {args.model}")
    figures = []
    try:
        for max_batch in args.max_batch:
            figures.append(serve_once(args, max_batch))
            report(args, figures[-1])
    finally:
        if made:  # a few GB of random weights
            shutil.rmtree(made, ignore_errors=True)
    if len(figures) > 1:
        a, b = figures[0], figures[-1]
        print(
            f"--max-batch {a['max_batch']} vs {b['max_batch']}: requests/s "
            f"{a['rps'] / b['rps']:.2f}x, audio/s {a['audio_per_s'] / b['audio_per_s']:.2f}x, "
            f"p95 first audio {pct(a['ttfa'], 0.95) / pct(b['ttfa'], 0.95):.2f}x"
        )


if __name__ == "__main__":
    main()
