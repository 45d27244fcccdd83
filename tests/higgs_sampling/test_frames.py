from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest

from higgs_sampling import FrameSampler, SamplingParams, StopReason, build_delay_pattern

B, E = 1024, 1025
V = 1026
GREEDY = SamplingParams(temperature=0.0, ras_window=0)


def logits_for(codes):
    """Logits whose greedy pick is ``codes`` (one per codebook)."""
    x = np.zeros((len(codes), V), np.float32)
    x[np.arange(len(codes)), codes] = 30.0
    return mx.array(x)


def run(wanted, K=4, max_frames=100, delays=None, params=GREEDY, history=None):
    """Feed the machine frames whose sampler picks are ``wanted``; collect what it emits."""
    fs = FrameSampler(K, B, E, params, max_frames=max_frames, delays=delays)
    first, state = fs.start(mx.random.key(0), history=history)
    frames = [first.tolist()]
    for codes in wanted:
        frame, state = fs.step(logits_for(codes), state)
        frames.append(frame.tolist())
        if fs.is_done(state):
            break
    return frames, StopReason(state.stop.item()), state


def release_loop(wanted, K, max_frames):
    """A line-by-line transcription of the Higgs release's delay/EOS handling."""
    frames = [[B] * K]
    num_delay, remaining = 0, None
    for codes in wanted:
        t = list(codes)
        if num_delay + 1 < K:
            t[num_delay + 1 :] = [B] * (K - num_delay - 1)
            num_delay += 1
        if remaining is not None:
            t[: K - remaining] = [E] * (K - remaining)
            remaining -= 1
        else:
            eos_at = [k for k in range(K) if t[k] == E]
            if eos_at:
                i = eos_at[0]
                t[:i] = [E] * i
                remaining = K - i - 1
        frames.append(t)
        if remaining is not None and remaining <= 0:
            return frames, StopReason.EOS
        if len(frames) - 1 >= max_frames:
            return frames, StopReason.MAX_FRAMES
    return frames, StopReason.RUNNING


def test_ramp_in_then_eos_on_codebook_zero():
    x = 7
    wanted = [[x] * 4] * 5 + [[E, x, x, x]] + [[x] * 4] * 10
    frames, stop, _ = run(wanted)
    assert frames == [
        [B, B, B, B],  # synthetic
        [x, B, B, B],  # ramp-in
        [x, x, B, B],
        [x, x, x, B],
        [x, x, x, x],
        [x, x, x, x],
        [E, x, x, x],  # first EOS, lowest codebook 0
        [E, x, x, x],  # ramp-out: codebooks 0..K-r-1 forced
        [E, E, x, x],
        [E, E, E, x],  # r reaches 0: the last frame, K-1 frames after the first EOS
    ]
    assert stop == StopReason.EOS


def test_eos_on_a_middle_codebook_pulls_lower_ones_along():
    x = 7
    wanted = [[x] * 4] * 5 + [[x, x, E, x]] + [[x] * 4] * 10
    frames, stop, _ = run(wanted)
    assert frames[6:] == [
        [E, E, E, x],  # codebooks below the EOS one join at once
        [E, E, E, x],  # ends K-1-2 = 1 frame later
    ]
    assert stop == StopReason.EOS


def test_eos_on_the_last_codebook_ends_at_once():
    x = 7
    wanted = [[x] * 4] * 5 + [[x, E, x, E]] + [[x] * 4] * 5
    frames, stop, _ = run(wanted)
    # Codebook 1 is the lowest EOS: ramp of 2 frames.
    assert frames[6:] == [[E, E, x, E], [E, E, x, x], [E, E, E, x]]
    frames, stop, _ = run([[x] * 4] * 5 + [[x, x, x, E]] + [[x] * 4])
    assert frames[6:] == [[E, E, E, E]]
    assert len(frames) == 7 and stop == StopReason.EOS


def test_eos_during_ramp_in():
    x = 7
    # Frame 2: codebooks 0 and 1 are free, 2 and 3 still forced to BOS.
    frames, stop, _ = run([[x] * 4, [x, E, E, E], [x] * 4, [x] * 4, [x] * 4])
    assert frames[1:] == [
        [x, B, B, B],
        [E, E, B, B],  # the EOS on forced codebooks 2, 3 is overwritten by BOS
        [E, E, x, B],  # ramp-in and ramp-out overlap: BOS above, EOS below
        [E, E, E, x],
    ]
    assert stop == StopReason.EOS
    # An EOS that lands only on a BOS-forced codebook does not count.
    frames, stop, _ = run([[x, E, E, E]] + [[x] * 4] * 4, max_frames=5)
    assert frames[1] == [x, B, B, B]
    assert all(E not in f for f in frames)
    assert stop == StopReason.MAX_FRAMES


def test_max_frames_stop_and_steps_after_the_stop():
    x = 3
    fs = FrameSampler(4, B, E, GREEDY, max_frames=6)
    _, state = fs.start(mx.random.key(0))
    frames = []
    for _ in range(9):
        frame, state = fs.step(logits_for([x] * 4), state)
        frames.append(frame.tolist())
    assert frames[5] == [x] * 4
    assert frames[6:] == [[E] * 4] * 3  # a stopped stream only pads
    assert state.pos.item() == 7  # frames 0..6 are the stream
    assert StopReason(state.stop.item()) == StopReason.MAX_FRAMES
    assert StopReason.MAX_FRAMES.label == "max_frames"


