"""Write higgs-core's reference fixtures: tiny Higgs Audio v2 checkpoints in every
on-disk layout, and what transformers computes with them.

Run from the repository root, in an environment with torch, transformers >= 5
(``HiggsAudioV2ForConditionalGeneration``) and safetensors:

    "$HIGGS_REF_PYTHON" scripts/make_core_fixtures.py

(scripts/README.md says how to make that environment.)

It rewrites ``tests/fixtures/core/``:

- ``tiny-transformers/``: transformers' layout (flat config, ``codebook_size``
  1026, ``model.``-prefixed names, ``audio_lm_head``/``text_lm_head``).
- ``tiny-original/``: the same weights under the original release's names, with
  an original-style nested config, in one ``model.safetensors``.
- ``tiny-original-sharded/``: the same as two shards plus
  ``model.safetensors.index.json``.
- ``reference.npz``: a prompt of text and three reference clips (1100+
  positions, so llama3 RoPE runs past 1024), float32 logits of the reference
  forward pass (every position for a few columns, whole rows at a few
  positions), and transformers' greedy frames (RAS off) for that prompt.

The model is tiny (hidden 32, 3 layers, 4 query / 2 key-value heads, vocab 640)
with weights scaled up from the default init so attention depends on context.
Weights are rounded to bfloat16 and stored so; the reference runs in float32 on
those exact values. The vocab puts the Llama-3 special tokens at
``384 + (id - 128000)``: <|begin_of_text|> 384, <|eot_id|> 393, <|audio_eos|>
396, <|audio_out_bos|> 397, <|AUDIO|> 399, <|AUDIO_OUT|> 400, pad 385.
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration

SPECIAL = 384  # where the Llama-3 special tokens start in the tiny vocab


def tok(real_id: int) -> int:
    return SPECIAL + real_id - 128000


BEGIN, PAD, EOT = tok(128000), tok(128001), tok(128009)
HEADER_START, HEADER_END = tok(128006), tok(128007)
AUDIO_EOS, AUDIO_OUT_BOS, DELAY, AUDIO_IN, AUDIO_OUT = (
    tok(128012),
    tok(128013),
    tok(128014),
    tok(128015),
    tok(128016),
)
K, CODES = 8, 1024
BOS, EOS = CODES, CODES + 1
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 32, 3, 4, 2, 16, 64, 640
ROOT = Path(__file__).resolve().parents[1]


def transformers_config() -> HiggsAudioV2Config:
    return HiggsAudioV2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        # transformers' statement of Llama-3.2's llama3 scaling
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 0.125,
            "high_freq_factor": 0.5,
            "original_max_position_embeddings": 1024,
        },
        num_codebooks=K,
        codebook_size=CODES + 2,
        audio_token_id=AUDIO_OUT,
        audio_bos_token_id=AUDIO_OUT_BOS,
        audio_delay_token_id=DELAY,
        audio_stream_bos_id=BOS,
        audio_stream_eos_id=EOS,
        pad_token_id=PAD,
        bos_token_id=BEGIN,
        eos_token_id=EOT,
    )


def original_config() -> dict:
    """The release's nested layout, with Llama-3.2's own statement of the RoPE scaling."""
    return {
        "architectures": ["HiggsAudioModel"],
        "model_type": "higgs_audio",
        "text_config": {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": VOCAB,
            "hidden_size": HIDDEN,
            "intermediate_size": FFN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM,
            "hidden_act": "silu",
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "factor": 32.0,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3",
            },
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": BEGIN,
            "eos_token_id": EOT,
            "tie_word_embeddings": True,  # as the release says, though it stores its own head
            "torch_dtype": "bfloat16",
        },
        "audio_encoder_config": {"model_type": "higgs_audio_encoder", "d_model": 32},
        "audio_tokenizer_config": None,
        "audio_adapter_type": "dual_ffn_fast_forward",
        "audio_embed_avg": False,
        "audio_ffn_hidden_size": HIDDEN,
        "audio_ffn_intermediate_size": FFN,
        "audio_dual_ffn_layers": list(range(LAYERS)),
        "audio_decoder_proj_num_layers": 0,
        "encode_whisper_embed": False,
        # As the released config: references may go in the system turn as audio in
        # (--ref-in-system). The reference prompts here hold no audio-in positions, so
        # the flag leaves their logits as they are.
        "encode_audio_in_tokens": True,
        "use_delay_pattern": True,
        "skip_audio_tower": True,
        "use_audio_out_embed_projector": False,
        "use_audio_out_self_attention": False,
        "use_rq_transformer": False,
        "audio_num_codebooks": K,
        "audio_codebook_size": CODES,
        "audio_stream_bos_id": BOS,
        "audio_stream_eos_id": EOS,
        "audio_bos_token": "<|audio_bos|>",
        "audio_eos_token": "<|audio_eos|>",
        "audio_out_bos_token": "<|audio_out_bos|>",
        "audio_in_token": "<|AUDIO|>",
        "audio_out_token": "<|AUDIO_OUT|>",
        "audio_in_token_idx": AUDIO_IN,
        "audio_out_token_idx": AUDIO_OUT,
        "audio_out_bos_token_id": AUDIO_OUT_BOS,
        "audio_eos_token_id": AUDIO_EOS,
        "pad_token_id": PAD,
        "torch_dtype": "bfloat16",
    }


def build_model(seed: int, eos_boost: float) -> HiggsAudioV2ForConditionalGeneration:
    torch.manual_seed(seed)
    model = HiggsAudioV2ForConditionalGeneration(transformers_config(), use_text_head=True)
    model.eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # distinct text/audio norms catch mixed-up routing
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:  # linear: unit-variance outputs, so attention is far from uniform
                p.copy_(1.5 * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
        # Make the stream EOS reachable for greedy decoding of codebook 0.
        model.audio_lm_head.weight[EOS] *= eos_boost
        for p in model.parameters():  # values bfloat16 holds exactly
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def delay_pattern(codes: np.ndarray) -> np.ndarray:
    """[K, T] -> [K, T + 2 + K - 1]: [BOS, codes, EOS], row k shifted right by k."""
    wrapped = np.concatenate([np.full((K, 1), BOS), codes, np.full((K, 1), EOS)], axis=1)
    T = wrapped.shape[1]
    out = np.empty((K, T + K - 1), dtype=np.int64)
    for k in range(K):
        out[k] = np.concatenate([np.full(k, BOS), wrapped[k], np.full(K - 1 - k, EOS)])
    return out


def build_prompt(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A voice-clone-like prompt: turns of text, three reference clips in assistant
    turns, and the opening of a new assistant turn."""

    def text(n):
        return list(rng.integers(0, SPECIAL, n))

    def turn(role, body):
        return [HEADER_START, *role, HEADER_END, *body, EOT]

    ids, clips = [BEGIN, *turn(text(1), text(24))], []
    for frames in (140, 280, 520):
        clip = delay_pattern(rng.integers(0, CODES, (K, frames)))
        clips.append(clip)
        ids += turn(text(1), text(int(rng.integers(10, 30))))
        ids += turn(text(1), [AUDIO_OUT_BOS, *[AUDIO_OUT] * clip.shape[1], AUDIO_EOS])
    ids += turn(text(1), text(40))
    ids += [HEADER_START, *text(1), HEADER_END, *text(2), AUDIO_OUT_BOS]
    audio = np.concatenate(clips, axis=1).T  # [N, K]
    return np.array(ids, dtype=np.int64), audio


