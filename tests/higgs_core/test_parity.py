"""The model against transformers' reference: logits from every layout, greedy frames,
and the decode step against the full forward pass."""

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

import higgs_core.model
from higgs_core import generate, load_model
from higgs_sampling import SamplingParams

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "core"
LAYOUTS = ["tiny-transformers", "tiny-original", "tiny-original-sharded"]
GREEDY = SamplingParams(temperature=0, ras_window=0)
K, BOS, EOS = 8, 1024, 1025


def rel_err(ours, want) -> float:
    return float(np.abs(np.asarray(ours) - want).max() / np.abs(want).max())


def test_reference_prompt_reaches_past_1024_positions(ref):
    # llama3 RoPE scaling only shows at long range; the fixture must cover it.
    assert len(ref["input_ids"]) > 1100
    assert ref["rows"].max() > 1100


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_logits_match_the_reference(models, ref, layout):
    text, audio = models[layout].logits(ref["input_ids"][None], ref["audio_ids"][None])
    L = len(ref["input_ids"])
    assert text.shape == (1, L, 640)
    assert audio.shape == (1, L, K, 1026)
    text, audio = np.array(text[0]), np.array(audio[0])
    rows = ref["rows"]
    assert rel_err(text[rows], ref["text_logits_rows"]) <= 1e-4
    assert rel_err(audio[rows], ref["audio_logits_rows"]) <= 1e-4
    # every position, a few columns: the routing of each row is right
    assert rel_err(text[:, ref["text_cols"]], ref["text_logits_cols"]) <= 1e-4
    assert rel_err(audio[:, :, ref["audio_cols"]], ref["audio_logits_cols"]) <= 1e-4


def test_batched_logits_equal_per_row_logits(model, ref):
    ids, audio = ref["input_ids"][:300], ref["audio_ids"]
    n = int(np.isin(ids, [400]).sum())
    shifted = np.roll(audio, 5, axis=0)
    _, one = model.logits(ids[None], audio[None, :n])
    _, two = model.logits(ids[None], shifted[None, :n])
    _, both = model.logits(np.stack([ids, ids]), np.stack([audio[:n], shifted[:n]]))
    assert rel_err(both, np.concatenate([one, two])) < 1e-6
    assert rel_err(one, np.array(two)) > 1e-2  # the audio rows matter


def test_transformers_delay_token_is_an_audio_position(models, ref):
    # transformers marks a clip's last K-1 frames with its delay token; same frames, same logits
    ids = ref["input_ids"][:400].copy()
    n = int((ids == 400).sum())
    delayed = ids.copy()
    delayed[np.flatnonzero(ids == 400)[-(K - 1) :]] = 398
    model = models["tiny-transformers"]
    _, want = model.logits(ids[None], ref["audio_ids"][None, :n])
    _, got = model.logits(delayed[None], ref["audio_ids"][None, :n])
    assert rel_err(got, np.array(want)) < 1e-6


def test_rope_scaling_is_read_from_either_statement(models):
    # Llama-3.2's (32, 1, 4, 8192) and transformers' (32, 0.125, 0.5, 1024) agree
    ours = models["tiny-original"].layers[0].self_attn.rope._freqs
    theirs = models["tiny-transformers"].layers[0].self_attn.rope._freqs
    assert np.allclose(np.array(ours), np.array(theirs), rtol=1e-6)
    plain = 500000.0 ** (np.arange(0, 16, 2) / 16)
    assert not np.allclose(np.array(ours), plain)  # the scaling changes some frequencies


def first_eos(frames: np.ndarray) -> int:
    return int(np.flatnonzero((frames == EOS).any(axis=0))[0])


