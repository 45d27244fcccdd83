"""higgs_kernels.attention against a float64 reference, on every instruction set
this CPU runs and through both of its paths (decode: keys split across tasks and
merged; prefill: blocked Q K^T and P V tiles).

The bound, per output element o[i, d] = sum_j p[i, j] v[j, d], from where the
kernels round in fp32 (u = 2^-24), with p, o and the score magnitudes taken from
the float64 reference:

- each score s[i, j] is a fp32 dot product over D terms, scaled: it may be off by
  E[i, j] = u (D + 4) scale sum_d |q[i, d] k[j, d]| + 8 u max_j |s[i, j]| (the
  second term: subtracting the running max, in base 2), and each probability by
  8 u relative (the vectorised exp2 is good to ~2e-7): together they move o by at
  most sum_j p E' |v[j, d] - o[i, d]| <= (p E') |v| + (sum_j p E') |o|, E' = E + 8u;
- the sums of p and of p v run over Lk terms (and one rescale per 64-key block):
  (2 Lk + 80) u sum_j p |v[j, d]|;
- the output's own rounding: half an ulp of its dtype (bf16 2^-8, f16 2^-11 of |o|).

The inputs are exact in float64, so nothing else enters. A missing or extra key
moves o by ~p |v - o| (5e-4 at Lk = 2000), well above the bound. Outputs are
poisoned with NaN before each run, so an element the kernels fail to write fails.
"""

import mlx.core as mx
import numpy as np
import pytest

import higgs_kernels as hk

pytestmark = pytest.mark.skipif(
    not hk.available(), reason=f"higgs-kernels extension not built: {hk.import_error}"
)

U = 2.0**-24
OUT_ULP = {mx.float32: 0.0, mx.bfloat16: 2.0**-8, mx.float16: 2.0**-11}
DTYPES = [mx.float32, mx.bfloat16, mx.float16]
PATHS = ["decode", "prefill"]


@pytest.fixture(autouse=True)
def poisoned_outputs():
    hk._ext.set_poison(True)
    yield
    hk._ext.set_poison(False)
    hk._ext.set_isa("auto")
    hk._ext.set_attention_path("auto")
    hk.set_threads(None)


def f64(a):
    return np.array(a.astype(mx.float32)).astype(np.float64)


def reference(q, k, v, scale, causal):
    """float64 attention and the module docstring's bound, both [B, Hq, Lq, D]."""
    q, k, v = f64(q), f64(k), f64(v)
    _, Hq, Lq, D = q.shape
    Lk = k.shape[2]
    group = Hq // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = scale * q @ k.swapaxes(-1, -2)
    magnitude = scale * np.abs(q) @ np.abs(k).swapaxes(-1, -2)
    seen = np.ones((Lq, Lk), bool)
    if causal:
        seen = np.arange(Lk)[None] <= Lk - Lq + np.arange(Lq)[:, None]
    s = np.where(seen, s, -np.inf)
    smax = np.abs(np.where(seen, s, 0)).max(-1, keepdims=True)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = p @ v
    err = U * (D + 4) * magnitude + 8 * U * smax + 8 * U
    pe = p * err
    bound = pe @ np.abs(v) + pe.sum(-1, keepdims=True) * np.abs(o)
    bound += (2 * Lk + 80) * U * (p @ np.abs(v))
    return o, bound


def check(out, want, bound, dtype, what):
    got = f64(out)
    assert out.shape == want.shape and out.dtype == dtype, what
    assert np.isfinite(got).all(), f"{what}: unwritten (NaN) outputs"
    bound = bound + OUT_ULP[dtype] * np.abs(want) + 1e-30
    err = np.abs(got - want)
    worst = (err / bound).max()
    assert worst <= 1.0, f"{what}: error {err.max():.3g} is {worst:.2f}x its bound"
    return worst


def inputs(B, Hkv, group, Lq, Lk, D, dtype, seed):
    kq, kk, kv = mx.random.split(mx.random.key(seed), 3)
    q = mx.random.normal((B, Hkv * group, Lq, D), key=kq).astype(dtype)
    k = mx.random.normal((B, Hkv, Lk, D), key=kk).astype(dtype)
    v = mx.random.normal((B, Hkv, Lk, D), key=kv).astype(dtype)
    mx.eval(q, k, v)
    return q, k, v