def test_matches_a_transcription_of_the_release_on_random_streams():
    rng = np.random.default_rng(0)
    for trial in range(60):
        K = int(rng.integers(2, 9))
        max_frames = int(rng.integers(1, 40))
        p_eos = rng.choice([0.0, 0.02, 0.1, 0.4])
        wanted = rng.integers(0, 50, size=(60, K))
        wanted[rng.random((60, K)) < p_eos] = E
        wanted[rng.random((60, K)) < 0.05] = B
        want, want_stop = release_loop(wanted.tolist(), K, max_frames)
        got, got_stop, _ = run(wanted.tolist(), K=K, max_frames=max_frames)
        assert got == want, f"trial {trial}"
        assert got_stop == want_stop, f"trial {trial}"


def test_custom_delays_follow_the_eos_column():
    # Dia-style delays: the EOS column of the undelayed stream reaches codebook k
    # d_k frames after codebook 0.
    delays = [0, 2, 3]
    x = 5
    wanted = [[x] * 3] * 6 + [[E, x, x]] + [[x] * 3] * 6
    frames, stop, _ = run(wanted, K=3, delays=delays)
    assert frames[:4] == [[B] * 3, [x, B, B], [x, B, B], [x, x, B]]
    # First EOS on codebook 0 at frame 7: column e = 7; codebook k is EOS from 7 + d_k.
    assert frames[7:] == [[E, x, x], [E, x, x], [E, x, x], [E, E, x]]
    assert stop == StopReason.EOS
    fs = FrameSampler(3, B, E, GREEDY, max_frames=50, delays=delays)
    codes = fs.to_codes(mx.array(frames).T)
    assert codes.shape == (3, 6)  # 11 frames - 3 (delay) - BOS column - EOS column


def test_to_codes_inverts_a_built_pattern():
    rng = np.random.default_rng(1)
    codes = mx.array(rng.integers(0, 1024, size=(8, 13)))
    delayed = build_delay_pattern(codes, B, E)  # [BOS-col, codes, EOS-col], delayed
    fs = FrameSampler(8, B, E, GREEDY, max_frames=100)
    assert mx.array_equal(fs.to_codes(delayed), codes)
    # The release drops the last column whatever the stop ([:, 1:-1] in
    # examples/generation.py): a budget stop one frame short of the EOS column
    # loses the last code column, which its ramp-out never finished.
    assert mx.array_equal(fs.to_codes(delayed[:, :-1]), codes[:, :-1])
    # Stray specials are clipped into the codebook.
    assert fs.to_codes(mx.full((8, 12), E)).max().item() == 1023


def test_batched_streams_stop_independently():
    K = 3
    fs = FrameSampler(K, B, E, GREEDY, max_frames=20)
    first, state = fs.start(mx.random.key(0), batch_shape=(2,))
    assert first.shape == (2, K)
    x = 4
    out = []
    for p in range(1, 12):
        a = [E, x, x] if p == 4 else [x] * K
        b = [E, x, x] if p == 8 else [x] * K
        frame, state = fs.step(mx.stack([logits_for(a), logits_for(b)]), state)
        out.append(frame.tolist())
    assert state.stop.tolist() == [StopReason.EOS, StopReason.EOS]
    assert state.pos.tolist() == [7, 11]
    assert out[3][0] == [E, x, x] and out[5][0] == [E, E, x] and out[6][0] == [E] * 3
    assert out[7][1] == [E, x, x] and out[9][1] == [E, E, x]


def test_ras_sees_the_prompt_history_and_its_own_frames():
    # With K = 1 and no delay, RAS alone decides. The prompt already holds code 5
    # twice in the window, so a greedy pick of 5 is redrawn from the raw logits.
    params = SamplingParams(temperature=0.0, ras_window=4, ras_max_repeat=2)
    fs = FrameSampler(1, B, E, params, max_frames=10)
    raw = np.full((1, V), -30.0, np.float32)
    raw[0, 5], raw[0, 6] = 10.0, 9.0  # greedy picks 5; a raw redraw is 5 or 6
    history = mx.array([[5, 5, 1, 2, 3, 4]])  # only the last 4 - 1 prompt codes count
    _, state = fs.start(mx.random.key(0), history=history)
    assert state.history.tolist() == [[2, 3, 4, B]]
    frame, state = fs.step(mx.array(raw), state)
    assert frame.tolist() == [5]  # 5 is not in the window yet
    frame, state = fs.step(mx.array(raw), state)
    assert frame.tolist() == [5]  # one earlier 5: below the limit of 2
    picks = []
    for _ in range(200):
        f, s = fs.step(mx.array(raw), state)
        picks.append(f.item())
        state = replace(state, key=s.key)  # same window, fresh randomness
    # Two 5s in the window: every pick is a raw redraw, 5 with p = 1/(1+e^-1).
    share = picks.count(5) / len(picks)
    assert set(picks) == {5, 6}
    assert abs(share - 1 / (1 + np.exp(-1))) < 0.1


def test_seeded_runs_are_reproducible():
    params = SamplingParams(temperature=1.0, top_p=0.9, ras_window=7)
    logits = mx.random.normal((8, V), key=mx.random.key(3)) * 3

    def go(seed):
        fs = FrameSampler(8, B, E, params, max_frames=30)
        _, state = fs.start(mx.random.key(seed))
        out = []
        for _ in range(30):
            frame, state = fs.step(logits, state)
            out.append(frame)
        return mx.stack(out)

    assert mx.array_equal(go(1), go(1))
    assert not mx.array_equal(go(1), go(2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_frames"):
        FrameSampler(4, B, E, max_frames=0)
    fs = FrameSampler(4, B, E, max_frames=3)
    with pytest.raises(ValueError, match="codebooks"):
        fs.start(mx.random.key(0), history=mx.zeros((3, 5), dtype=mx.int32))
