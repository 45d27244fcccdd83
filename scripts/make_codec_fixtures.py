"""Write the higgs-codec reference fixtures from transformers' HiggsAudioV2TokenizerModel.

Run from the repository root with the reference environment (PyTorch, torchaudio,
transformers 5.x):

    "$HIGGS_REF_PYTHON" scripts/make_codec_fixtures.py

(scripts/README.md says how to make that environment.)

It builds a tiny random `HiggsAudioV2TokenizerModel` with the real layer structure
(DAC acoustic encoder/decoder with ratios [8, 5, 4, 2, 3], HuBERT with the real conv
feature extractor and a 128-tap positional conv, the ELU semantic encoder, 8 RVQ
quantizers of 1024 codes) but small widths, gives every weight a random value
(codebooks and Snake alphas included), and writes under tests/fixtures/codec/:

- tiny/           the model in the transformers layout (config.json + model.safetensors);
                  the CLI's end-to-end tests use it too.
- original/       the same weights in the original release's layout: an original
                  config.json and a torch-pickled model.pth with weight-norm g/v pairs
                  and the original key names; original/hubert/config.json stands in for
                  the separately fetched HuBERT repository (bosonai/hubert_base), whose
                  config the original code reads (the weights live in model.pth).
- hostile/        a model.pth whose pickle would run code when unpickled naively.
- reference.npz   input waves, resampled waves, semantic features, encoder outputs,
                  codes and decoded waves for a few awkward lengths and sample rates,
                  plus torchaudio resampling references.

Encoding follows the original release's glue (no right padding; when the acoustic and
semantic frame counts differ, the acoustic encoder is re-run on the wave padded by
160 * semantic_downsample_factor samples on each side, then both are cut to the shorter),
computed with transformers' modules. Where no padding is needed this equals
transformers' own `encode`, which the script checks.
"""

import io
import json
import math
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from transformers import (
    DacConfig,
    HiggsAudioV2TokenizerConfig,
    HiggsAudioV2TokenizerModel,
    HubertConfig,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "codec"
SEED = 1234

HOSTILE_ENV = "HIGGS_CODEC_HOSTILE_PICKLE_RAN"


def tiny_config():
    hubert = HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=[16] * 7,
        mask_time_prob=0.0,
    )
    acoustic = DacConfig(
        encoder_hidden_size=2,
        downsampling_ratios=[8, 5, 4, 2, 3],
        decoder_hidden_size=64,
        upsampling_ratios=[8, 5, 4, 2, 3],
        hidden_size=16,
    )
    config = HiggsAudioV2TokenizerConfig(
        target_bandwidths=[0.5, 1, 1.5, 2],
        codebook_dim=8,
        codebook_size=1024,
        acoustic_model_config=acoustic,
        semantic_model_config=hubert,
    )
    assert config.num_quantizers == 8 and config.frame_rate == 25 and config.hop_length == 960
    return config


# Weight scale relative to 1/sqrt(fan_in). At 1 the decoder's 30-odd layers amplify
# float32 rounding to ~1e-4 of the output (torch against itself in float64); at 0.5 the
# output stays at audio scale (~0.3) and torch's own float32 error is ~1e-6, so the
# 1e-4 parity bar measures the port, not the fixture's conditioning.
GAIN = 0.5


def randomize(model):
    """Random weights everywhere (GAIN / sqrt(fan_in)), random Snake alphas and biases."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(0.3 + 2.7 * torch.rand(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                # a transposed conv [in, out, k = 2 * stride] feeds each output 2 taps per input
                fan_in = 2 * p.shape[0] if "conv_t1" in name else p[0].numel()
                p.copy_(GAIN * torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    return g


def fit_codebooks(model, waves, g):
    """Random codebooks sized to each stage's residual so that every stage quantizes."""
    with torch.no_grad():
        residual = torch.cat([encode_embeddings(model, w)[0] for w in waves], dim=-1)
        for vq in model.quantizer.quantizers:
            z = vq.project_in(residual.transpose(1, 2))
            mean = z.reshape(-1, z.shape[-1]).mean(0)
            std = z.reshape(-1, z.shape[-1]).std(0)
            embed = mean + std * torch.randn(vq.codebook.embed.shape, generator=g)
            vq.codebook.embed.copy_(embed)
            vq.codebook.embed_avg.copy_(embed)
            vq.codebook.cluster_size.copy_(torch.rand(vq.codebook.cluster_size.shape, generator=g))
            residual = residual - vq.decode(vq.codebook.encode(z))