@torch.no_grad()
def reference_logits(model, ids: np.ndarray, audio: np.ndarray):
    out = model.model(
        input_ids=torch.from_numpy(ids)[None],
        audio_input_ids=torch.from_numpy(audio)[None],
        audio_input_ids_mask=torch.ones(1, audio.shape[0], dtype=torch.bool),
    )
    h = out.last_hidden_state
    text = model.text_lm_head(h)[0]
    audio_logits = model.audio_lm_head(h)[0].reshape(len(ids), K, CODES + 2)
    return text.numpy(), audio_logits.numpy()


@torch.no_grad()
def greedy_frames(model, ids: np.ndarray, audio: np.ndarray, max_frames: int) -> np.ndarray:
    """transformers' greedy frames [K, F] (frame 0 its forced all-BOS frame), RAS off."""
    out = model.generate(
        input_ids=torch.from_numpy(ids)[None],
        audio_input_ids=torch.from_numpy(audio)[None],
        audio_input_ids_mask=torch.ones(1, audio.shape[0], dtype=torch.bool),
        max_new_tokens=max_frames,
        do_sample=False,
        return_dict_in_generate=True,
    )
    seq = out.audio_sequences[0].numpy()  # prompt frames, then the generated ones
    return seq[audio.shape[0] :].T


