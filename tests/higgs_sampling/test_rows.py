"""RowSampler: rows with settings, seeds and budgets of their own, batched.

The contract: a row's frames are those of a one-stream FrameSampler with the same
settings and key, alone or among other rows, whichever rows join or leave.
"""

import mlx.core as mx
import numpy as np
import pytest

from higgs_sampling import FrameSampler, RowSampler, RowState, SamplingParams

K, B, E = 4, 16, 17
V = 18
SETTINGS = [
    SamplingParams(temperature=0, ras_window=0),
    SamplingParams(temperature=0, ras_window=3, ras_max_repeat=1),
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, ras_window=0),
    SamplingParams(temperature=0.7, top_k=5, top_p=0.9, ras_window=7, ras_max_repeat=2),
    SamplingParams(temperature=1.3, top_k=3, top_p=1.0, ras_window=4, ras_max_repeat=2),
]


def logits_stream(seed, frames):
    """Logits that favour EOS now and then, so streams end at different frames."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(frames, K, V)).astype(np.float32) * 2
    x[:, :, E] -= 3.0
    return mx.array(x)


def one_stream(params, seed, max_frames, logits, history=None):
    fs = FrameSampler(K, B, E, params, max_frames=max_frames)
    _, state = fs.start(mx.random.key(seed), history=history)
    out = []
    for t in range(logits.shape[0]):
        frame, state = fs.step(logits[t], state)
        out.append(frame)
    return mx.stack(out), state


@pytest.mark.parametrize("params", SETTINGS)
def test_one_row_is_a_one_stream_frame_sampler(params):
    logits = logits_stream(1, 40)
    history = mx.array(np.random.default_rng(2).integers(0, B, size=(K, 9)))
    want, fstate = one_stream(params, 5, 30, logits, history)
    rs = RowSampler(K, B, E)
    _, state = rs.start(params, mx.random.key(5), 30, history=history)
    got = []
    for t in range(logits.shape[0]):
        frame, state = rs.step(logits[t][None], state)
        got.append(frame[0])
    assert mx.array_equal(mx.stack(got), want)
    assert state.stop.tolist() == [fstate.stop.item()] and state.pos.tolist() == [fstate.pos.item()]


def test_a_batch_of_mixed_rows_that_join_and_leave():
    # Five rows, each with its own settings, seed, budget and logits. Rows 0-2 start
    # together; row 3 joins at frame 6 and row 4 at frame 11; row 1 leaves at frame 9.
    F = 36
    budgets = [30, 12, 25, 20, 18]
    logits = [logits_stream(10 + i, F) for i in range(5)]
    want = [one_stream(SETTINGS[i], 100 + i, budgets[i], logits[i])[0] for i in range(5)]
    rs = RowSampler(K, B, E)

    def start(i):
        return rs.start(SETTINGS[i], mx.random.key(100 + i), budgets[i])[1]

    rows = [0, 1, 2]
    state = RowState.concat([start(i) for i in rows])
    made = {i: 0 for i in range(5)}
    got = {i: [] for i in range(5)}
    for t in range(F + 11):
        if t == 6:
            rows, state = [*rows, 3], RowState.concat([state, start(3)])
        if t == 9:
            keep = [j for j, r in enumerate(rows) if r != 1]
            rows, state = [rows[j] for j in keep], state.take(keep)
        if t == 11:
            rows, state = [*rows, 4], RowState.concat([state, start(4)])
        if all(made[r] >= F for r in rows):
            break
        batch = mx.stack([logits[r][min(made[r], F - 1)] for r in rows])
        frames, state = rs.step(batch, state)
        for j, r in enumerate(rows):
            if made[r] < F:
                got[r].append(frames[j])
                made[r] += 1
    for r in (0, 2, 3, 4):
        assert mx.array_equal(mx.stack(got[r]), want[r]), r
    assert mx.array_equal(mx.stack(got[1]), want[1][:9])  # up to where it left


def test_concat_pads_the_history_to_the_widest_window():
    rs = RowSampler(K, B, E)
    _, a = rs.start(SamplingParams(ras_window=2), mx.random.key(0), 5)
    _, b = rs.start(SamplingParams(ras_window=5), mx.random.key(1), 5)
    both = RowState.concat([a, b])
    assert both.history.shape == (2, K, 5)
    assert both.history[0, 0].tolist() == [-1, -1, -1, -1, B]
    assert both.window.tolist() == [2, 5] and both.rows == 2
    assert both.take([1]).history.shape == (1, K, 5)


def test_bad_start():
    rs = RowSampler(K, B, E)
    with pytest.raises(ValueError, match="max_frames"):
        rs.start(SamplingParams(), mx.random.key(0), 0)
    with pytest.raises(ValueError, match="codebooks"):
        rs.start(SamplingParams(), mx.random.key(0), 5, history=mx.zeros((K + 1, 3)))


def test_a_rows_last_frame_and_codes_come_from_the_sampler():
    # Codebook 0 says EOS at step 5: the row's last frame is known from then on, as its
    # EOS column plus the largest delay, and the stream ends exactly there; its codes
    # are the release's [:, 1:-1] of the reverted frames, as FrameSampler's.
    sampler = RowSampler(K, B, E, compile=False)
    greedy_ = SamplingParams(temperature=0, ras_window=0)
    first, state = sampler.start(greedy_, mx.random.key(0), max_frames=40)
    frames, known = [first], []
    for t in range(1, 40):
        x = np.zeros((1, K, V), np.float32)
        x[0, :, t % B] = 5.0  # a different code each step
        if t == 5:
            x[0, 0, E] = 10.0
        frame, state = sampler.step(mx.array(x), state)
        frames.append(frame[0])
        known.append(sampler.last_frames(state)[0])
        if state.stop.item():
            break
    assert known[:4] == [None] * 4 and set(known[4:]) == {5 + K - 1}
    assert len(frames) - 1 == 5 + K - 1  # it ended at that frame
    stacked = mx.stack(frames, axis=1)
    want = FrameSampler(K, B, E, greedy_, max_frames=1, compile=False).to_codes(stacked)
    assert mx.array_equal(sampler.to_codes(stacked), want)
    assert sampler.to_codes(stacked).shape == (K, 5 - 1)  # the columns before the EOS one
    assert sampler.to_codes(stacked[:, : K - 1]).shape == (K, 0)  # no whole column yet
