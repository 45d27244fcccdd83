"""The batch contract: each stream's frames are those of its single-stream run
(same prompt, settings and seed), whoever shares the batch, joins or leaves."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from higgs_core import (
    Batch,
    Finished,
    Frames,
    PrefixReady,
    Status,
    generate,
    load_model,
    make_prefix,
)
from higgs_sampling import SamplingParams

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "core"
K = 8
GREEDY = SamplingParams(temperature=0, ras_window=0)
SAMPLED = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, ras_window=7)
WARM = SamplingParams(temperature=0.6, top_k=20, top_p=0.9, ras_window=4, ras_max_repeat=1)


def prompts(ref):
    """Five prompts of different lengths and audio, cut from the reference prompt."""
    ids, audio = ref["input_ids"], ref["audio_ids"]
    ends = np.flatnonzero(ids == 396)  # <|audio_eos|> after each clip
    out = []
    for i, (cut, tail) in enumerate(
        [(ends[0], [12, 7]), (ends[1], [5]), (ends[2], [9, 9, 4]), (40, [3]), (ends[0], [8, 6])]
    ):
        p = np.concatenate([ids[: cut + 1], [390, *tail, 391, 397]])
        out.append((p, audio[: int((p == 400).sum())] if (p == 400).any() else None, i))
    return out


def settings(i):
    return [GREEDY, SAMPLED, WARM, SAMPLED, GREEDY][i % 5]


def alone(model, ids, audio, i, max_frames, processor=None):
    return generate(
        model,
        ids,
        audio,
        params=settings(i),
        max_frames=max_frames,
        seed=100 + i,
        logits_processor=processor,
    )


def no_eos(model):
    """A logits processor that rules stream EOS out: a stream runs to its budget
    (the tiny model's random weights end streams after a few frames, at random)."""
    eos = model.config.audio_stream_eos_id

    def push(frame, logits):
        return logits + mx.where(mx.arange(logits.shape[-1]) == eos, -1e4, 0.0)

    return push


@pytest.mark.parametrize("max_batch", [1, 3, 8])
def test_batched_streams_equal_their_single_runs(model, ref, max_batch):
    check_batched_equal_alone(model, ref, max_batch)


def test_on_stock_mlx_too(ref, monkeypatch):
    # What Metal and CUDA run: MLX's own linear, attention and RoPE (no CPU kernels).
    monkeypatch.setenv("HIGGS_KERNELS", "0")
    stock = load_model(FIXTURES / "tiny-original-sharded", dtype=mx.float32)
    assert stock.kernels.startswith("stock MLX")
    check_batched_equal_alone(stock, ref, 3)


def check_batched_equal_alone(model, ref, max_batch):
    budgets = [30, 18, 25, 40, 12]
    ps = prompts(ref)
    want = [alone(model, ids, audio, i, budgets[i]) for ids, audio, i in ps]
    batch = Batch(model, max_batch=max_batch, join_chunk=512)  # whole prompts join at once
    streams = [
        batch.submit(ids, audio, params=settings(i), max_frames=budgets[i], seed=100 + i)
        for ids, audio, i in ps
    ]
    peak = 0
    while batch.busy:
        batch.step()
        peak = max(peak, batch.running)
    assert peak == min(max_batch, len(ps))
    for s, w in zip(streams, want, strict=True):
        assert s.result.stop_reason == w.stop_reason
        assert mx.array_equal(s.result.frames, w.frames)  # float32: identical codes
        assert mx.array_equal(s.result.codes, w.codes)
    assert not batch.busy and batch.waiting == 0
    assert all(s.status is Status.FINISHED for s in streams)


def test_a_newcomer_joins_between_frames_and_cancelling_removes_only_its_row(model, ref):
    # a: a short prompt and a long take; b: a prompt that joins while a decodes, cancelled
    # mid-take; c: submitted once a runs, it joins behind b while a and b decode.
    ps = prompts(ref)
    A, B, C = ps[3], ps[4], ps[0]
    run_on = no_eos(model)  # each stream runs to its budget, so that they overlap
    want = {i: alone(model, ids, audio, i, 40, run_on) for ids, audio, i in (A, B, C)}
    batch = Batch(model, max_batch=8, prefill_chunk=32, join_chunk=16)

    def submit(p):
        ids, audio, i = p
        return batch.submit(
            ids, audio, params=settings(i), max_frames=40, seed=100 + i, logits_processor=run_on
        )

    a, b = submit(A), submit(B)
    c = None
    frames: dict = {a: 0, b: 0}  # frames each stream's events handed out so far
    a_while_c_joins = []  # a's frame count at each step while c waits to join
    c_chunks = []  # c's prefilled positions per step, and whether any stream ran
    rows = []  # rows decoded at each step
    c_joined_with = b_left_from = None  # rows of the step c made its first frame in, ...
    for _ in range(300):
        if not batch.busy:
            break
        c_done = c.prefilled if c is not None else 0
        c_had = frames.get(c, 0)
        for event in batch.step():
            if isinstance(event, Frames):
                frames[event.ticket] += len(event.frames)
                assert event.count == frames[event.ticket]
        rows.append(batch.running)
        if c is not None and not frames[c]:
            if c.prefilled > c_done:  # (it waits behind b first)
                # the streams running when the step prefilled (c has not joined)
                c_chunks.append((c.prefilled - c_done, batch.running > 0))
            if a.status is not Status.FINISHED:
                a_while_c_joins.append(frames[a])
        if c is not None and frames[c] and not c_had:
            c_joined_with = batch.running
        if c is None and frames[a] >= 2:
            c = submit(C)
            frames[c] = 0
            joined_at = frames[a] + 1
        if frames[b] == 8 and b.status is not Status.FINISHED:
            b_left_from = batch.running  # the rows of the step before b goes
            b.cancel()
    # The steps really carried several rows: c joined a batch that was decoding others,
    # and b left a batch that went on with the rest.
    assert c_joined_with is not None and c_joined_with >= 2, rows
    assert b_left_from is not None and b_left_from >= 2, rows
    # While c waited (behind b's prompt, then its own), a made a frame at every step;
    # c's prompt went in 16 positions a step while streams ran (its last chunk being
    # what was left).
    assert len(a_while_c_joins) >= 4
    assert np.all(np.diff(a_while_c_joins) == 1)
    assert {n for n, running in c_chunks[:-1] if running} == {16}
    assert b.result.stop_reason == "cancelled"
    assert mx.array_equal(b.result.frames, want[B[2]].frames[:, : b.result.frames.shape[1]])
    assert 9 <= b.result.frames.shape[1] <= 11  # read up to a step after the cancel
    assert mx.array_equal(a.result.frames, want[A[2]].frames)
    assert mx.array_equal(c.result.frames, want[C[2]].frames)
    assert joined_at < a.result.frames.shape[1]  # c ran alongside a
    # KV memory freed, though the tickets are still held
    assert b._stream.cache == [] and a._stream.cache == [] and c._stream.cache == []


def test_a_cached_prefix_gives_the_uncached_logits(model, ref):
    ids, audio = ref["input_ids"], ref["audio_ids"]
    cut = int(np.flatnonzero(ids == 396)[1]) + 1  # after the second clip
    prefix = make_prefix(model, ids[:cut], audio[: int((ids[:cut] == 400).sum())])
    assert prefix.length == cut and prefix.nbytes == cut * model.kv_bytes_per_position
    full = model.make_cache()
    want = model.prefill(ids, mx.array(audio), full, 512)
    cache = prefix.fresh_cache()
    got = model.prefill(ids, mx.array(audio), cache, 512, start=prefix.length)
    # float32; the cached run only splits the prompt differently.
    assert np.abs(np.array(got) - np.array(want)).max() <= 1e-4 * np.abs(np.array(want)).max()
    # The prefix itself is untouched by the streams that start from it.
    again = prefix.fresh_cache()
    assert all(c.offset == prefix.length for c in again)
    # And a stream started from it makes the uncached stream's frames.
    res = generate(model, ids, audio, params=GREEDY, max_frames=20, prefix=prefix)
    plain = generate(model, ids, audio, params=GREEDY, max_frames=20)
    assert res.cached_tokens == cut and plain.cached_tokens == 0
    assert mx.array_equal(res.frames, plain.frames)


def test_a_prefix_that_does_not_fit_is_refused(model, ref):
    ids, audio = ref["input_ids"], ref["audio_ids"]
    prefix = make_prefix(model, ids[:30])
    other = ids.copy()
    other[5] = 7
    batch = Batch(model)
    with pytest.raises(ValueError, match="not the beginning"):
        batch.submit(other, audio, params=GREEDY, max_frames=4, prefix=prefix)


def test_a_prefix_whose_audio_differs_is_refused(model, ref):
    # Same ids, other codes at the audio positions: the KV state would be another clip's.
    ids, audio = ref["input_ids"], ref["audio_ids"]
    cut = int(np.flatnonzero(ids == 396)[0]) + 1  # after the first clip
    n = int((ids[:cut] == 400).sum())
    prefix = make_prefix(model, ids[:cut], audio[:n])
    other = audio.copy()
    other[n // 2, 3] = (other[n // 2, 3] + 1) % 1024
    batch = Batch(model)
    with pytest.raises(ValueError, match="audio is not this prompt's"):
        batch.submit(ids, other, params=GREEDY, max_frames=4, prefix=prefix)
    # the prompt's own audio is taken (past the prefix, the audio may differ)
    other = audio.copy()
    other[n:] = (other[n:] + 1) % 1024
    s = batch.submit(ids, other, params=GREEDY, max_frames=2, prefix=prefix)
    assert s.cached == cut


def test_bad_batch_arguments(model):
    with pytest.raises(ValueError, match="max_batch"):
        Batch(model, max_batch=0)
    with pytest.raises(ValueError, match="prefill_chunk"):
        Batch(model, prefill_chunk=0)
    with pytest.raises(ValueError, match="join_chunk"):
        Batch(model, join_chunk=-1)


@pytest.mark.parametrize(("bits", "rows"), [(0, 5), (8, 5), (4, 5), (0, 16), (8, 16), (4, 64)])
def test_bf16_and_quantized_rows_equal_their_single_runs_on_the_cpu_kernels(bits, rows):
    # higgs-kernels' linear layers sum every row in one order whatever the call's row
    # count (tests/higgs_kernels), so on them the contract is exact in bf16 and in
    # quantized weights too; stock MLX promises no such thing. The model is wide
    # enough (512) for every kernel path, int8 x for 4 bits included, and its random
    # weights make logits flat, so a rounding that differed would change codes. Up to
    # 64 rows, the most --max-batch allows: no decode step may take a prefill path.
    from higgs_core import ModelConfig
    from higgs_core.bench import TINY_TOKENIZER_IDS, build

    config = ModelConfig(
        hidden_size=512,
        intermediate_size=1024,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        vocab_size=512,
        **TINY_TOKENIZER_IDS,
    )
    model = build(2, mx.bfloat16, bits, 64, config)
    if not model.kernels.startswith("higgs-kernels"):
        pytest.skip(f"not on higgs-kernels: {model.kernels}")
    rng = np.random.default_rng(bits + rows)
    ps = []
    for i in range(rows):
        n = [20, 33, 41, 27, 50][i % 5]
        frames = n // 2
        ids = [384, *rng.integers(0, 380, 5), 397, *[400] * frames, 396]
        ids += [*rng.integers(0, 380, n - len(ids) - 1), 397]
        ps.append((np.array(ids), rng.integers(0, 1024, (frames, K)).astype(np.int32), i))
    budgets = [[24, 18, 24, 30, 12][i % 5] if rows <= 16 else 10 + i % 4 for i in range(rows)]
    want = [alone(model, ids, audio, i, budgets[i]) for ids, audio, i in ps]
    batch = Batch(model, max_batch=rows)
    streams = [
        batch.submit(ids, audio, params=settings(i), max_frames=budgets[i], seed=100 + i)
        for ids, audio, i in ps
    ]
    batch.run()
    for i, (s, w) in enumerate(zip(streams, want, strict=True)):
        assert mx.array_equal(s.result.frames, w.frames), (bits, i)


def test_a_step_reports_frames_then_the_result_and_the_prefix_to_keep(model, ref):
    # Every frame of a stream comes out once, in order, before its Finished event;
    # the frames a caller collects from the events are its result's.
    ps = prompts(ref)
    batch = Batch(model, max_batch=3, prefill_chunk=24)
    ids, audio, _ = ps[1]
    cut = int(np.flatnonzero(ids == 396)[0]) + 1  # after the first clip
    keep = batch.submit(ids, audio, params=SAMPLED, max_frames=30, seed=7, keep_prefix=cut)
    others = [
        batch.submit(q, qa, params=settings(j), max_frames=20, seed=j) for q, qa, j in ps[2:4]
    ]
    seen: dict = {t: [] for t in [keep, *others]}
    finished: dict = {}
    prefixes = []
    while batch.busy:
        for event in batch.step():
            assert event.ticket not in finished  # nothing after a stream's Finished
            if isinstance(event, Frames):
                seen[event.ticket] += event.frames
                assert event.count == len(seen[event.ticket])
                assert event.count <= event.last <= 30
            elif isinstance(event, PrefixReady):
                prefixes.append((event.ticket, event.prefix))
            else:
                assert isinstance(event, Finished)
                finished[event.ticket] = event.result
                assert event.result is event.ticket.result
    assert set(finished) == set(seen)
    for ticket, frames in seen.items():
        result = finished[ticket]
        assert result.num_frames == len(frames)
        assert mx.array_equal(mx.stack(frames, axis=1), result.frames[:, 1:])
    # keep_prefix: its prompt's first `cut` positions, once; they start the same prompt
    # again to the same frames.
    assert [t for t, _ in prefixes] == [keep]
    prefix = prefixes[0][1]
    assert prefix.length == cut and np.array_equal(prefix.ids, ids[:cut])
    again = generate(model, ids, audio, params=SAMPLED, max_frames=30, seed=7, prefix=prefix)
    assert again.cached_tokens == cut
    assert mx.array_equal(again.frames, finished[keep].frames)


def test_a_logits_processor_steers_its_own_stream_only(model, ref):
    # The seam tests steer generation with: a processor that rules stream EOS out
    # before frame 6 and makes it certain on codebook 0 from then on ends that stream
    # by the delay ramp-out (EOS then shows on codebook k a frame later each), while
    # the stream beside it is its single run.
    ps = prompts(ref)
    eos, K_ = model.config.audio_stream_eos_id, model.config.num_codebooks
    calls = []

    def end_at_six(frame, logits):
        calls.append(frame)
        K, V = logits.shape
        is_eos = mx.arange(V)[None, :] == eos
        if frame >= 6:
            return logits + mx.where(is_eos & (mx.arange(K)[:, None] == 0), 1e4, 0.0)
        return logits + mx.where(is_eos, -1e4, 0.0)

    (ids, audio, _), (oids, oaudio, j) = ps[0], ps[3]
    want = alone(model, oids, oaudio, j, 30)
    batch = Batch(model, max_batch=2)
    steered = batch.submit(
        ids, audio, params=GREEDY, max_frames=40, seed=1, logits_processor=end_at_six
    )
    other = batch.submit(oids, oaudio, params=settings(j), max_frames=30, seed=100 + j)
    batch.run()
    res = steered.result
    assert res.stop_reason == "eos"
    assert res.num_frames == 6 + K_ - 1  # frame 6's EOS, then the ramp-out of the others
    assert np.array(res.frames[0, 6]) == eos
    assert calls == list(range(1, res.num_frames + 1))  # once per frame, first included
    assert mx.array_equal(other.result.frames, want.frames)
