"""The kernels against a float64 reference on fresh random inputs.

Each case states its bound: the kernels accumulate in fp32, so |y - ref| must stay
within ACC * (|x| @ |W|.T) (ACC = 2e-6 * sqrt(K) + 1e-6, a few fp32 roundings per
term; W is the dequantized weight for quantized layers, so no quantization error
enters), plus half an ulp of the output dtype (bf16: 2^-8, f16: 2^-11 relative). The
AVX2 matrix-vector kernels for 4- and 8-bit weights round x to int16 per group
first: each value moves by at most 2^-16 of its group's largest |x| (bf16 itself
rounds each value by up to 2^-9 of it), a term the quantized cases add. With up
to 64 rows of bf16 or f16 x, 4-bit weights (K a multiple of 64) take int8 x
instead: each value moves by at most 1/254 of its group's largest |x|, still far
below the 4-bit codes' own step (1/15 of a group's range; the bound leaves that
out, as W is the dequantized weight). On avx512 (AVX512-VNNI), bf16 or f16 x takes
that int8 rounding for 8-bit weights too, and for any K. The avx512 prefill (rows > 64) of bf16 x by
quantized W rounds the dequantized W to bf16 (by up to 2^-8 of each value) to
multiply in bf16 pairs: those cases add 2^-8 * (|x| @ |W|.T). (Up to 64 rows, every
row count a decode batch can have, take the matrix-vector kernels; more rows are a
prefill.)
Outputs are poisoned with NaN before each run, so an element a kernel fails to
write fails the test.
"""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import higgs_kernels as hk

pytestmark = pytest.mark.skipif(
    not hk.available(), reason=f"higgs-kernels extension not built: {hk.import_error}"
)


ROWS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 23, 64, 65]
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
OUT_ULP = {mx.float32: 0.0, mx.bfloat16: 2.0**-8, mx.float16: 2.0**-11}


@pytest.fixture(autouse=True)
def poisoned_outputs():
    hk._ext.set_poison(True)
    yield
    hk._ext.set_poison(False)
    hk._ext.set_isa("auto")
    hk.set_threads(None)


def f64(a):
    return np.array(a.astype(mx.float32)).astype(np.float64)


# The most rows the matrix-vector kernels take: every row count a decode batch can
# have (--max-batch allows 64). More rows are a prefill, which packs W.
GEMV_ROWS = 64


def bf16_prefill(isa, rows, x_dtype):
    """Whether this call takes avx512's bf16 prefill (see the module docstring)."""
    return isa == "avx512" and rows > GEMV_ROWS and x_dtype == mx.bfloat16


def int8_x(isa, bits, k, rows, x_dtype):
    """Whether this call rounds x to int8 (see the module docstring)."""
    if bf16_prefill(isa, rows, x_dtype) or rows > GEMV_ROWS:
        return False
    if x_dtype not in (mx.bfloat16, mx.float16):
        return False
    if isa == "avx512":
        return bits in (4, 8)
    return isa == "avx2" and bits == 4 and k % 64 == 0


