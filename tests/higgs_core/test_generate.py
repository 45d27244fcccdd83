"""The frame loop's contract: streaming, stopping, seeding, RAS history, input checks."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from higgs_core import HiggsAudioModel, generate, generate_frames, load_model, make_prefix
from higgs_sampling import SamplingParams

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "core"
K, BOS, EOS = 8, 1024, 1025
SAMPLED = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, ras_window=7)


@pytest.fixture(scope="module")
def prompt(ref):
    """The reference prompt cut after its first clip, ending with <|audio_out_bos|>."""
    ids = ref["input_ids"]
    cut = int(np.flatnonzero(ids == 396)[0]) + 1  # just past the first clip's <|audio_eos|>
    ids = np.concatenate([ids[:cut], [390, 12, 391, 7, 397]])
    n = int((ids == 400).sum())
    return ids, ref["audio_ids"][:n]


def test_streamed_frames_are_the_result(model, prompt):
    ids, audio = prompt
    gen = generate_frames(model, ids, audio, params=SAMPLED, max_frames=40, seed=3)
    assert gen.result is None
    streamed = []
    for frame in gen:
        assert frame.shape == (K,) and frame.dtype == mx.int32
        streamed.append(np.array(frame))
    res = gen.result
    assert res.stop_reason in ("eos", "max_frames")
    assert res.num_frames == len(streamed) >= 1
    assert (np.array(res.frames[:, 0]) == BOS).all()
    assert np.array_equal(np.stack(streamed, axis=1), np.array(res.frames[:, 1:]))
    assert res.prompt_tokens == len(ids)
    assert res.prefill_seconds > 0 and res.decode_seconds > 0
    # ramp-in: frame n holds BOS on codebooks n..K-1
    frames = np.array(res.frames)
    for n in range(1, min(K, frames.shape[1])):
        assert (frames[n:, n] == BOS).all()
    # and sampling at temperature 1 varies the codes
    assert len(np.unique(frames[0, 1:])) > 3


def test_seeded_runs_repeat_and_seeds_differ(model, prompt):
    ids, audio = prompt
    runs = [
        generate(model, ids, audio, params=SAMPLED, max_frames=20, seed=seed) for seed in (5, 5, 6)
    ]
    a, b, c = (np.array(r.frames) for r in runs)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("max_frames", [1, 5, 12])
def test_max_frames_stops_the_stream(model, ref, max_frames):
    res = generate(
        model,
        ref["input_ids"],
        ref["audio_ids"],
        params=SamplingParams(temperature=0, ras_window=0),
        max_frames=max_frames,
    )
    assert res.stop_reason == "max_frames"
    assert res.num_frames == max_frames
    assert np.array_equal(np.array(res.frames), ref["greedy_frames"][:, : max_frames + 1])
    # Codes exist only for columns every codebook has reached; the BOS column and,
    # as the release does after any stop, the last column are dropped.
    assert res.codes.shape == (K, max(0, max_frames - K))


def test_a_prompt_without_audio_generates(model):
    ids = [384, 390, 5, 391, 11, 12, 13, 393, 390, 6, 391, 397]
    res = generate(model, ids, params=SAMPLED, max_frames=10, seed=1)
    assert res.num_frames == 10 or res.stop_reason == "eos"
    assert res.prompt_tokens == len(ids)


def test_ras_looks_back_over_the_prompt_audio(model, prompt):
    ids, audio = prompt
    gen = generate_frames(model, ids, audio, params=SAMPLED, max_frames=3)
    seen = {}
    sampler = gen.batch.sampler
    start = sampler.start

    def spy(params, key, max_frames, history=None):
        seen["history"] = history
        return start(params, key, max_frames, history)

    sampler.start = spy
    list(gen)
    assert np.array_equal(np.array(seen["history"]), audio.T)


def test_prompt_must_end_with_audio_out_bos(model):
    with pytest.raises(ValueError, match=r"<\|audio_out_bos\|> \(397\)"):
        generate_frames(model, [384, 5, 6], params=SAMPLED, max_frames=4)


def test_every_audio_position_needs_a_frame(model, prompt):
    ids, audio = prompt
    with pytest.raises(ValueError, match=f"{len(audio)} audio positions but {len(audio) - 1}"):
        generate_frames(model, ids, audio[:-1], params=SAMPLED, max_frames=4)
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        generate_frames(model, ids, audio[:, :4], params=SAMPLED, max_frames=4)
    bad = audio.copy()
    bad[3, 2] = 1026
    with pytest.raises(ValueError, match=r"audio codes must lie in 0\.\.1025"):
        generate_frames(model, ids, bad, params=SAMPLED, max_frames=4)
    with pytest.raises(ValueError, match="max_frames"):
        generate_frames(model, ids, audio, params=SAMPLED, max_frames=0)


def test_token_ids_outside_the_vocabulary_are_refused(model, prompt):
    # MLX's embedding lookup does not check its indices: an id past the table read
    # past it (a crash, found with a benchmark's prompt made for the real vocabulary).
    ids, audio = prompt
    vocab = model.config.vocab_size
    for bad_id in (vocab, -1):
        bad = ids.copy()
        bad[2] = bad_id
        with pytest.raises(ValueError, match=rf"token ids must lie in 0\.\.{vocab - 1}"):
            generate_frames(model, bad, audio, params=SAMPLED, max_frames=4)
        with pytest.raises(ValueError, match="token ids must lie in"):
            make_prefix(model, bad[:20])


def test_no_step_runs_past_the_end_of_the_stream(ref, monkeypatch):
    # The stop flag is read back only every few frames, but once the ramp-out
    # shows, the loop knows the last frame and queues nothing beyond it.
    model = load_model(FIXTURES / "tiny-original", dtype=mx.float32)
    calls = []
    step = HiggsAudioModel.step_rows

    def counted(self, frames, caches):
        calls.extend(frames)
        return step(self, frames, caches)

    monkeypatch.setattr(HiggsAudioModel, "step_rows", counted)
    res = generate(
        model,
        ref["input_ids"],
        ref["audio_ids"],
        params=SamplingParams(temperature=0, ras_window=0),
        max_frames=int(ref["greedy_max_frames"]),
    )
    assert res.stop_reason == "eos"
    assert len(calls) == res.num_frames - 1  # frame 1 comes from the prefill
