"""Higgs Audio v2's linear layers and attention on MLX's CPU: higgs-kernels vs
stock MLX vs the memory-bandwidth floor, all measured in one run.

    uv run python benchmarks/bench_kernels.py                     # everything (~6 minutes)
    uv run python benchmarks/bench_kernels.py --quick             # fewer repeats, no stock prefill
    uv run python benchmarks/bench_kernels.py --part attention    # attention only (~1 minute)
    uv run python benchmarks/bench_kernels.py --part batch        # a few rows at once (~2 minutes)

Per real layer shape (hidden 3072; q/o 3072x3072, k/v 1024x3072, gate/up
8192x3072, down 3072x8192, audio head 8208x3072) and per weight format (bf16,
MLX affine q8 and q4 with groups of 64): ms per call for one bf16 activation row,
and GB/s of weight bytes read. Each shape cycles through enough copies of its
weights (>= 256 MB) that they come from memory, not the 32 MB cache, and many
calls share one mx.eval as a decode step's layers do.

The frame estimate adds up 28 x (q, k, v, o, gate, up, down) + the audio head
from the per-call figures; the floor is the bytes a frame must read divided by
the best read bandwidth measured here with every thread (probed again before
each format, the best kept). A chained frame (28 layers
of dependent calls cycling through 4 distinct layers' weights, one eval) checks
the estimate. Prefill: GFLOP/s of 512-row matmuls, kernels vs stock.

Attention (bf16, 24 query heads over 8 key/value heads, head_dim 128): a decode
step's 28 layers over 300, 1500 and 4000 cached positions, their keys and values
views of larger cache buffers as mlx-lm's KVCache hands them over, one eval per
step: us per layer, GB/s of K/V read, against stock
``mx.fast.scaled_dot_product_attention`` and the read floor; and causal prefill of
512 queries over 512 and 1500 keys (a prompt chunk over a cache): ms per layer
and GFLOP/s (counting only the unmasked scores), kernels vs stock.

Batch (``--part batch``): one layer's q, k, gate and down shapes with 1, 2, 4, 8,
16, 32 and 64 rows of bf16 activations per call (a batched decode step's rows;
``--rows`` and ``--formats`` choose), per weight format: ms for the four calls, and
throughput (rows per ms) as a multiple of the one-row figure, the row counts
interleaved within each repeat.

Figures are medians of repeats; the machine may be shared, so compare ratios
taken within the run.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # idle BLAS threads steal a core

import mlx.core as mx

import higgs_kernels as hk

HIDDEN, KV, INTER, HEAD, LAYERS = 3072, 1024, 8192, 8 * 1026, 28
HEADS, KV_HEADS, HEAD_DIM = 24, 8, 128
SHAPES = {  # name: (N, K, calls per layer)
    "q": (HIDDEN, HIDDEN, 1),
    "k/v": (KV, HIDDEN, 2),
    "o": (HIDDEN, HIDDEN, 1),
    "gate/up": (INTER, HIDDEN, 2),
    "down": (HIDDEN, INTER, 1),
    "head": (HEAD, HIDDEN, 0),
}
FORMATS = ["bf16", "q8", "q4"]
BATCH_ROWS = (1, 2, 4, 8, 16, 32, 64)
GROUP = 64


def make_weight(n, k, fmt, key):
    w = (mx.random.normal((n, k), key=key) * 0.02).astype(mx.bfloat16)
    if fmt == "bf16":
        return (w,)
    return mx.quantize(w, group_size=GROUP, bits=int(fmt[1:]))


def nbytes(weight):
    return sum(a.nbytes for a in weight)


def apply(x, weight, fmt, kernels):
    if fmt == "bf16":
        return hk.linear(x, weight[0]) if kernels else x @ weight[0].T
    bits = int(fmt[1:])
    if kernels:
        return hk.quantized_linear(x, *weight, group_size=GROUP, bits=bits)
    return mx.quantized_matmul(x, *weight, group_size=GROUP, bits=bits)


def timed(fn, repeats):
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_call_ms(weights, fmt, kernels, repeats, rows=1):
    k = weights[0][0].shape[1]
    if fmt != "bf16":
        k = k * 32 // int(fmt[1:])
    x = mx.random.normal((rows, k)).astype(mx.bfloat16)
    mx.eval(x)

    def run():
        mx.eval([apply(x, w, fmt, kernels) for w in weights])

    return timed(run, repeats) / len(weights) * 1e3


def read_bandwidth(repeats):
    """The best of several all-thread reads of 512 MB: a floor must not be beaten."""
    buf = mx.zeros((512 << 20) // 4, dtype=mx.uint32)
    mx.eval(buf)
    seconds = min(hk._ext.read_seconds(buf) for _ in range(repeats))
    return buf.nbytes / seconds / 1e9


def chained_frame_ms(fmt, repeats, distinct=4):
    keys = iter(mx.random.split(mx.random.key(1), 8 * distinct + 1))
    layers = [
        {name: make_weight(n, k, fmt, next(keys)) for name, (n, k, _) in SHAPES.items() if _}
        for _ in range(distinct)
    ]
    layers = [{**layer, "v": make_weight(KV, HIDDEN, fmt, next(keys))} for layer in layers]
    head = make_weight(HEAD, HIDDEN, fmt, next(keys))
    mx.eval(layers, head)
    x0 = mx.random.normal((1, HIDDEN)).astype(mx.bfloat16)

    def frame():
        x = x0
        for i in range(LAYERS):
            p = layers[i % distinct]
            q = apply(x, p["q"], fmt, True)
            k = apply(x, p["k/v"], fmt, True)
            v = apply(x, p["v"], fmt, True)
            attn = q[:, :KV] * k + v  # stands in for attention: depends on q, k, v
            x = x + apply(mx.concatenate([attn, q[:, KV:]], axis=-1), p["o"], fmt, True)
            g = apply(x, p["gate/up"], fmt, True)
            u = apply(x, p["gate/up"], fmt, True)
            x = x + apply(g * u, p["down"], fmt, True) * 0.01
        mx.eval(apply(x, head, fmt, True))

    return timed(frame, repeats) * 1e3


def attention_decode(cached, repeats):
    """us per layer for a step's 28 layers over `cached` positions, kernels and stock."""
    capacity = (cached // 256 + 1) * 256  # KVCache grows in steps of 256
    keys = iter(mx.random.split(mx.random.key(cached), 3 * LAYERS))
    layers = []
    for _ in range(LAYERS):
        q = mx.random.normal((1, HEADS, 1, HEAD_DIM), key=next(keys)).astype(mx.bfloat16)
        k, v = (
            mx.random.normal((1, KV_HEADS, capacity, HEAD_DIM), key=next(keys)).astype(mx.bfloat16)
            for _ in range(2)
        )
        layers.append((q, k[:, :, :cached], v[:, :, :cached]))
    mx.eval(layers)
    scale = HEAD_DIM**-0.5

    def ours():
        mx.eval([hk.attention(q, k, v, scale=scale) for q, k, v in layers])

    def stock():
        mx.eval([mx.fast.scaled_dot_product_attention(q, k, v, scale=scale) for q, k, v in layers])

    per_layer = 1e6 / LAYERS
    return timed(ours, repeats) * per_layer, timed(stock, max(1, repeats // 3)) * per_layer


def attention_prefill(queries, keys, repeats, with_stock):
    """ms for one layer's causal attention of `queries` over `keys` positions."""
    k1, k2, k3 = mx.random.split(mx.random.key(queries + keys), 3)
    q = mx.random.normal((1, HEADS, queries, HEAD_DIM), key=k1).astype(mx.bfloat16)
    k = mx.random.normal((1, KV_HEADS, keys, HEAD_DIM), key=k2).astype(mx.bfloat16)
    v = mx.random.normal((1, KV_HEADS, keys, HEAD_DIM), key=k3).astype(mx.bfloat16)
    mx.eval(q, k, v)
    scale = HEAD_DIM**-0.5
    ours = timed(lambda: mx.eval(hk.attention(q, k, v, scale=scale, causal=True)), repeats)
    stock = None
    if with_stock:
        stock = timed(
            lambda: mx.eval(
                mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
            ),
            1,
        )
    return ours * 1e3, stock * 1e3 if stock else None


def attention_figures(bw, repeats, with_stock):
    print("attention, bf16, 24 query heads / 8 kv heads, head_dim 128:")
    print(
        f"{'decode over':>14} {'K/V MB':>7} {'kernels us':>11} {'GB/s':>6} {'stock us':>9} "
        f"{'speedup':>8} {'floor us':>9} {'of floor':>8} {'per frame':>10}"
    )
    for cached in (300, 1500, 4000):
        size = 2 * KV_HEADS * cached * HEAD_DIM * 2
        ours, stock = attention_decode(cached, repeats)
        floor = size / bw / 1e3
        print(
            f"{cached:>10} pos {size / 1e6:7.2f} {ours:11.1f} {size / ours / 1e3:6.1f} "
            f"{stock:9.1f} {stock / ours:7.1f}x {floor:9.1f} {floor / ours:7.0%} "
            f"{ours * LAYERS / 1e3:7.2f} ms"
        )
    for queries, keys in ((512, 512), (512, 1500)):
        # Query i sees keys j <= keys - queries + i: only those scores count.
        seen = sum(keys - queries + i + 1 for i in range(queries))
        flops = 4 * HEADS * HEAD_DIM * seen
        ours, stock = attention_prefill(queries, keys, repeats, with_stock)
        line = (
            f"  causal prefill {queries} x {keys}: kernels {ours:7.1f} ms/layer "
            f"({flops / ours / 1e6:5.1f} GFLOP/s)"
        )
        if stock:
            line += (
                f", stock {stock:7.1f} ms ({flops / stock / 1e6:4.1f} GFLOP/s, {stock / ours:.0f}x)"
            )
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no stock prefill")
    parser.add_argument("--part", choices=["all", "linear", "attention", "batch"], default="all")
    parser.add_argument(
        "--rows", type=int, nargs="+", default=list(BATCH_ROWS), help="row counts for --part batch"
    )
    parser.add_argument(
        "--formats", nargs="+", choices=FORMATS, default=FORMATS, help="weight formats for batch"
    )
    args = parser.parse_args()
    repeats = 3 if args.quick else 9
    if not hk.available():
        raise SystemExit(f"higgs-kernels extension not available: {hk.import_error}")

    print(f"mlx {mx.__version__}, kernels: {hk.isa()}, {hk.threads()} threads")
    bw = read_bandwidth(repeats)
    print(f"read bandwidth (all threads, best of {repeats}): {bw:.1f} GB/s\n")
    if args.part in ("all", "linear"):
        linear_figures(bw, repeats, args.quick)
    if args.part in ("all", "attention"):
        print()
        attention_figures(max(bw, read_bandwidth(repeats)), repeats, not args.quick)
    if args.part in ("all", "batch"):
        print()
        batch_figures(repeats, args.rows, args.formats)


def batch_figures(repeats, rows=BATCH_ROWS, formats=FORMATS):
    """The issue's probe: q, k, gate, down with several activation rows per call.
    Row counts are interleaved (each repeat times every count, in a rotated order),
    so a drift of the machine's speed moves them all alike."""
    shapes = [SHAPES["q"], SHAPES["k/v"], SHAPES["gate/up"], SHAPES["down"]]
    print("a batched step's rows: q + k + gate + down of one layer, bf16 activations,")
    print(f"median of {repeats} interleaved repeats; throughput against one row")
    print(f"{'fmt':>4} " + " ".join(f"{f'{r} rows':>17}" for r in rows))
    for fmt in formats:
        sets = []
        for n, k, _ in shapes:
            one = make_weight(n, k, fmt, mx.random.key(0))
            copies = max(2, -(-(128 << 20) // nbytes(one)))
            keys = mx.random.split(mx.random.key(n + k), copies)
            sets.append([make_weight(n, k, fmt, keys[i]) for i in range(copies)])
            mx.eval(sets[-1])
        xs = {}
        for r in rows:
            xs[r] = [
                mx.random.normal((r, ws[0][0].shape[1] * unpacked(fmt))).astype(mx.bfloat16)
                for ws in sets
            ]
            mx.eval(xs[r])
        for r in rows:
            batch_step(sets, xs[r], fmt)  # warm up
        times = {r: [] for r in rows}
        for i in range(repeats):
            for r in rows[i % len(rows) :] + rows[: i % len(rows)]:
                times[r].append(batch_step(sets, xs[r], fmt))
        ms = [statistics.median(times[r]) for r in rows]
        cells = [f"{m:7.2f} ms {r / m * ms[0]:5.1f}x" for r, m in zip(rows, ms, strict=True)]
        print(f"{fmt:>4} " + " ".join(f"{c:>17}" for c in cells), flush=True)
        del sets, xs


def batch_step(sets, xs, fmt):
    """ms for the four calls: each shape's copies in one eval, per copy."""
    total = 0.0
    for ws, x in zip(sets, xs, strict=True):
        start = time.perf_counter()
        mx.eval([apply(x, w, fmt, True) for w in ws])
        total += (time.perf_counter() - start) * 1e3 / len(ws)
    return total


def unpacked(fmt):
    """Values per stored column: 1 for bf16, 32 / bits for quantized codes."""
    return 1 if fmt == "bf16" else 32 // int(fmt[1:])


def linear_figures(bw, repeats, quick):
    frame = {}
    header = f"{'shape':>8} {'N x K':>11} {'fmt':>4} {'MB':>6} {'kernels ms':>11} {'GB/s':>6}"
    print(header + f" {'stock ms':>9} {'GB/s':>6} {'speedup':>8} {'floor ms':>9} {'of floor':>8}")
    for fmt in FORMATS:
        bw = max(bw, read_bandwidth(repeats))
        total = {"kernels": 0.0, "stock": 0.0, "bytes": 0}
        for name, (n, k, per_layer) in SHAPES.items():
            one = make_weight(n, k, fmt, mx.random.key(0))
            copies = max(2, -(-(256 << 20) // nbytes(one)))
            keys = mx.random.split(mx.random.key(n + k), copies)
            weights = [make_weight(n, k, fmt, keys[i]) for i in range(copies)]
            mx.eval(weights)
            size = nbytes(weights[0])
            ours = per_call_ms(weights, fmt, True, repeats)
            stock = per_call_ms(weights[:2], fmt, False, max(1, repeats // 3))
            floor = size / bw / 1e6
            count = per_layer * LAYERS or 1
            total["kernels"] += count * ours
            total["stock"] += count * stock
            total["bytes"] += count * size
            print(
                f"{name:>8} {f'{n}x{k}':>11} {fmt:>4} {size / 1e6:6.1f} {ours:11.3f} "
                f"{size / ours / 1e6:6.1f} {stock:9.2f} {size / stock / 1e6:6.1f} "
                f"{stock / ours:7.1f}x {floor:9.3f} {floor / ours:7.0%}"
            )
            del weights
        frame[fmt] = (total["kernels"], total["stock"], total["bytes"])
        print()

    print(f"best read bandwidth in this run: {bw:.1f} GB/s")
    print("per audio frame (28 x (q, k, v, o, gate, up, down) + head), from the per-call figures:")
    for fmt, (ours, stock, size) in frame.items():
        floor = size / bw / 1e6
        chained = chained_frame_ms(fmt, repeats)
        print(
            f"  {fmt:>4}: {size / 1e9:.2f} GB read; kernels {ours:7.1f} ms "
            f"({floor / ours:.0%} of the {floor:.1f} ms floor), chained frame {chained:7.1f} ms "
            f"({floor / chained:.0%}); stock {stock:8.1f} ms ({stock / ours:.0f}x slower)"
        )

    print("\nprefill, 512 rows of bf16 activations:")
    for name in ("k/v", "gate/up"):
        n, k, _ = SHAPES[name]
        for fmt in FORMATS:
            w = make_weight(n, k, fmt, mx.random.key(5))
            x = mx.random.normal((512, k)).astype(mx.bfloat16)
            mx.eval(w, x)
            flops = 2 * 512 * n * k
            ours = timed(lambda w=w, x=x, fmt=fmt: mx.eval(apply(x, w, fmt, True)), repeats)
            line = f"  {name:>7} {fmt:>4}: kernels {flops / ours / 1e9:6.1f} GFLOP/s"
            if name == "k/v" and not quick:
                # Stock quantized matmuls crawl: time them on 64 of the rows.
                xs = x if fmt == "bf16" else x[:64]
                stock = timed(lambda w=w, xs=xs, fmt=fmt: mx.eval(apply(xs, w, fmt, False)), 1)
                stock *= len(x) / len(xs)
                line += f", stock {flops / stock / 1e9:5.2f} GFLOP/s ({stock / ours:.0f}x)"
                line += "" if fmt == "bf16" else " (stock timed on 64 rows)"
            print(line)
    params = LAYERS * sum(n * k * c for n, k, c in SHAPES.values()) + HEAD * HIDDEN
    print(f"  (a prefill token costs {2 * params / 1e9:.2f} GFLOP in these layers)")


if __name__ == "__main__":
    main()
