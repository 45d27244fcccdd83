import mlx.core as mx
import numpy as np
import pytest

from higgs_sampling import SamplingParams, filter_logits, greedy, repetition_aware, sample

PROBS = np.array([0.30, 0.25, 0.20, 0.10, 0.08, 0.04, 0.02, 0.01])
LOGITS = np.log(PROBS / PROBS.sum())
N = 200_000  # draws per distribution: TV noise is about sqrt(V / N) ~ 0.006


def softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def top_k(x, k):
    if not 0 < k < len(x):
        return x
    kth = np.sort(x)[::-1][k - 1]
    return np.where(x < kth, -np.inf, x)


def top_p(x, p):
    if p >= 1:
        return x
    pr = softmax(x)
    order = np.argsort(-x, kind="stable")
    before = np.cumsum(pr[order]) - pr[order]
    keep = np.zeros(len(x), bool)
    keep[order[before < p]] = True
    return np.where(keep, x, -np.inf)


def expected(logits, t, k, p):
    """The reference order: temperature, then top-k, then top-p."""
    return softmax(top_p(top_k(logits / t, k), p))


def empirical(logits, key, **kw):
    rows = mx.broadcast_to(mx.array(logits, dtype=mx.float32), (N, len(logits)))
    draws = np.array(sample(rows, key, **kw))
    return np.bincount(draws, minlength=len(logits)) / N


def tv(a, b):
    return 0.5 * np.abs(a - b).sum()


@pytest.mark.parametrize(
    "t,k,p",
    [(1.0, 0, 1.0), (0.7, 0, 1.0), (2.0, 5, 0.7), (1.5, 0, 0.8), (1.0, 3, 1.0), (3.0, 6, 0.5)],
)
def test_draws_follow_the_filtered_softmax(t, k, p):
    got = empirical(LOGITS, mx.random.key(1234), temperature=t, top_k=k, top_p=p)
    assert tv(got, expected(LOGITS, t, k, p)) < 0.015


def test_filter_order_is_temperature_then_top_k_then_top_p():
    t, k, p = 3.0, 5, 0.7
    want = expected(LOGITS, t, k, p)
    # The alternatives differ enough that the bound above would catch them.
    wrong_orders = {
        "top-p before temperature": softmax(top_k(top_p(LOGITS, p) / t, k)),
        "top-p before top-k": softmax(top_k(top_p(LOGITS / t, p), k)),
        "temperature last": softmax(top_p(top_k(LOGITS, k), p) / t),
    }
    for name, dist in wrong_orders.items():
        assert tv(dist, want) > 0.1, name
    got = empirical(LOGITS, mx.random.key(7), temperature=t, top_k=k, top_p=p)
    assert tv(got, want) < 0.015
    for dist in wrong_orders.values():
        assert tv(got, dist) > 0.08


def test_filter_logits_by_hand():
    x = mx.array([[1.0, 3.0, 2.0, 3.0, 0.0]])
    # top-k keeps everything tied with the k-th largest.
    kept = np.isfinite(np.array(filter_logits(x, top_k=2)))
    assert kept.tolist() == [[False, True, False, True, False]]
    # top-p always keeps the most probable entry.
    kept = np.isfinite(np.array(filter_logits(x, top_p=1e-6)))
    assert kept.sum() >= 1 and kept[0, 1] | kept[0, 3]
    np.testing.assert_allclose(np.array(filter_logits(x, temperature=0.5)), np.array(x) * 2)


def test_temperature_zero_and_top_k_one_are_greedy():
    logits = mx.random.normal((4, 8, 1026), key=mx.random.key(3))
    want = np.argmax(np.array(logits), axis=-1)
    np.testing.assert_array_equal(np.array(sample(logits, temperature=0.0)), want)
    np.testing.assert_array_equal(np.array(greedy(logits)), want)
    np.testing.assert_array_equal(
        np.array(sample(logits, mx.random.key(5), temperature=1.3, top_k=1)), want
    )


def test_draws_are_reproducible_and_batched():
    logits = mx.random.normal((2, 8, 1026), key=mx.random.key(0))
    a = sample(logits, mx.random.key(11), temperature=1.0, top_p=0.9)
    b = sample(logits, mx.random.key(11), temperature=1.0, top_p=0.9)
    c = sample(logits, mx.random.key(12), temperature=1.0, top_p=0.9)
    assert a.shape == (2, 8) and a.dtype == mx.int32
    assert mx.array_equal(a, b)
    assert not mx.array_equal(a, c)


def test_masked_codes_are_never_drawn():
    logits = mx.array([0.0, -mx.inf, 0.0, -mx.inf])
    draws = np.array(sample(mx.broadcast_to(logits, (10_000, 4)), mx.random.key(2)))
    assert set(np.unique(draws)) == {0, 2}


def test_sampling_needs_a_key():
    with pytest.raises(ValueError, match="PRNG key"):
        sample(mx.zeros((3, 5)), temperature=1.0)


def test_params_are_validated():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=float("nan"))
    with pytest.raises(ValueError, match="ras_max_repeat"):
        SamplingParams(ras_window=7, ras_max_repeat=0)
    assert SamplingParams(temperature=0).greedy


