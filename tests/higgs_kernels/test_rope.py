"""`rope` against float64 and against mx.fast.rope, with the Higgs (Llama 3)
frequencies and others.

Bound: the kernels take the angle in fp32 as MLX does ((offset + l) * scale,
times 1 / freq), then cos, sin and two products in fp32, and round once, so
|y - ref| <= 1e-6 * (|x_i| + |x_j|) * (1 + |angle|) + half an output ulp of
|ref| (the fp32 angle itself is off by up to an ulp of a value up to ~1e4).
"""

import math

import mlx.core as mx
import numpy as np
import pytest

import higgs_kernels as hk

pytestmark = pytest.mark.skipif(
    not hk.available(), reason=f"higgs-kernels extension not built: {hk.import_error}"
)

HALF_ULP = {mx.float32: 0.0, mx.bfloat16: 2.0**-8, mx.float16: 2.0**-11}


def llama3_freqs(dims, base=500000.0, factor=32.0, low=1.0, high=4.0, old=8192):
    """Llama 3's scaled wavelengths, as mlx-lm builds them (float64 here)."""
    freqs = base ** (np.arange(0, dims, 2) / dims)
    wavelens = 2 * math.pi * freqs
    smooth = (old / wavelens - low) / (high - low)
    smoothed = freqs / ((1 - smooth) / factor + smooth)
    out = np.where(wavelens > old / low, freqs * factor, freqs)
    mid = (wavelens > old / high) & (wavelens < old / low)
    return np.where(mid, smoothed, out).astype(np.float32)


def reference(x, dims, freqs, offset, scale):
    """float64 rope with the fp32 angle MLX uses."""
    xf = np.array(x.astype(mx.float32)).astype(np.float64)
    L = xf.shape[-2]
    inv = (np.float32(1) / freqs.astype(np.float32)).astype(np.float32)
    pos = ((np.arange(L) + offset).astype(np.float32) * np.float32(scale)).astype(np.float32)
    theta = (pos[:, None] * inv[None, :]).astype(np.float32).astype(np.float64)
    c, s = np.cos(theta), np.sin(theta)
    half = dims // 2
    a, b = xf[..., :half], xf[..., half:dims]
    out = xf.copy()
    out[..., :half] = a * c - b * s
    out[..., half:dims] = a * s + b * c
    return out, np.abs(theta), np.concatenate([np.abs(a) + np.abs(b)] * 2, axis=-1)


@pytest.fixture(autouse=True)
def poisoned():
    hk._ext.set_poison(True)
    yield
    hk._ext.set_poison(False)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
@pytest.mark.parametrize(
    ("shape", "dims", "offset", "scale"),
    [
        ((1, 24, 1, 128), 128, 1537, 1.0),  # a decode step's queries
        ((1, 8, 300, 128), 128, 0, 1.0),  # a prefill chunk's keys (split across threads)
        ((2, 3, 7, 64), 48, 5, 0.5),  # partial rotation, batch, scale
        ((4, 33), 32, 9000, 1.0),  # 2-D, position past 8192
    ],
)
def test_matches_float64(dtype, shape, dims, offset, scale):
    x = (mx.random.normal(shape, key=mx.random.key(len(shape) + dims)) * 3).astype(dtype)
    freqs = llama3_freqs(dims)
    y = hk.rope(x, dims, freqs=mx.array(freqs), offset=offset, scale=scale)
    assert y.dtype == dtype and y.shape == x.shape
    want, theta, mag = reference(x, dims, freqs, offset, scale)
    got = np.array(y.astype(mx.float32)).astype(np.float64)
    assert np.isfinite(got).all(), "unwritten (NaN) outputs"
    rot = np.ones(want.shape[-1], dtype=bool)
    rot[dims:] = False
    bound = HALF_ULP[dtype] * np.abs(want) + 1e-30
    bound[..., :dims] += 1e-6 * mag * (1 + np.concatenate([theta, theta], axis=-1))
    worst = (np.abs(got - want) / bound).max()
    assert worst <= 1.0, f"error {np.abs(got - want).max():.3g} is {worst:.2f}x its bound"
    # values past dims are copied exactly
    assert np.array_equal(got[..., ~rot], np.array(x.astype(mx.float32))[..., ~rot])


def test_matches_mlx_fast_rope_and_works_on_views_and_in_compile():
    freqs = mx.array(llama3_freqs(128))
    x = mx.random.normal((1, 5, 24, 128)).transpose(0, 2, 1, 3)  # a projection's view
    want = mx.fast.rope(x, 128, traditional=False, base=None, scale=1.0, offset=1030, freqs=freqs)
    got = hk.rope(x, 128, freqs=freqs, offset=1030)
    assert float(mx.abs(got - want).max()) <= 1e-5 * float(mx.abs(want).max())
    compiled = mx.compile(lambda a: hk.rope(a * 1, 128, freqs=freqs, offset=1030))
    assert mx.array_equal(compiled(x), got)


def test_bad_arguments_fail_clearly():
    x = mx.random.normal((1, 2, 3, 8))
    with pytest.raises(ValueError, match="dims must be even"):
        hk._ext.rope(x, 7, freqs=mx.ones((3,)), offsets=[0])
    with pytest.raises(ValueError, match="float32 freqs"):
        hk._ext.rope(x, 8, freqs=mx.ones((3,)), offsets=[0])


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_one_offset_per_row_rotates_each_row_as_alone(dtype):
    """A decode batch's rows stand at their own positions: one call with an offset
    per row gives each row exactly its call alone, and each the float64 bound."""
    freqs = llama3_freqs(128)
    x = mx.random.normal((5, 24, 1, 128), key=mx.random.key(3)).astype(dtype)
    offsets = [0, 1537, 7, 9000, 64]
    got = hk.rope(x, 128, freqs=mx.array(freqs), offset=offsets)
    for b, offset in enumerate(offsets):
        alone = hk.rope(x[b : b + 1], 128, freqs=mx.array(freqs), offset=offset)
        assert mx.array_equal(got[b : b + 1], alone), b
        want, theta, mag = reference(x[b : b + 1], 128, freqs, offset, 1.0)
        err = np.abs(np.array(got[b : b + 1].astype(mx.float32)) - want)
        bound = HALF_ULP[dtype] * np.abs(want) + 1e-6 * mag * (1 + np.concatenate([theta] * 2, -1))
        assert (err <= bound + 1e-30).all(), b


def test_a_wrong_number_of_offsets_is_one_clear_error():
    x = mx.random.normal((3, 2, 1, 8))
    freqs = mx.ones((4,))
    with pytest.raises(ValueError, match="one offset per index"):
        hk.rope(x, 8, freqs=freqs, offset=[1, 2])
    with pytest.raises(ValueError, match="one offset, or one per index"):
        hk._ext.rope(x, 8, freqs=freqs, offsets=[1, 2])
    with pytest.raises(ValueError, match="one offset, or one per index"):
        hk._ext.rope(x, 8, freqs=freqs, offsets=[])
