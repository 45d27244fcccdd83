"""Load test for `higgs serve`: N concurrent clients on loopback.

Starts a real `higgs serve` process (default: the tiny offline fixtures), sends
a bounded number of requests from N client threads, and prints requests served,
errors, p50/p95 latency, p50/p95 time to first audio, and the server's RSS
before and after.

    uv run python benchmarks/bench_serve.py --clients 8 --requests 200
"""

import argparse
import os
import statistics
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


def client(url, jobs, lock, results, fmt, stream):
    with httpx.Client(timeout=120) as http:
        while True:
            with lock:
                if not jobs:
                    return
                i = jobs.pop()
            body = {
                "input": TEXTS[i % len(TEXTS)],
                "voice": None,
                "response_format": fmt,
                "stream": stream,
                "seed": i,
            }
            t0 = time.perf_counter()
            first = None
            try:
                header = 44 if fmt == "wav" else 0  # a streamed wav starts with its header
                with http.stream("POST", f"{url}/v1/audio/speech", json=body) as r:
                    size = 0
                    for part in r.iter_bytes():
                        size += len(part)
                        if first is None and size > header:
                            first = time.perf_counter() - t0
                results.append((r.status_code, time.perf_counter() - t0, first, size))
            except httpx.HTTPError as e:
                results.append((f"{type(e).__name__}", time.perf_counter() - t0, None, 0))


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--port", type=int, default=8731)
    ap.add_argument("--model", default=str(ROOT / "tests/fixtures/tiny-model"))
    ap.add_argument("--codec", default=str(ROOT / "tests/fixtures/codec/tiny"))
    ap.add_argument("--format", default="wav")
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=600, help="stop sending after this")
    ap.add_argument("--warmup", type=int, default=32, help="requests before RSS is first read")
    args = ap.parse_args()

    url = f"http://127.0.0.1:{args.port}"
    home = tempfile.mkdtemp(prefix="higgs-bench-")
    env = {**os.environ, "HIGGS_HOME": home}
    cmd = [
        sys.executable,
        "-m",
        "higgs_cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--model",
        args.model,
        "--codec",
        args.codec,
        "--max-queue",
        str(args.max_queue),
        "--max-streams",
        str(args.clients),
    ]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_healthy(url, proc)
        # One request first so pins and caches exist before "before" is read.
        httpx.post(
            f"{url}/v1/audio/speech",
            json={"input": "Warm up.", "response_format": "wav"},
            timeout=300,
        )
        rss_before = rss_mb(proc.pid)
        jobs, lock, results = list(range(args.requests)), threading.Lock(), []
        threads = [
            threading.Thread(
                target=client, args=(url, jobs, lock, results, args.format, not args.no_stream)
            )
            for _ in range(args.clients)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, args.max_seconds - (time.perf_counter() - t0)))
        wall = time.perf_counter() - t0
        rss_after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    ok = [r for r in results if r[0] == 200]
    limited = [r for r in results if r[0] == 429]
    errors = [r for r in results if r[0] not in (200, 429)]
    lat = [r[1] for r in ok]
    ttfa = [r[2] for r in ok if r[2] is not None]
    print(f"clients {args.clients}, requests {len(results)} in {wall:.1f} s")
    kinds = sorted({str(e[0]) for e in errors})
    print(f"served {len(ok)}, 429 {len(limited)}, errors {len(errors)} {kinds}")
    print(f"latency p50 {pct(lat, 0.5) * 1000:.0f} ms, p95 {pct(lat, 0.95) * 1000:.0f} ms")
    print(f"first audio p50 {pct(ttfa, 0.5) * 1000:.0f} ms, p95 {pct(ttfa, 0.95) * 1000:.0f} ms")
    print(
        f"server RSS {rss_before:.0f} MB -> {rss_after:.0f} MB "
        f"({(rss_after / rss_before - 1) * 100:+.1f}%)"
    )
    if lat:
        print(f"mean latency {statistics.mean(lat) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