# Repetition-aware sampling ---------------------------------------------------


def one_hot_logits(codes, V=16, high=50.0):
    x = np.zeros((len(codes), V), np.float32)
    x[np.arange(len(codes)), codes] = high
    return mx.array(x)


def test_ras_redraws_only_codebooks_that_repeat():
    history = mx.array([[1, 2, 1], [3, 3, 4], [7, 7, 7]])
    codes = mx.array([1, 4, 7])
    # The raw logits put all mass on code 9: a redraw can only give 9.
    raw = one_hot_logits([9, 9, 9])
    got = repetition_aware(codes, raw, history, mx.random.key(0), max_repeat=2)
    assert got.tolist() == [9, 4, 9]  # counts 2, 1, 3
    got = repetition_aware(codes, raw, history, mx.random.key(0), max_repeat=3)
    assert got.tolist() == [1, 4, 9]


def test_ras_ignores_empty_slots_and_an_empty_window():
    codes = mx.array([5, 5])
    raw = one_hot_logits([9, 9])
    history = mx.array([[-1, -1, 5], [-1, -1, -1]])
    assert repetition_aware(codes, raw, history, mx.random.key(0), 1).tolist() == [9, 5]
    empty = mx.zeros((2, 0), dtype=mx.int32)
    assert repetition_aware(codes, raw, empty, mx.random.key(0), 1).tolist() == [5, 5]


def test_ras_redraws_from_the_raw_softmax():
    # A repeated code is redrawn from softmax(raw logits), not from the filtered
    # distribution that produced it.
    V = 8
    raw = mx.broadcast_to(mx.array(LOGITS, dtype=mx.float32), (N, 1, V))
    codes = mx.zeros((N, 1), dtype=mx.int32)
    history = mx.zeros((N, 1, 4), dtype=mx.int32)
    got = repetition_aware(codes, raw, history, mx.random.key(9), max_repeat=2)
    freq = np.bincount(np.array(got).ravel(), minlength=V) / N
    assert tv(freq, softmax(LOGITS)) < 0.015


def top_p_by_value(x, p):
    """top_p, where an entry tied with a kept one is kept too (the cut falls between
    values, as top-k's does)."""
    kept = top_p(x, p)
    return np.where(x >= kept[np.isfinite(kept)].min(), x, -np.inf)


@pytest.mark.parametrize(("k", "p"), [(2, 1.0), (4, 1.0), (4, 0.6), (6, 0.9), (0, 0.5)])
def test_ties_follow_the_filtered_softmax(k, p):
    # Values tied with the k-th largest are all kept (top-k keeps ties), however far
    # past k they run: the draw ranks only the top k and counts the rest of the tie;
    # and top-p keeps a value's ties with it.
    logits = np.array([3.0, 1.0, 3.0, 2.0, 0.5, 2.0, 3.0, 2.0, 0.0, 2.0])
    got = empirical(logits, mx.random.key(99), temperature=1.0, top_k=k, top_p=p)
    assert tv(got, softmax(top_p_by_value(top_k(logits, k), p))) < 0.015


def test_a_row_draws_the_same_whatever_its_batch_ranks():
    # A batch ranks the top max(k) entries of every row (all of them when a row has no
    # top-k); a row's draws must not depend on that, ties with its k-th value included
    # (logits on a coarse grid tie often, as bf16 ones do).
    from higgs_sampling import RowSampler, RowState, SamplingParams

    V = 1026
    mine = SamplingParams(temperature=0.6, top_k=20, top_p=0.9, ras_window=4, ras_max_repeat=1)
    others = [
        SamplingParams(temperature=1.0, top_k=50, top_p=0.95, ras_window=7),
        SamplingParams(temperature=0.8, top_k=0, top_p=0.9, ras_window=0),
    ]
    rows = RowSampler(8, 1024, 1025)
    _, alone = rows.start(mine, mx.random.key(7), 400)
    batches = [RowState.concat([rows.start(o, mx.random.key(1), 400)[1], alone]) for o in others]
    assert [b.kmax for b in batches] == [50, 0] and alone.kmax == 20
    for step in range(120):
        grid = mx.round(mx.random.normal((2, 8, V), key=mx.random.key(step)) * 4) / 2
        want, alone = rows.step(grid[1:], alone)
        for i, state in enumerate(batches):
            got, batches[i] = rows.step(grid, state)
            assert mx.array_equal(got[1], want[0]), (step, i)


def test_filter_logits_takes_per_row_settings():
    # One value per row of the leading axes; a row's result is what its own numbers give.
    x = mx.array([[1.0, 3.0, 2.0, 3.0, 0.0], [0.5, 0.1, 2.0, 1.0, 3.0]])
    rows = filter_logits(x, mx.array([1.0, 0.5]), mx.array([2, 0]), mx.array([1.0, 0.6]))
    for i, (t, k, p) in enumerate([(1.0, 2, 1.0), (0.5, 0, 0.6)]):
        alone = filter_logits(x[i : i + 1], temperature=t, top_k=k, top_p=p)
        assert mx.array_equal(rows[i : i + 1], alone)