# (Lq, Lk, group, D): decode and short-chunk shapes (Lq 1..9) over a short and a
# long cache, the long ones split into several key ranges; prefill shapes with
# block-straddling lengths (the kernels block 64 queries and 64 keys); odd head
# sizes take the portable kernels.
CASES = [
    (1, 1, 1, 64),
    (1, 63, 3, 128),
    (1, 300, 3, 128),
    (1, 1500, 4, 64),
    (1, 2001, 3, 128),
    (2, 2, 4, 128),
    (3, 130, 1, 64),
    (4, 777, 3, 128),
    (5, 5, 3, 64),
    (6, 1029, 4, 128),
    (7, 450, 1, 128),
    (8, 8, 3, 128),
    (9, 1300, 3, 64),
    (64, 64, 3, 128),
    (64, 1000, 4, 64),
    (257, 257, 1, 128),
    (257, 700, 3, 64),
    (513, 513, 1, 128),
    (513, 2000, 1, 64),
    (5, 200, 3, 80),
    (17, 33, 2, 24),
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize(("Lq", "Lk", "group", "D"), CASES)
def test_matches_float64(isas, Lq, Lk, group, D, dtype, causal):
    B, Hkv = (2, 2) if Lq * Lk < 100_000 else (1, 1)
    q, k, v = inputs(B, Hkv, group, Lq, Lk, D, dtype, seed=Lq * 10_000 + Lk + group)
    scale = D**-0.5
    want, bound = reference(q, k, v, scale, causal)
    for isa in isas:
        if isa == "generic" and Lq * Lk > 300_000:
            continue  # the portable kernels are slow; the mid-sized cases cover them
        hk._ext.set_isa(isa)
        for path in PATHS:
            hk._ext.set_attention_path(path)
            out = hk.attention(q, k, v, scale=scale, causal=causal)
            check(out, want, bound, dtype, f"{isa} {path} {Lq}x{Lk} g{group} D{D} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16", "f16"])
def test_automatic_path_matches_stock_mlx_in_float32(dtype):
    """hk.attention with every choice left to it, against stock MLX run in float32
    on the same (rounded) inputs: within 1e-5 of the largest output (stock's own
    fp32 error is ~1e-6 of it), plus the output dtype's rounding."""
    for Lq, Lk, causal in [(1, 1500, False), (3, 600, True), (100, 1100, True), (300, 300, True)]:
        q, k, v = inputs(1, 8, 3, Lq, Lk, 128, dtype, seed=Lq + Lk)
        got = hk.attention(q, k, v, scale=0.088, causal=causal)
        want = mx.fast.scaled_dot_product_attention(
            *(a.astype(mx.float32) for a in (q, k, v)),
            scale=0.088,
            mask="causal" if causal else None,
        )
        err = float(mx.abs(got.astype(mx.float32) - want).max())
        tol = 1e-5 * float(mx.abs(want).max()) + OUT_ULP[dtype] * float(mx.abs(want).max())
        assert err <= tol, (Lq, Lk, causal, err, tol)


def row_contiguous(a):
    strides, step = [], a.itemsize
    for n in reversed(a.shape):
        strides.insert(0, step)
        step *= n
    return memoryview(a).strides == tuple(strides)


def cache_views(B, Hkv, Lk, D, dtype, seed, capacity=2048):
    """k and v as mlx-lm's KVCache returns them: the first Lk positions of larger
    buffers (not row-contiguous), plus contiguous copies of the same values."""
    kk, kv = mx.random.split(mx.random.key(seed))
    kbuf = mx.random.normal((B, Hkv, capacity, D), key=kk).astype(dtype)
    vbuf = mx.random.normal((B, Hkv, capacity, D), key=kv).astype(dtype)
    mx.eval(kbuf, vbuf)
    k, v = kbuf[:, :, :Lk], vbuf[:, :, :Lk]
    return k, v, mx.contiguous(k), mx.contiguous(v)


