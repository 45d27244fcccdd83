import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from higgs_sampling import (
    CodeColumns,
    apply_delay,
    build_delay_pattern,
    default_delays,
    revert_delay,
)


@st.composite
def clips(draw):
    K = draw(st.integers(1, 9))
    T = draw(st.integers(0, 20))
    delays = draw(st.lists(st.integers(0, 12), min_size=K, max_size=K))
    batch = draw(st.sampled_from([(), (1,), (2,), (2, 3)]))
    seed = draw(st.integers(0, 2**31 - 1))
    codes = np.random.default_rng(seed).integers(0, 1024, size=(*batch, K, T))
    return codes, delays


def numpy_delay(codes, delays, lead, trail):
    """Row-by-row reference: d_k leads, the codes, then D - d_k trails."""
    T = codes.shape[-1]
    D = max(delays)
    out = np.empty((*codes.shape[:-1], T + D), dtype=codes.dtype)
    for k, d in enumerate(delays):
        out[..., k, :d] = lead
        out[..., k, d : d + T] = codes[..., k, :]
        out[..., k, d + T :] = trail
    return out


@settings(max_examples=150, deadline=None)
@given(clips())
def test_apply_matches_row_by_row_shift(clip):
    codes, delays = clip
    got = apply_delay(mx.array(codes), delays, lead=-1, trail=-2)
    np.testing.assert_array_equal(np.array(got), numpy_delay(codes, delays, -1, -2))


@settings(max_examples=150, deadline=None)
@given(clips())
def test_revert_undoes_apply(clip):
    codes, delays = clip
    x = mx.array(codes)
    np.testing.assert_array_equal(
        np.array(revert_delay(apply_delay(x, delays, lead=1024, trail=1025), delays)), codes
    )


@settings(max_examples=100, deadline=None)
@given(clips())
def test_build_wraps_with_bos_and_eos(clip):
    codes, delays = clip
    T = codes.shape[-1]
    D = max(delays)
    got = np.array(build_delay_pattern(mx.array(codes), 1024, 1025, delays))
    assert got.shape == (*codes.shape[:-1], T + 2 + D)
    for k, d in enumerate(delays):
        assert (got[..., k, : d + 1] == 1024).all()
        np.testing.assert_array_equal(got[..., k, d + 1 : d + 1 + T], codes[..., k, :])
        assert (got[..., k, d + 1 + T :] == 1025).all()
    # Reverting a built pattern gives back [BOS, codes, EOS].
    back = np.array(revert_delay(mx.array(got), delays))
    assert (back[..., 0] == 1024).all() and (back[..., -1] == 1025).all()
    np.testing.assert_array_equal(back[..., 1:-1], codes)


def test_higgs_layout_by_hand():
    # REFERENCE.md: row k gets k leading BOS and K-1-k trailing EOS after the wrap.
    codes = mx.array([[1, 2], [3, 4], [5, 6]])
    B, E = 1024, 1025
    expected = [
        [B, 1, 2, E, E, E],
        [B, B, 3, 4, E, E],
        [B, B, B, 5, 6, E],
    ]
    assert build_delay_pattern(codes, B, E).tolist() == expected
    assert default_delays(3) == [0, 1, 2]


def test_partial_revert_of_a_growing_stream():
    codes = mx.array(np.arange(24).reshape(3, 8))
    delayed = apply_delay(codes, [0, 1, 2], lead=-1, trail=-2)
    # After f frames, the first f - max(delays) columns are final.
    for f in range(2, 10):
        part = revert_delay(delayed[:, :f], [0, 1, 2])
        np.testing.assert_array_equal(np.array(part), np.array(codes[:, : f - 2]))


def test_bad_delays_are_rejected():
    x = mx.zeros((3, 4), dtype=mx.int32)
    with pytest.raises(ValueError, match="3 codebooks"):
        apply_delay(x, [0, 1], lead=0, trail=0)
    with pytest.raises(ValueError, match=">= 0"):
        apply_delay(x, [0, -1, 2], lead=0, trail=0)
    with pytest.raises(ValueError, match="fewer than the largest delay"):
        revert_delay(x[:, :1], [0, 1, 2])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(0, 40),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["budget", "eos", "unknown"]),
)
def test_code_columns_hand_out_the_releases_columns_as_soon_as_they_are_final(
    K, extra, seed, ending
):
    rng = np.random.default_rng(seed)
    delays = default_delays(K) if seed % 2 else list(rng.integers(0, 6, K))
    D = max(delays)
    F = D + 2 + extra  # frames, the synthetic BOS frame first
    frames = mx.array(rng.integers(0, 1026, (K, F)).astype(np.int32))
    # The release keeps [:, 1:-1] of the reverted stream, BOS/EOS values clipped.
    want = np.clip(np.array(revert_delay(frames, delays))[:, 1:-1], 0, 1023)
    # The end is known from the start (a budget), from some frame on (an EOS ramp), or
    # only once the stream is over; takes ask for 1 to 4 columns at a time.
    known_from = {"budget": 0, "eos": int(rng.integers(0, F)), "unknown": F}[ending]
    columns = CodeColumns(K, 1024, delays)
    got = []
    for f in range(F):
        columns.push(frames[:, f])
        if f >= known_from:
            columns.last_frame = F - 1
        final = f - D  # the newest final column
        while (cols := columns.take(int(rng.integers(1, 5)))) is not None:
            got.append(np.array(cols))
        if (rest := columns.take()) is not None:  # what at_least left
            got.append(np.array(rest))
        # Every final column but BOS is out, except the newest while it may be the last.
        expect = min(final, F - D - 2) if f >= known_from else final - 1
        assert columns.sent == max(expect, 0)
    columns.last_frame = F - 1
    if (rest := columns.take()) is not None:
        got.append(np.array(rest))
    out = np.concatenate(got, axis=1) if got else np.zeros((K, 0), np.int32)
    np.testing.assert_array_equal(out, want)
