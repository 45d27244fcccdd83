"""`swiglu` (silu(gate) * up) against float64 on every ISA this CPU runs.

Bound per value: the kernels compute in fp32 (a polynomial exp of ~1 ulp, then a
division and two products) and round once to the output dtype, so |y - ref| <=
(1e-6 + half an output ulp) * |ref| + a floor: the vectorised exp clamps its
argument at -87.3 (e^-87.3 ~ 1.2e-38, fp32's smallest normal), so results under
~1e-35 in size are not exact (f16: its smallest subnormal).
"""

import mlx.core as mx
import numpy as np
import pytest

import higgs_kernels as hk

pytestmark = pytest.mark.skipif(
    not hk.available(), reason=f"higgs-kernels extension not built: {hk.import_error}"
)

HALF_ULP = {mx.float32: 0.0, mx.bfloat16: 2.0**-8, mx.float16: 2.0**-11}
TINY = {mx.float32: 1e-35, mx.bfloat16: 1e-35, mx.float16: 6e-8}


@pytest.fixture(autouse=True)
def poisoned_outputs():
    hk._ext.set_poison(True)  # an element the kernels skip stays NaN
    yield
    hk._ext.set_poison(False)


def f64(a):
    return np.array(a.astype(mx.float32)).astype(np.float64)


def check(y, gate, up):
    g, u = f64(gate), f64(up)
    with np.errstate(over="ignore"):  # e^-g = inf for very negative g: silu -> -0
        ref = g / (1 + np.exp(-g)) * u
    got = f64(y)
    assert y.dtype == gate.dtype and y.shape == gate.shape
    bound = (1e-6 + HALF_ULP[y.dtype]) * np.abs(ref) + TINY[y.dtype]
    worst = (np.abs(got - ref) / bound).max(initial=0.0)
    assert worst <= 1.0, f"error {np.abs(got - ref).max():.3g} is {worst:.2f}x its bound"


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 8192, 70001])  # 70001: split across threads
def test_matches_float64(isa, dtype, n):
    k1, k2 = mx.random.split(mx.random.key(n))
    gate = (4 * mx.random.normal((n,), key=k1)).astype(dtype)
    up = mx.random.normal((n,), key=k2).astype(dtype)
    check(hk.swiglu(gate, up), gate, up)


def test_extremes(isa):
    gate = mx.array([-1e4, -100.0, -88.5, -20.0, -1e-3, 0.0, 1e-3, 20.0, 88.5, 100.0, 1e4] * 3)
    check(hk.swiglu(gate, mx.ones_like(gate) * 1.5), gate, mx.ones_like(gate) * 1.5)
    nan = hk.swiglu(mx.array([float("nan")] * 9), mx.ones((9,)))
    assert np.isnan(np.array(nan)).all()


def test_views_lazy_graphs_and_compile(isa):
    k1, k2 = mx.random.split(mx.random.key(3))
    gate = mx.random.normal((40, 24), key=k1).astype(mx.bfloat16).T  # not row-major
    up = mx.random.normal((24, 40), key=k2).astype(mx.bfloat16)
    check(hk.swiglu(gate, up), gate, up)
    fused = mx.compile(lambda g, u: hk.swiglu(g * 2, u))  # g * 2 is exact
    check(fused(gate, up), gate * 2, up)


def test_mismatched_inputs_fall_back_or_fail_clearly():
    gate = mx.random.normal((5,))
    up = mx.random.normal((5,)).astype(mx.bfloat16)
    want = gate * mx.sigmoid(gate) * up
    assert mx.allclose(hk.swiglu(gate, up), want)  # stock MLX takes it
    with pytest.raises(ValueError, match="share one shape and one dtype"):
        hk._ext.swiglu(gate, up)