@pytest.mark.parametrize("path", PATHS)
def test_strided_inputs_read_in_place_give_the_same_result(path):
    hk._ext.set_attention_path(path)
    for Lq, Lk in [(1, 1300), (7, 300), (70, 500)]:
        k, v, kc, vc = cache_views(1, 2, Lk, 128, mx.bfloat16, seed=Lk)
        assert not row_contiguous(k) and row_contiguous(kc)
        # q as the model makes it: [B, L, H, D] transposed to [B, H, L, D].
        qt = mx.random.normal((1, Lq, 6, 128), key=mx.random.key(Lq)).astype(mx.bfloat16)
        q = qt.transpose(0, 2, 1, 3)
        mx.eval(q, k, v, kc, vc)
        want = hk.attention(mx.contiguous(q), kc, vc, scale=0.1, causal=True)
        got = hk.attention(q, k, v, scale=0.1, causal=True)
        assert mx.array_equal(got, want), (path, Lq, Lk)
        ref, bound = reference(q, k, v, 0.1, True)
        check(got, ref, bound, mx.bfloat16, f"{path} view {Lq}x{Lk}")
    # A strided head axis (stride 0: one key head broadcast) and a strided last
    # axis (copied first) too.
    k, v, kc, vc = cache_views(1, 1, 200, 64, mx.float32, seed=9)
    kb, vb = mx.broadcast_to(kc, (1, 3, 200, 64)), mx.broadcast_to(vc, (1, 3, 200, 64))
    q = mx.random.normal((1, 3, 2, 64), key=mx.random.key(2))
    want = hk.attention(q, mx.contiguous(kb), mx.contiguous(vb), scale=0.125)
    assert mx.array_equal(hk.attention(q, kb, vb, scale=0.125), want)
    wide = mx.random.normal((1, 3, 200, 128), key=mx.random.key(3))
    ks = wide[..., ::2]
    assert memoryview(ks).strides[-1] == 8
    want = hk.attention(q, mx.contiguous(ks), vb, scale=0.125)
    assert mx.array_equal(hk.attention(q, ks, vb, scale=0.125), want)


def test_an_mlx_lm_kv_cache_step_by_step():
    """Prefill then decode through mlx-lm's KVCache, as the model does: every
    step's output equals attention over contiguous copies of the cached keys."""
    cache_cls = pytest.importorskip("mlx_lm.models.cache").KVCache
    cache = cache_cls()
    key = mx.random.key(5)
    for step, L in enumerate([300, 1, 1, 5, 1]):
        kq, kk, kv, key = mx.random.split(key, 4)
        q = mx.random.normal((1, 6, L, 64), key=kq).astype(mx.bfloat16)
        k, v = cache.update_and_fetch(
            mx.random.normal((1, 2, L, 64), key=kk).astype(mx.bfloat16),
            mx.random.normal((1, 2, L, 64), key=kv).astype(mx.bfloat16),
        )
        got = hk.attention(q, k, v, scale=0.125, causal=L > 1)
        want = hk.attention(q, mx.contiguous(k), mx.contiguous(v), scale=0.125, causal=L > 1)
        assert mx.array_equal(got, want), step
        ref, bound = reference(q, k, v, 0.125, L > 1)
        check(got, ref, bound, mx.bfloat16, f"cache step {step}")


@pytest.mark.parametrize(("Lq", "Lk"), [(1, 1500), (1, 100), (4, 3000), (200, 700)])
def test_results_do_not_depend_on_thread_count(Lq, Lk):
    q, k, v = inputs(1, 4, 3, Lq, Lk, 128, mx.bfloat16, seed=Lk)
    outs = []
    for threads in (1, 2, 3, 7):
        hk.set_threads(threads)
        assert hk.threads() == threads
        outs.append(np.array(hk.attention(q, k, v, scale=0.1, causal=True).astype(mx.float32)))
    for out in outs[1:]:
        assert np.array_equal(out, outs[0])


def test_lazy_inside_a_graph_and_under_compile():
    q, k, v = inputs(1, 2, 4, 3, 260, 64, mx.float32, seed=1)

    def stock(q, k, v):
        o = mx.fast.scaled_dot_product_attention(q * 2, k, v + 1, scale=0.1, mask="causal")
        return mx.tanh(o).sum(axis=1)

    def kernels(q, k, v):
        return mx.tanh(hk.attention(q * 2, k, v + 1, scale=0.1, causal=True)).sum(axis=1)

    want = stock(q, k, v)
    for f in (kernels, mx.compile(kernels)):
        got = f(q, k, v)  # nothing evaluated yet: the kernel runs inside the graph
        assert float(mx.abs(got - want).max()) < 1e-5
    # Shapeless: one compiled graph follows the cache as it grows.
    f = mx.compile(kernels, shapeless=True)
    for Lk in (260, 261, 300):
        q2, k2, v2 = inputs(1, 2, 4, 3, Lk, 64, mx.float32, seed=Lk)
        assert float(mx.abs(f(q2, k2, v2) - stock(q2, k2, v2)).max()) < 1e-5


def test_inputs_it_does_not_take_go_to_stock_mlx():
    q, k, v = inputs(1, 2, 2, 4, 3, 64, mx.float32, seed=4)
    # Causal with more queries than keys: stock MLX's convention, from stock MLX.
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.1, mask="causal")
    assert mx.array_equal(hk.attention(q, k, v, scale=0.1, causal=True), want)
    # Mixed dtypes promote, as stock.
    kb = k.astype(mx.bfloat16)
    got = hk.attention(q, kb, v, scale=0.1)
    want = mx.fast.scaled_dot_product_attention(q, kb, v, scale=0.1)
    assert got.dtype == want.dtype and mx.array_equal(got, want)