@pytest.mark.parametrize(
    ("layout", "prefill_step"),
    [(name, 512) for name in LAYOUTS] + [("tiny-original-sharded", 7), ("tiny-original", 4096)],
)
def test_greedy_frames_match_the_reference(models, ref, layout, prefill_step):
    want = ref["greedy_frames"]
    res = generate(
        models[layout],
        ref["input_ids"],
        ref["audio_ids"],
        params=GREEDY,
        max_frames=int(ref["greedy_max_frames"]),
        prefill_step=prefill_step,
    )
    ours = np.array(res.frames)
    e = first_eos(want)
    assert ours.shape[1] > e
    assert (ours[:, : e + 1] == want[:, : e + 1]).all()

    # Ramp-out, the release's way: codebook 0 says EOS at frame e, so frame e + j
    # forces codebooks < j to EOS and the stream ends K - 1 frames later.
    assert want[0, e] == EOS
    assert res.stop_reason == "eos"
    assert ours.shape[1] == e + K
    for j in range(1, K):
        assert (ours[:j, e + j] == EOS).all()
    # transformers agrees up to there, then runs one all-EOS frame longer.
    assert (ours == want[:, : e + K]).all()
    assert (want[:, e + K] == EOS).all()

    # codes: delay reverted, the BOS and EOS columns dropped
    T = e - 1
    expect = np.stack([want[k, 1 + k : 1 + k + T] for k in range(K)])
    assert np.array_equal(np.array(res.codes), expect)


@pytest.mark.parametrize("length", [None, 254])  # 254: the steps cross the cache's 256 block
def test_decode_step_equals_the_full_forward_and_skips_the_text_path(ref, length):
    model = load_model(FIXTURES / "tiny-original", dtype=mx.float32)
    ids = ref["input_ids"][:length]
    audio = ref["audio_ids"][: int((ids == 400).sum())]
    frames = ref["greedy_frames"][:, :3].T  # the BOS frame and two sampled ones
    full_ids = np.concatenate([ids, [400, 400, 400]])
    full_audio = np.concatenate([audio, frames])
    _, want = model.logits(full_ids[None], full_audio[None])

    cache = model.make_cache()
    first = model.prefill(np.append(ids, 400), mx.array(full_audio[: len(audio) + 1]), cache, 256)
    assert rel_err(first, np.array(want[0, -3])) < 1e-5

    # Poison everything only text positions use: a decode step must not touch it.
    nan = lambda x: mx.full(x.shape, mx.nan, x.dtype)  # noqa: E731
    for layer in model.layers:
        for part in (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm):
            part.update(tree_map(nan, part.parameters()))
    for part in (model.embed_tokens, model.audio_decoder_proj.text_lm_head):
        part.update(tree_map(nan, part.parameters()))

    for i in (1, 2):
        got = np.array(model.step(mx.array(frames[i]), cache))
        assert np.isfinite(got).all()
        assert rel_err(got, np.array(want[0, i - 3])) < 1e-5


def test_prefill_sends_each_position_through_one_mlp(ref, monkeypatch):
    model = load_model(FIXTURES / "tiny-original", dtype=mx.float32)
    rows = {"text": 0, "audio": 0}
    call = higgs_core.model.MLP.__call__
    text_mlps = {id(layer.mlp) for layer in model.layers}

    def counting(self, x):
        rows["text" if id(self) in text_mlps else "audio"] += x.shape[1]
        return call(self, x)

    monkeypatch.setattr(higgs_core.model.MLP, "__call__", counting)
    ids = np.append(ref["input_ids"], 400)
    audio = np.concatenate([ref["audio_ids"], np.full((1, K), BOS)])
    model.prefill(ids, mx.array(audio), model.make_cache(), 300)
    n_audio = len(audio)
    assert rows == {"text": (len(ids) - n_audio) * 3, "audio": n_audio * 3}


def test_bfloat16_checkpoint_runs_in_bfloat16(ref):
    model = load_model(FIXTURES / "tiny-original")
    dtypes = {v.dtype for _, v in tree_flatten(model.parameters())}
    assert dtypes == {mx.bfloat16}
    ids = ref["input_ids"][:200]
    n = int((ids == 400).sum())
    _, audio = model.logits(ids[None], ref["audio_ids"][None, :n])
    assert audio.dtype == mx.bfloat16
    assert isinstance(model.audio_decoder_proj.audio_lm_head, nn.Linear)