def first_eos(frames: np.ndarray) -> int | None:
    hits = np.flatnonzero((frames == EOS).any(axis=0))
    return int(hits[0]) if hits.size else None


def state_dicts(model) -> tuple[dict, dict]:
    """(transformers names, original names) -> bfloat16 tensors."""
    hf = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    original = {}
    for key, value in hf.items():
        if key.startswith("model.embed_audio_tokens.embed_audio_tokens."):
            name = "audio_codebook_embeddings." + key.rsplit(".", 1)[1]
        elif key.startswith("model."):
            name = key[len("model.") :]
        else:  # audio_lm_head / text_lm_head
            name = "audio_decoder_proj." + key
        original[name] = value
    return hf, original


def write_checkpoints(model, out: Path):
    hf, original = state_dicts(model)
    meta = {"format": "pt"}

    d = out / "tiny-transformers"
    d.mkdir(parents=True)
    config = transformers_config().to_dict()
    config["architectures"] = ["HiggsAudioV2ForConditionalGeneration"]
    config["dtype"] = "bfloat16"
    # Not transformers fields; the tiny vocab's ids for what the release names.
    config["audio_in_token_id"] = AUDIO_IN
    config["audio_eos_token_id"] = AUDIO_EOS
    (d / "config.json").write_text(json.dumps(config, indent=2))
    save_file(hf, d / "model.safetensors", metadata=meta)

    d = out / "tiny-original"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(original_config(), indent=2))
    save_file(original, d / "model.safetensors", metadata=meta)

    d = out / "tiny-original-sharded"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(original_config(), indent=2))
    names = sorted(original)
    first = {k for k in names if k.startswith(("embed_tokens", "audio_codebook", "layers.0."))}
    weight_map = {}
    for i, part in enumerate([first, set(names) - first]):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: original[k] for k in sorted(part)}, d / file, metadata=meta)
        weight_map.update(dict.fromkeys(part, file))
    total = sum(v.numel() * v.element_size() for v in original.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/core")
    parser.add_argument("--max-frames", type=int, default=96)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    ids, audio = build_prompt(np.random.default_rng(0))
    assert len(ids) > 1100, len(ids)

    # Pick the first seed whose greedy run ends with an EOS ramp (codebook 0
    # first, the usual case) well after the ramp-in, so both ramps are covered.
    for seed in range(64):
        model = build_model(seed, eos_boost=2.5)
        frames = greedy_frames(model, ids, audio, args.max_frames)
        e = first_eos(frames)
        if e is not None and 16 <= e <= args.max_frames - 16 and frames[0, e] == EOS:
            break
    else:
        raise SystemExit("no seed gave a greedy run that ends; adjust eos_boost")
    print(f"seed {seed}: first EOS at frame {e}, {frames.shape[1]} frames")

    text, audio_logits = reference_logits(model, ids, audio)
    L = len(ids)
    rng = np.random.default_rng(1)
    rows = np.unique(np.r_[np.linspace(0, L - 1, 6).round(), 1023, 1024, 1100, L - 2, L - 1])
    rows = rows.astype(np.int64)
    text_cols = np.sort(rng.choice(VOCAB, 24, replace=False))
    audio_cols = np.r_[np.sort(rng.choice(CODES, 6, replace=False)), BOS, EOS]

    # How much a position's output depends on what came before it.
    changed = ids.copy()
    changed[1:20] = rng.integers(0, SPECIAL, 19)
    _, audio_changed = reference_logits(model, changed, audio)
    spread = np.abs(audio_changed[-1] - audio_logits[-1]).max() / np.abs(audio_logits[-1]).max()
    print(f"last position's audio logits move by {spread:.2%} when tokens 1..19 change")

    if args.out.exists():
        shutil.rmtree(args.out)
    write_checkpoints(model, args.out)
    np.savez_compressed(
        args.out / "reference.npz",
        input_ids=ids,
        audio_ids=audio.astype(np.int32),
        rows=rows,
        text_cols=text_cols,
        audio_cols=audio_cols,
        text_logits_rows=text[rows],
        audio_logits_rows=audio_logits[rows],
        text_logits_cols=text[:, text_cols],
        audio_logits_cols=audio_logits[:, :, audio_cols],
        greedy_frames=frames.astype(np.int32),
        greedy_max_frames=np.int64(args.max_frames),
        seed=np.int64(seed),
    )
    for f in sorted(args.out.rglob("*")):
        if f.is_file():
            print(f"{f.relative_to(ROOT)}: {f.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
