"""The stall a running stream sees while a newcomer's prompt is prefilled.

A ``higgs_core.Batch`` runs ``--running`` streams; once they are decoding, a
newcomer with a ``--prompt``-position prompt (nothing of it cached, as a voice's
first request or an uploaded reference) is submitted. Per join chunk (the
positions prefilled per step while others run: offline batches use 512, `higgs
serve` 64) it prints the running streams' longest gap between two frames while
the newcomer joins, against their median step without one, and how long the
newcomer took to join.

    uv run python benchmarks/bench_join.py                     # 4 real-size layers
    uv run python benchmarks/bench_join.py --layers 28 --prompt 300

Random weights at the real width; the figures scale with the layer count.
"""

import argparse
import statistics
import time

import mlx.core as mx
import numpy as np

from higgs_core.batch import Batch
from higgs_core.bench import PARAMS, build, prompt


def join(model, prompts, newcomer, join_chunk: int):
    batch = Batch(model, max_batch=len(prompts) + 1, join_chunk=join_chunk)
    running = [
        batch.submit(ids, audio, params=PARAMS, max_frames=10_000, seed=i)
        for i, (ids, audio) in enumerate(prompts)
    ]
    while batch.waiting or len(running[0].frames) < 4:  # all in and decoding
        batch.step()
    gaps = []
    for _ in range(4):  # steps with nobody joining
        t = time.perf_counter()
        batch.step()
        gaps.append(time.perf_counter() - t)
    new = batch.submit(*newcomer, params=PARAMS, max_frames=10_000, seed=99)
    t0 = last = time.perf_counter()
    worst = 0.0
    count = len(running[0].frames)
    while not new.frames:
        batch.step()
        if len(running[0].frames) > count:
            now = time.perf_counter()
            worst, last, count = max(worst, now - last), now, len(running[0].frames)
    joined = time.perf_counter() - t0
    for s in [*running, new]:
        s.cancel()
    batch.run()
    return statistics.median(gaps), worst, joined


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--running", type=int, default=4, help="streams decoding")
    ap.add_argument("--prompt", type=int, default=512, help="the newcomer's prompt positions")
    ap.add_argument("--chunks", type=int, nargs="+", default=[512, 64])
    args = ap.parse_args()
    model = build(args.layers, mx.bfloat16, 0, 64)
    rng = np.random.default_rng(0)
    prompts = [prompt(48 + 8 * i, model.config, rng) for i in range(args.running)]
    newcomer = prompt(args.prompt, model.config, rng)
    print(
        f"{args.layers}/28 layers, bf16, {args.running} streams running, "
        f"a newcomer of {args.prompt} positions"
    )
    join(model, prompts, newcomer, args.chunks[0])  # warm up
    for chunk in args.chunks:
        step, worst, joined = join(model, prompts, newcomer, chunk)
        print(
            f"  join chunk {chunk:4d}: longest wait for a frame {worst:6.2f} s "
            f"({worst / step:5.1f}x the {step * 1e3:.0f} ms step); newcomer in after {joined:.2f} s"
        )


if __name__ == "__main__":
    main()