def test_empty_inputs():
    q, k, v = inputs(1, 2, 2, 3, 0, 64, mx.float32, seed=4)
    out = hk.attention(q, k, v, scale=0.1)  # no keys: zeros, as stock MLX
    assert out.shape == q.shape and float(mx.abs(out).max()) == 0.0
    q, k, v = inputs(1, 2, 2, 0, 5, 64, mx.float32, seed=4)
    assert hk.attention(q, k, v, scale=0.1, causal=True).shape == (1, 4, 0, 64)


def test_bad_input_is_one_clear_error():
    q, k, v = inputs(1, 2, 3, 2, 5, 64, mx.float32, seed=4)
    attention = hk._ext.attention
    with pytest.raises(ValueError, match="must be 4-D"):
        attention(q[0], k, v, scale=0.1)
    with pytest.raises(ValueError, match="share one dtype"):
        attention(q, k.astype(mx.float16), v, scale=0.1)
    with pytest.raises(ValueError, match="share one dtype"):
        attention(q.astype(mx.int32), k, v, scale=0.1)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        attention(q[:, :5], k, v, scale=0.1)
    with pytest.raises(ValueError, match="do not fit"):
        attention(q, k, v[..., :32], scale=0.1)
    with pytest.raises(ValueError, match="unknown attention path"):
        hk._ext.set_attention_path("fast")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16", "f16"])
def test_rows_over_their_own_caches_equal_each_row_alone(dtype):
    """A decode batch in one op: row b of q over its own cache views (lengths from
    one key to several split ranges) equals attention on that row alone, bit for
    bit, and meets the float64 bound; so does a thread count of 1."""
    lengths = [1, 37, 300, 700, 64, 1500]
    q = mx.random.normal((len(lengths), 6, 1, 128), key=mx.random.key(8)).astype(dtype)
    views = [cache_views(1, 2, L, 128, dtype, seed=L)[:2] for L in lengths]
    keys, values = [k for k, _ in views], [v for _, v in views]
    got = hk.attention_rows(q, keys, values, scale=0.09)
    assert got.shape == q.shape and got.dtype == dtype
    for b, (k, v) in enumerate(views):
        alone = hk.attention(q[b : b + 1], k, v, scale=0.09)
        assert mx.array_equal(got[b : b + 1], alone), b
        ref, bound = reference(q[b : b + 1], k, v, 0.09, False)
        check(got[b : b + 1], ref, bound, dtype, f"row {b}, {lengths[b]} keys")
    hk.set_threads(1)
    assert mx.array_equal(hk.attention_rows(q, keys, values, scale=0.09), got)


def test_rows_with_more_queries_take_the_prefill_path_each():
    q, k, v = inputs(2, 2, 3, 70, 90, 64, mx.float32, seed=6)
    keys, values = [k[:1], k[1:, :, :50]], [v[:1], v[1:, :, :50]]
    got = hk.attention_rows(q, keys, values, scale=0.1, causal=True)
    for b in range(2):
        alone = hk.attention(q[b : b + 1], keys[b], values[b], scale=0.1, causal=True)
        assert mx.array_equal(got[b : b + 1], alone), b


def test_rows_bad_input_is_one_clear_error():
    q, k, v = inputs(2, 2, 3, 1, 5, 64, mx.float32, seed=4)
    rows = hk._ext.attention_rows
    with pytest.raises(ValueError, match="one k and one v per row"):
        hk.attention_rows(q, [k[:1]], [v[:1]], scale=0.1)
    with pytest.raises(ValueError, match="one k and one v per row"):
        rows(q, [k[:1]], [v[:1], v[1:]], scale=0.1)
    with pytest.raises(ValueError, match="must be a 4-D float array"):
        rows(q[0], [k[:1], k[1:]], [v[:1], v[1:]], scale=0.1)
    with pytest.raises(ValueError, match=r"row 1: .* do not fit"):
        rows(q, [k[:1], k[1:, :, :, :32]], [v[:1], v[1:]], scale=0.1)
    with pytest.raises(ValueError, match=r"row 0: .* do not fit"):
        rows(q, [k, k[1:]], [v, v[1:]], scale=0.1)
    with pytest.raises(ValueError, match=r"row 0: .* do not fit"):
        rows(q, [k[:1].astype(mx.float16), k[1:]], [v[:1], v[1:]], scale=0.1)
