"""How closely a batched row follows its single-stream run, per precision.

The batch contract: each row of ``higgs_core.Batch`` makes the frames the same
prompt and seed make alone. On higgs-kernels every row of a linear layer sums in
one order whatever the call's row count, so it holds exactly in float32, bf16,
q8 and q4 (``tests/higgs_core/test_batch.py`` asserts it). Elsewhere (stock MLX
on Metal, CUDA, or the CPU without the kernels) a call with more rows may take
another matmul path and round differently; this script measures what that does
to the codes wherever it runs.

For each precision: B rows with prompts of different lengths (so their caches
differ) and their own seeds, decoded together, then each alone. Per row: the
frames made before its first differing code, and the share of equal codes over
the frames both made. Greedy (temperature 0) and sampled (temperature 0.7,
top-k 50, top-p 0.95) in turn.

    uv run python benchmarks/bench_agreement.py                  # 4 layers, 32 frames
    uv run python benchmarks/bench_agreement.py --layers 28 --frames 48
    uv run python benchmarks/bench_agreement.py --join-chunk 64  # as `higgs serve` joins

``--join-chunk N``: newcomers' prompts go in N positions a step while other rows run
(`higgs serve` does this, with 64, so that running streams stall less); a prompt then
splits otherwise than alone, and in 16-bit weights its rows may round apart.

The weights are random (real width, ``--layers`` of 28): their logits are far
flatter than a trained model's, so a rounding flips an argmax or a sample far
more often than it would there. Read the figures as a worst case.
"""

import argparse

import mlx.core as mx
import numpy as np

from higgs_core.batch import Batch
from higgs_core.bench import PARAMS, build, prompt
from higgs_sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, ras_window=0)


def frames_of(model, prompts, params, seeds, frames, max_batch, join_chunk=None):
    batch = Batch(model, max_batch=max_batch, join_chunk=join_chunk)
    streams = [
        batch.submit(ids, audio, params=params, max_frames=frames, seed=seed)
        for (ids, audio), seed in zip(prompts, seeds, strict=True)
    ]
    batch.run()
    return [np.array(s.result.frames) for s in streams]  # [K, F] each


def compare(together, alone):
    """Frames before the first difference, and the share of equal codes."""
    n = min(together.shape[1], alone.shape[1])
    same = together[:, :n] == alone[:, :n]
    differ = np.flatnonzero(~same.all(axis=0))
    first = int(differ[0]) if differ.size else n
    return first, n, float(same.mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64, help="the shortest row's prompt")
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 16, 8, 4], help="32/16: float")
    ap.add_argument("--join-chunk", type=int, help="positions a step while rows run")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cfg = build(1, mx.float32, 0, 64).config
    prompts = [prompt(args.prompt + 8 * b, cfg, rng) for b in range(args.rows)]
    seeds = list(range(args.rows))
    print(f"{args.rows} rows (prompts of {args.prompt}..{args.prompt + 8 * (args.rows - 1)}), ")
    joins = f"joining {args.join_chunk} positions a step" if args.join_chunk else "whole chunks"
    print(f"{args.frames} frames, {args.layers}/28 layers, random weights, {joins}")
    print(" weights   sampling   rows identical   frames before a difference   equal codes")
    for bits in args.bits:
        dtype = mx.float32 if bits == 32 else mx.bfloat16
        model = build(args.layers, dtype, bits if bits < 16 else 0, 64)
        label = {32: "float32", 16: "bf16"}.get(bits, f"q{bits}")
        for name, params in (("greedy", GREEDY), ("sampled", PARAMS)):
            together = frames_of(
                model, prompts, params, seeds, args.frames, args.rows, args.join_chunk
            )
            alone = [
                frames_of(model, [p], params, [s], args.frames, 1)[0]
                for p, s in zip(prompts, seeds, strict=True)
            ]
            stats = [compare(t, a) for t, a in zip(together, alone, strict=True)]
            identical = sum(first == n for first, n, _ in stats)
            firsts = sorted(first for first, _, _ in stats)
            equal = np.mean([share for _, _, share in stats])
            print(
                f" {label:8s}  {name:8s}   {identical}/{args.rows:<13d}  "
                f"min {firsts[0]:3d}, median {firsts[len(firsts) // 2]:3d}          "
                f"{100 * equal:5.1f}%"
            )
        del model
        mx.clear_cache()


if __name__ == "__main__":
    main()
