"""Decode benchmark for higgs-core: the real architecture with random weights.

Builds Higgs Audio v2's language model at its real size (hidden 3072, 24/8
heads, FFN 8192, 8 x 1026 audio rows, 128256 vocab; ``--layers`` of its 28
layers) with random weights, no download, and for each requested precision
prints:

- prefill tokens/s over a prompt of text and reference audio;
- ms per frame, the median of many synced decode steps (model step + sampler),
  and the mean per frame of the pipelined ``generate`` loop;
- the implied real-time factor (ms per frame x 25 / 1000; below 1 is faster
  than real time);
- peak memory;
- the step's ratio to its floor: the bare matmuls of the least a frame must
  read (attention q/k/v/o and one MLP per layer, and the audio head), run
  through the same layers, backend and dtype in the same process.

    uv run python benchmarks/bench_decode.py                     # full size, bf16, q8, q4
    uv run python benchmarks/bench_decode.py --layers 4 --frames 24 --bits 0
    uv run python benchmarks/bench_decode.py --bits 0 --prompt 1024 --stock-attention

``--stock-attention`` (``--stock-swiglu``) runs each precision again with
mlx-lm's attention (MLP activation) where higgs-kernels would take it over: the
before/after of that kernel in one run.

On a Linux CPU without higgs-kernels stock MLX is slow (bf16 matrix-vector at ~2.5 GB/s; quantized
matrix-vector ~8x slower still), so there use ``--layers`` and, for q8/q4, a
short ``--prompt``: a full-size bf16 frame takes ~2.5 s, a q8 one ~20 s.
"""

import argparse

import mlx.core as mx

from higgs_core.bench import run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=28, help="real-size layers (of 28)")
    parser.add_argument("--frames", type=int, default=32, help="timed decode steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=256, help="prompt positions")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--bits", type=int, nargs="+", default=[0, 8, 4], help="0: unquantized")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument(
        "--stock-attention",
        action="store_true",
        help="also run each precision with mlx-lm's attention instead of higgs-kernels'",
    )
    parser.add_argument(
        "--stock-swiglu",
        action="store_true",
        help="also run each precision with mlx-lm's swiglu instead of higgs-kernels'",
    )
    args = parser.parse_args()

    print(f"device {mx.default_device()}, mlx {mx.__version__}")
    for bits in args.bits:
        variants = [{}]
        variants += [{"stock_attention": True}] if args.stock_attention else []
        variants += [{"stock_swiglu": True}] if args.stock_swiglu else []
        for variant in variants:
            figures = run(
                layers=args.layers,
                dtype=getattr(mx, args.dtype),
                bits=bits,
                group_size=args.group_size,
                frames=args.frames,
                warmup=args.warmup,
                prompt_length=args.prompt,
                **variant,
            )
            print("\n" + "\n".join(figures.lines()))
    print()


if __name__ == "__main__":
    main()