def encode_embeddings(model, wave24):
    """The original release's encode glue on transformers' modules: returns
    (fc output [1, H, T], semantic features [1, T, S], semantic encoder output, acoustic)."""
    x = wave24[None, None]
    semantic = model._extract_semantic_features(x)
    e_semantic = model.encoder_semantic(semantic.transpose(1, 2))
    e_acoustic = model.acoustic_encoder(x)
    if e_acoustic.shape[2] != e_semantic.shape[2]:
        pad = 160 * model.config.semantic_downsample_factor
        e_acoustic = model.acoustic_encoder(F.pad(x, (pad, pad)))
    frames = min(e_acoustic.shape[2], e_semantic.shape[2])
    e_acoustic, e_semantic = e_acoustic[..., :frames], e_semantic[..., :frames]
    embeddings = torch.cat([e_acoustic, e_semantic], dim=1)
    embeddings = model.fc(embeddings.transpose(1, 2)).transpose(1, 2)
    return embeddings, semantic[:, :frames], e_semantic, e_acoustic


def test_signal(n, sr, channels, seed):
    """Speech-like test audio: a few gliding harmonics, an envelope, a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    out = []
    for c in range(channels):
        f0 = 110 + 60 * c + 40 * np.sin(2 * np.pi * 1.3 * t)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, 6))
        x *= 0.5 + 0.5 * np.sin(2 * np.pi * 2.1 * t + c) ** 2
        x += 0.02 * rng.standard_normal(n)
        out.append(0.3 * x / np.max(np.abs(x)))
    return np.stack(out).astype(np.float32)


# name: (sample rate, channels, samples)
CASES = {
    "mono24k_25f": (24000, 1, 24017),
    "mono24k_20f": (24000, 1, 19200),
    "mono24k_short": (24000, 1, 1500),
    "mono24k_pad": (24000, 1, 30011),
    "stereo16k": (16000, 2, 20011),
    "stereo44k": (44100, 2, 33333),
}

RESAMPLE_PAIRS = [(44100, 24000), (16000, 24000), (24000, 16000), (8000, 24000), (48000, 24000)]
RESAMPLE_PAIRS += [(22050, 24000)]


def original_state_dict(model):
    """The model's weights under the original release's key names, weight norm unfolded."""
    inner = ["snake1", "conv1", "snake2", "conv2"]
    out = OrderedDict()
    g = torch.Generator().manual_seed(SEED + 1)

    def weight_norm(key, w):
        # the DAC layers use torch.nn.utils.weight_norm (dim 0): weight = g * v / |v|
        scale = 0.5 + torch.rand((w.shape[0],) + (1,) * (w.dim() - 1), generator=g)
        v = w * scale
        out[key + ".weight_g"] = w.flatten(1).norm(dim=1).reshape(scale.shape).clone()
        out[key + ".weight_v"] = v.clone()

    for key, value in model.state_dict().items():
        value = value.detach().clone()
        parts = key.split(".")
        if key.startswith(("acoustic_encoder.", "acoustic_decoder.")):
            enc = parts[0] == "acoustic_encoder"
            top, body = ("encoder.block", parts[1:]) if enc else ("decoder_2.model", parts[1:])
            if body[0] == "block":
                b = int(body[1]) + 1
                if body[2].startswith("res_unit"):
                    u = int(body[2][-1]) - 1 if enc else int(body[2][-1]) + 1
                    layer = inner.index(body[3])
                    path = f"{top}.{b}.block.{u}.block.{layer}"
                    rest = body[4:]
                elif enc:
                    path = f"{top}.{b}.block.{ {'snake1': 3, 'conv1': 4}[body[2]] }"
                    rest = body[3:]
                else:
                    path = f"{top}.{b}.block.{ {'snake1': 0, 'conv_t1': 1}[body[2]] }"
                    rest = body[3:]
            else:
                path = f"{top}.{ {'conv1': 0, 'snake1': 6, 'conv2': 7}[body[0]] }"
                rest = body[1:]
            if rest == ["weight"]:
                weight_norm(path, value)
            else:
                out[path + "." + ".".join(rest)] = value
        elif key.startswith(("encoder_semantic.", "decoder_semantic.")):
            # the original wraps every conv except the 1x1 residual conv2 in a `.conv`
            if parts[-2] in ("conv", "conv1") or (parts[-2] == "conv2" and "res_units" not in key):
                parts.insert(-1, "conv")
            out[".".join(parts)] = value
        elif key.startswith("quantizer."):
            rest = ".".join(parts[3:]).replace("codebook.", "_codebook.")
            out[f"quantizer.vq.layers.{parts[2]}.{rest}"] = value
        elif key.startswith(("fc.", "fc1.", "fc2.")):
            name = {"fc": "fc_prior", "fc1": "fc_post1", "fc2": "fc_post2"}[parts[0]]
            out[name + "." + parts[1]] = value
        else:
            out[key] = value  # semantic_model.*: HuBERT keys as transformers names them
    # the released model.pth carries a few non-tensor entries (io.BytesIO) too
    out["semantic_model_extra_state"] = io.BytesIO(b"not a tensor")
    return out


def original_config(config):
    return {
        "n_filters": 32,
        "D": config.acoustic_model_config.hidden_size,
        "target_bandwidths": list(config.target_bandwidths),
        "ratios": list(config.acoustic_model_config.downsampling_ratios),
        "sample_rate": config.sample_rate,
        "bins": config.codebook_size,
        "n_q": config.num_quantizers,
        "codebook_dim": config.codebook_dim,
        "semantic_techer": "hubert_base_general",
        "last_layer_semantic": True,
        "merge_mode": "concat",
        "downsample_mode": "step_down",
        "semantic_mode": "classic",
        "vq_scale": 1,
        "semantic_sample_rate": config.semantic_sample_rate,
    }


class Hostile:
    """Unpickling this with a plain unpickler runs code (here: sets an env variable)."""

    def __reduce__(self):
        return (exec, (f"import os; os.environ[{HOSTILE_ENV!r}] = '1'",))


def main():
    torch.manual_seed(SEED)
    config = tiny_config()
    model = HiggsAudioV2TokenizerModel(config).eval()
    g = randomize(model)

    ref = {}
    waves24 = {}
    for i, (name, (sr, channels, n)) in enumerate(CASES.items()):
        wave = test_signal(n, sr, channels, seed=i)
        ref[f"{name}/input"] = wave
        ref[f"{name}/sample_rate"] = np.array(sr)
        mono = torch.from_numpy(wave).mean(0)
        if sr != config.sample_rate:
            mono = torchaudio.functional.resample(mono, sr, config.sample_rate)
        waves24[name] = mono
        ref[f"{name}/wave24"] = mono.numpy()

    fit_codebooks(model, list(waves24.values()), g)

    with torch.no_grad():
        for name, wave24 in waves24.items():
            x = wave24[None, None]
            wave16 = torchaudio.functional.resample(x, config.sample_rate, 16000)[0, 0]
            embeddings, semantic, e_semantic, e_acoustic = encode_embeddings(model, wave24)
            codes = model.quantizer.encode(embeddings)[:, 0]  # [K, T]
            decoded = model.decode(codes[None]).audio_values[0, 0]
            assert decoded.shape[0] == codes.shape[1] * 960
            ref[f"{name}/wave16"] = wave16.numpy()
            ref[f"{name}/semantic_features"] = semantic[0].numpy()  # [T, S]
            ref[f"{name}/semantic_encoded"] = e_semantic[0].T.numpy()  # [T, S]
            ref[f"{name}/acoustic_encoded"] = e_acoustic[0].T.numpy()  # [T, D]
            ref[f"{name}/embeddings"] = embeddings[0].T.numpy()  # [T, H]
            ref[f"{name}/codes"] = codes.numpy().astype(np.int32)
            ref[f"{name}/decoded"] = decoded.numpy()
            # transformers' own encode pads 480 (not 320) when the counts differ; where
            # no padding is needed it must agree with the original glue above.
            hf_codes = model.encode(x, return_dict=False)[0]
            ref[f"{name}/transformers_codes"] = hf_codes.numpy().astype(np.int32)
            pads = model._get_conv1d_output_lengths(x.shape[2], model.acoustic_encoder)
            if pads == e_semantic.shape[2]:
                assert torch.equal(hf_codes, codes), name
            used = [len(torch.unique(c)) for c in codes]
            print(f"{name}: T={codes.shape[1]} distinct codes per quantizer {used}")

        rng = np.random.default_rng(SEED)
        for frames in (1, 37):
            codes = rng.integers(0, config.codebook_size, size=(config.num_quantizers, frames))
            decoded = model.decode(torch.from_numpy(codes)[None]).audio_values[0, 0]
            ref[f"random{frames}/codes"] = codes.astype(np.int32)
            ref[f"random{frames}/decoded"] = decoded.numpy()

        for orig, new in RESAMPLE_PAIRS:
            x = test_signal(2001, orig, 1, seed=orig)[0]
            y = torchaudio.functional.resample(torch.from_numpy(x), orig, new)
            ref[f"resample/{orig}_{new}/input"] = x
            ref[f"resample/{orig}_{new}/output"] = y.numpy()

    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "original" / "hubert").mkdir(parents=True)
    (OUT / "hostile").mkdir(parents=True)

    model.save_pretrained(OUT / "tiny")
    for extra in ("generation_config.json",):
        if (OUT / "tiny" / extra).exists():
            os.remove(OUT / "tiny" / extra)

    torch.save(original_state_dict(model), OUT / "original" / "model.pth")
    (OUT / "original" / "config.json").write_text(json.dumps(original_config(config), indent=2))
    hubert = config.semantic_model_config.to_dict()
    (OUT / "original" / "hubert" / "config.json").write_text(json.dumps(hubert, indent=2))

    torch.save(
        {"encoder.block.0.bias": torch.zeros(2), "payload": Hostile()},
        OUT / "hostile" / "model.pth",
    )
    shutil.copy(OUT / "original" / "config.json", OUT / "hostile" / "config.json")

    np.savez_compressed(OUT / "reference.npz", **ref)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