def check(y, x, w_f64, what, group=None, w_rounded=False, x_step=2.0**-16):
    """y against x @ w.T in float64, within the module docstring's bound; ``x_step``:
    how far x's rounding for the integer kernels may move a value, per group max."""
    assert np.isfinite(np.array(y.astype(mx.float32))).all(), f"{what}: unwritten (NaN) outputs"
    xf = f64(x).reshape(-1, w_f64.shape[1])
    ref = xf @ w_f64.T
    k = w_f64.shape[1]
    acc = 2e-6 * math.sqrt(k) + 1e-6
    bound = acc * (np.abs(xf) @ np.abs(w_f64).T) + OUT_ULP[y.dtype] * np.abs(ref) + 1e-30
    if group:
        gmax = np.abs(xf).reshape(len(xf), -1, group).max(-1, keepdims=True)
        gmax = np.broadcast_to(gmax, (len(xf), k // group, group)).reshape(xf.shape)
        bound = bound + x_step * (gmax @ np.abs(w_f64).T)
    if w_rounded:
        bound = bound + 2.0**-8 * (np.abs(xf) @ np.abs(w_f64).T)
    err = np.abs(f64(y).reshape(ref.shape) - ref)
    worst = (err / bound).max()
    assert worst <= 1.0, f"{what}: error {err.max():.3g} is {worst:.2f}x its bound"
    return err.max()


def rand(shape, dtype, key):
    return mx.random.normal(shape, key=key).astype(dtype)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("w_dtype", list(DTYPES))
@pytest.mark.parametrize(("n", "k"), [(1, 1), (7, 5), (33, 130), (130, 77), (257, 1000), (9, 8195)])
def test_dense_matches_float64(isa, rows, w_dtype, n, k):
    key = mx.random.key(rows * 1000 + n * 7 + k)
    k1, k2 = mx.random.split(key)
    for x_dtype in (mx.float32, mx.bfloat16):
        w = rand((n, k), DTYPES[w_dtype], k1)
        x = rand((rows, k), x_dtype, k2)
        y = hk.linear(x, w)
        assert y.dtype == (x @ w.T).dtype and y.shape == (rows, n)
        check(y, x, f64(w), f"{isa} dense {w_dtype} x{x_dtype} rows={rows} [{n}, {k}]")


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("bits", hk.SUPPORTED_BITS)
@pytest.mark.parametrize("group", hk.SUPPORTED_GROUP_SIZES)
def test_quantized_matches_float64(isa, rows, bits, group):
    n, k = 45, group * 3
    key = mx.random.key(rows * 100 + bits * 10 + group)
    k1, k2, k3 = mx.random.split(key, 3)
    for s_dtype, x_dtype in [
        (mx.bfloat16, mx.float32),
        (mx.float32, mx.float32),
        (mx.float16, mx.float16),
        (mx.bfloat16, mx.bfloat16),
    ]:
        w = rand((n, k), s_dtype, k1)
        wq, scales, biases = mx.quantize(w, group_size=group, bits=bits)
        w_f64 = f64(
            mx.dequantize(
                wq,
                scales.astype(mx.float32),
                biases.astype(mx.float32),
                group_size=group,
                bits=bits,
            )
        )
        x = rand((rows, k), x_dtype, k2)
        y = hk.quantized_linear(x, wq, scales, biases, group_size=group, bits=bits)
        stock = mx.quantized_matmul(x, wq, scales, biases, group_size=group, bits=bits)
        assert y.dtype == stock.dtype and y.shape == stock.shape
        rounded = bf16_prefill(isa, rows, x_dtype)
        step = 1 / 254 if int8_x(isa, bits, k, rows, x_dtype) else 2.0**-16
        what = f"{isa} q{bits} g{group} scales {s_dtype} rows={rows}"
        check(y, x, w_f64, what, group, rounded, step)
    # A long row too, where the accumulated error grows.
    w = rand((9, 4096), mx.bfloat16, k3)
    wq, scales, biases = mx.quantize(w, group_size=group, bits=bits)
    w_f64 = f64(
        mx.dequantize(
            wq, scales.astype(mx.float32), biases.astype(mx.float32), group_size=group, bits=bits
        )
    )
    x = rand((rows, 4096), mx.float32, k2)
    y = hk.quantized_linear(x, wq, scales, biases, group_size=group, bits=bits)
    step = 1 / 254 if int8_x(isa, bits, 4096, rows, mx.float32) else 2.0**-16
    check(y, x, w_f64, f"{isa} q{bits} g{group} K=4096 rows={rows}", group, x_step=step)


def test_matches_stock_mlx_float32_on_layer_shapes(isa):
    """The real Higgs k/v projection shape, against stock MLX in float32."""
    k1, k2 = mx.random.split(mx.random.key(7))
    w = rand((1024, 3072), mx.bfloat16, k1)
    for rows in (1, 4, 64):
        x = rand((rows, 3072), mx.float32, k2)
        stock = x @ w.astype(mx.float32).T
        y = hk.linear(x, w)
        rel = float(mx.abs(y - stock).max() / mx.abs(stock).max())
        assert rel < 1e-5, (rows, rel)
        wq, s, b = mx.quantize(w, group_size=64, bits=4)
        stock = mx.quantized_matmul(
            x, wq, s.astype(mx.float32), b.astype(mx.float32), group_size=64, bits=4
        )
        y = hk.quantized_linear(x, wq, s, b, group_size=64, bits=4)
        rel = float(mx.abs(y - stock).max() / mx.abs(stock).max())
        # Float32 x up to 64 rows goes through int16 (see the module docstring).
        assert rel < (2e-4 if rows <= 64 else 1e-5), (rows, rel)
        # bf16 x up to 64 rows goes through int8: a value moves by up to 1/254 of its
        # group's max; over 3072 terms of random sign that is ~0.6% of the outputs
        # (the 4-bit codes themselves: ~9%).
        xb = x.astype(mx.bfloat16)
        stock = mx.quantized_matmul(
            xb.astype(mx.float32),
            wq,
            s.astype(mx.float32),
            b.astype(mx.float32),
            group_size=64,
            bits=4,
        )
        y = hk.quantized_linear(xb, wq, s, b, group_size=64, bits=4)
        rel = float(mx.abs(y.astype(mx.float32) - stock).max() / mx.abs(stock).max())
        assert rel < 1e-2, (rows, rel)


@pytest.mark.parametrize("x_dtype", [mx.bfloat16, mx.float32])
@pytest.mark.parametrize(("n", "k"), [(61, 3 * 64), (50, 8 * 64 + 5), (29, 4 * 128)])
def test_a_row_gets_the_same_result_in_any_batch(isa, x_dtype, n, k):
    """A batched decode step's rows equal their one-row calls bit for bit at every
    row count a batch can have (up to 64; more take the prefill path), on every
    kernel path (fp32 and bf16 tiles, int8 and int16 x), so a batched stream makes
    exactly the frames it makes alone. (6-bit weights are exempt.)"""
    k1, k2 = mx.random.split(mx.random.key(n + k))
    w = rand((n, k), mx.bfloat16, k1)
    layers = [("bf16", lambda x: hk.linear(x, w))]
    if k % 64 == 0:
        for bits in (4, 8):
            wq, s, b = mx.quantize(w, group_size=64, bits=bits)
            layers.append(
                (
                    f"q{bits}",
                    lambda x, wq=wq, s=s, b=b, bits=bits: hk.quantized_linear(
                        x, wq, s, b, group_size=64, bits=bits
                    ),
                )
            )
    for name, layer in layers:
        x = rand((GEMV_ROWS, k), x_dtype, k2)
        alone = np.concatenate(
            [np.array(layer(x[r : r + 1]).astype(mx.float32)) for r in range(GEMV_ROWS)]
        )
        for rows in (2, 3, 5, 8, 9, 12, 16, 17, 24, 31, 33, 48, 63, GEMV_ROWS):
            together = np.array(layer(x[:rows]).astype(mx.float32))
            assert np.array_equal(together, alone[:rows]), (isa, name, x_dtype, rows)


@pytest.mark.parametrize("rows", [1, 3, 8, 50])
def test_results_do_not_depend_on_thread_count(isa, rows):
    k1, k2 = mx.random.split(mx.random.key(rows))
    w = rand((1000, 384), mx.bfloat16, k1)
    wq, s, b = mx.quantize(w, group_size=64, bits=4)
    x = rand((rows, 384), mx.bfloat16, k2)
    outs = []
    for threads in (1, 2, 3, 7):
        hk.set_threads(threads)
        assert hk.threads() == threads
        y1 = hk.linear(x, w)
        y2 = hk.quantized_linear(x, wq, s, b, group_size=64, bits=4)
        mx.eval(y1, y2)
        outs.append((np.array(y1.astype(mx.float32)), np.array(y2.astype(mx.float32))))
    for dense, quant in outs[1:]:
        assert np.array_equal(dense, outs[0][0])
        assert np.array_equal(quant, outs[0][1])


def test_threads_default_to_the_environment_or_every_core(monkeypatch):
    monkeypatch.setenv("HIGGS_KERNELS_THREADS", "3")
    hk.set_threads(None)
    assert hk.threads() == 3
    monkeypatch.delenv("HIGGS_KERNELS_THREADS")
    hk.set_threads(None)
    import os

    assert hk.threads() == len(os.sched_getaffinity(0))


def test_batched_and_strided_inputs():
    k1, k2 = mx.random.split(mx.random.key(3))
    w = rand((70, 48), mx.bfloat16, k1)
    x = rand((2, 3, 48), mx.float32, k2)  # leading axes
    y = hk.linear(x, w)
    assert y.shape == (2, 3, 70)
    check(y, x, f64(w), "batched")
    xt = rand((48, 5), mx.float32, k2).T  # a transposed view
    check(hk.linear(xt, w), xt, f64(w), "transposed x")
    wt = rand((48, 70), mx.bfloat16, k1).T
    check(hk.linear(xt, wt), xt, f64(wt), "transposed w")
    xb = mx.broadcast_to(rand((1, 48), mx.float32, k2), (4, 48))
    check(hk.linear(xb, w), xb, f64(w), "broadcast x")


def test_lazy_inside_a_graph_and_under_compile():
    k1, k2, k3 = mx.random.split(mx.random.key(11), 3)
    w1 = rand((96, 64), mx.bfloat16, k1)
    wq, s, b = mx.quantize(rand((64, 96), mx.bfloat16, k2), group_size=32, bits=8)
    x = rand((3, 64), mx.bfloat16, k3)

    def stock(x):
        h = nn.silu(x @ w1.T)
        return mx.quantized_matmul(h, wq, s, b, group_size=32, bits=8) * 0.5 + x

    def kernels(x):
        h = nn.silu(hk.linear(x, w1))
        return hk.quantized_linear(h, wq, s, b, group_size=32, bits=8) * 0.5 + x

    want = stock(x.astype(mx.float32))
    for f in (kernels, mx.compile(kernels)):
        got = f(x)  # nothing evaluated yet: the kernels run inside the graph
        err = float(mx.abs(got.astype(mx.float32) - want).max())
        assert err < 0.05 * float(mx.abs(want).max()), err
    got = mx.compile(kernels)(x.astype(mx.float32))
    assert float(mx.abs(got - want).max()) < 1e-4 * float(mx.abs(want).max())


def test_bad_input_is_one_clear_error():
    w = mx.zeros((8, 32), mx.bfloat16)
    with pytest.raises(ValueError, match="last axis must be 32"):
        hk.linear(mx.zeros((1, 31)), w)
    with pytest.raises(ValueError, match="x must be float32"):
        hk.linear(mx.zeros((1, 32), mx.int32), w)
    with pytest.raises(ValueError, match="2-D"):
        hk.linear(mx.zeros((1, 32)), mx.zeros((32,)))
    wq, s, b = mx.quantize(mx.zeros((8, 64)), group_size=64, bits=4)
    with pytest.raises(ValueError, match="bits must be"):
        hk.quantized_linear(mx.zeros((1, 64)), wq, s, b, group_size=64, bits=7)
    with pytest.raises(ValueError, match="group_size must be"):
        hk.quantized_linear(mx.zeros((1, 64)), wq, s, b, group_size=16, bits=4)
    with pytest.raises(ValueError, match="scales and biases"):
        hk.quantized_linear(mx.zeros((1, 64)), wq, s[:, :0], b, group_size=64, bits=4)
    with pytest.raises(ValueError, match="uint32 codes"):
        hk.quantized_linear(mx.zeros((1, 64)), wq.astype(mx.int32), s, b, group_size=64, bits=4)


def test_empty_and_zero_inputs():
    w = rand((16, 40), mx.bfloat16, mx.random.key(1))
    assert hk.linear(mx.zeros((0, 40)), w).shape == (0, 16)
    y = hk.linear(mx.zeros((3, 40)), w)
    assert float(mx.abs(y).max()) == 0.0


def test_an_empty_inner_axis_gives_zeros():
    y = hk.linear(mx.zeros((3, 0)), mx.zeros((5, 0), mx.bfloat16))
    assert y.shape == (3, 5)
    assert float(mx.abs(y).max()) == 0.0


def test_shapeless_compile_follows_the_row_count():
    w = rand((16, 32), mx.bfloat16, mx.random.key(4))
    mx.eval(w)  # a constant of the compiled graph, not a random op in it
    f = mx.compile(lambda x: hk.linear(x, w) + 1, shapeless=True)
    for rows in (1, 3, 12):  # the matrix-vector and the prefill paths
        x = rand((rows, 32), mx.float32, mx.random.key(rows))
        mx.eval(x)
        y = f(x)
        assert y.shape == (rows, 16)
        check(y - 1, x, f64(w), f"shapeless compile rows={rows}")
