"""Decode benchmark for higgs-core: the real architecture with random weights.

Builds Higgs Audio v2's language model at its real size (hidden 3072, 24/8
heads, FFN 8192, 8 x 1026 audio rows, 128256 vocab; ``--layers`` of its 28
layers) with random weights, no download, and for each requested precision
prints:

- prefill tokens/s over a prompt of text and reference audio;
- ms per frame, the median of many synced decode steps (model step + sampler),
  and the mean per frame of the pipelined ``generate`` loop;
- the implied real-time factor (ms per frame x 25 / 1000; below 1 is faster
  than real time);
- peak memory;
- the step's ratio to its floor: the bare matmuls of the least a frame must
  read (attention q/k/v/o and one MLP per layer, and the audio head), run
  through the same layers, backend and dtype in the same process.

    uv run python benchmarks/bench_decode.py                     # full size, bf16, q8, q4
    uv run python benchmarks/bench_decode.py --layers 4 --frames 24 --bits 0

On a Linux CPU stock MLX is slow (bf16 matrix-vector at ~2.5 GB/s; quantized
matrix-vector ~8x slower still), so there use ``--layers`` and, for q8/q4, a
short ``--prompt``: a full-size bf16 frame takes ~2.5 s, a q8 one ~20 s.
"""

import argparse
import statistics
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map

from higgs_core import HiggsAudioModel, ModelConfig, generate, quantize
from higgs_sampling import FrameSampler, SamplingParams

PARAMS = SamplingParams(temperature=0.7, top_k=50, top_p=0.95, ras_window=7)
GB = 1e9


def build(layers: int, dtype: mx.Dtype, bits: int, group_size: int) -> HiggsAudioModel:
    """The real-size model with random weights, filled one module at a time so
    no float32 copy of it ever exists, then quantized with ``higgs_core.quantize``."""
    model = HiggsAudioModel(ModelConfig(num_hidden_layers=layers))
    base = (0.02 * mx.random.normal((1 << 20,), key=mx.random.key(0))).astype(dtype)

    def random_like(v: mx.array) -> mx.array:
        if v.ndim == 1:  # norms
            return mx.ones(v.shape, dtype)
        reps = -(-v.size // base.size)
        return mx.broadcast_to(base, (reps, base.size)).reshape(-1)[: v.size].reshape(v.shape)

    modules = [*model.layers, model.embed_tokens, model.audio_codebook_embeddings, model.norm]
    modules += list(model.audio_decoder_proj.children().values())
    # No run may end early: the stream EOS never wins while its head rows are zero.
    eos = mx.array(np.arange(model.config.num_codebooks) * 1026 + 1025)
    for module in modules:
        module.update(tree_map(random_like, module.parameters()))
        if module is model.audio_decoder_proj.audio_lm_head:
            module.weight[eos] = 0
        mx.eval(module.parameters())
    if bits:
        quantize(model, bits, group_size)
        for _, value in tree_flatten(model.parameters()):  # frees each float source in turn
            mx.eval(value)
    return model


def prompt(length: int, cfg: ModelConfig, rng: np.random.Generator):
    """Text, one reference clip taking about 3/4 of the prompt, text, <|audio_out_bos|>."""
    frames = (3 * length) // 4
    head = length - frames - 4
    ids = [*rng.integers(0, 128000, head // 2), cfg.audio_out_bos_token_id]
    ids += [cfg.audio_out_token_id] * frames + [cfg.audio_eos_token_id]
    ids += [*rng.integers(0, 128000, length - len(ids) - 1), cfg.audio_out_bos_token_id]
    audio = rng.integers(0, 1024, (frames, cfg.num_codebooks)).astype(np.int32)
    return np.array(ids), mx.array(audio)


def floor_work(model: HiggsAudioModel) -> list:
    """The bare matmuls a frame cannot avoid, as (layer, input) pairs."""
    cfg = model.config
    dtype = model.norm.weight.dtype
    x_model = mx.random.normal((1, cfg.hidden_size)).astype(dtype)
    x_heads = mx.random.normal((1, cfg.num_attention_heads * cfg.head_dim)).astype(dtype)
    x_ffn = mx.random.normal((1, cfg.intermediate_size)).astype(dtype)
    mx.eval(x_model, x_heads, x_ffn)
    work = []
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.audio_mlp
        work += [(attn.q_proj, x_model), (attn.k_proj, x_model), (attn.v_proj, x_model)]
        work += [(attn.o_proj, x_heads), (mlp.gate_proj, x_model), (mlp.up_proj, x_model)]
        work += [(mlp.down_proj, x_ffn)]
    work.append((model.audio_decoder_proj.audio_lm_head, x_model))
    return work


def step_and_floor(model: HiggsAudioModel, ids, audio, frames: int, warmup: int):
    """Synced decode steps (model step + sampler step) and floor runs, interleaved
    so that any drift in the machine's speed hits both alike. Returns ms lists."""
    cfg = model.config
    sampler = FrameSampler(cfg.num_codebooks, 1024, 1025, PARAMS, max_frames=1 << 20)
    cache = model.make_cache()
    first, state = sampler.start(mx.random.key(0), history=audio.T)
    logits = model.prefill(
        np.append(ids, cfg.audio_out_token_id), mx.concatenate([audio, first[None]]), cache, 512
    )
    frame, state = sampler.step(logits, state)
    mx.eval(frame, state.arrays())
    work = floor_work(model)
    steps, floors = [], []
    for i in range(warmup + frames):
        t0 = time.perf_counter()
        frame, state = sampler.step(model.step(frame, cache), state)
        mx.eval(frame, state.arrays())
        t1 = time.perf_counter()
        mx.eval([linear(x) for linear, x in work])
        t2 = time.perf_counter()
        if i >= warmup:
            steps.append(1e3 * (t1 - t0))
            floors.append(1e3 * (t2 - t1))
    return steps, floors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=28, help="real-size layers (of 28)")
    parser.add_argument("--frames", type=int, default=32, help="timed decode steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=256, help="prompt positions")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--bits", type=int, nargs="+", default=[0, 8, 4], help="0: unquantized")
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args()
    dtype = getattr(mx, args.dtype)

    device = f"device {mx.default_device()}, mlx {mx.__version__}"
    print(f"{device}, {args.layers}/28 layers, {args.dtype}")
    rng = np.random.default_rng(0)
    for bits in args.bits:
        mx.clear_cache()
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        model = build(args.layers, dtype, bits, args.group_size)
        size = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
        label = f"q{bits}" if bits else args.dtype
        build_peak = mx.get_peak_memory()
        print(
            f"\n[{label}] model {size / GB:.2f} GB, built in {time.perf_counter() - t0:.1f} s "
            f"(peak {build_peak / GB:.2f} GB while building)"
        )
        mx.reset_peak_memory()

        ids, audio = prompt(args.prompt, model.config, rng)
        generate(model, [1, 2, 3, ids[-1]], params=PARAMS, max_frames=2)  # warm up
        res = generate(model, ids, audio, params=PARAMS, max_frames=args.frames)
        loop_ms = 1e3 * res.decode_seconds / res.num_frames
        steps, floors = step_and_floor(model, ids, audio, args.frames, args.warmup)
        step, floor = statistics.median(steps), statistics.median(floors)
        paired = statistics.median(a / b for a, b in zip(steps, floors, strict=True))
        print(
            f"  prefill        {len(ids) / res.prefill_seconds:8.1f} tokens/s "
            f"({len(ids)} positions in {res.prefill_seconds:.2f} s)"
        )
        print(f"  decode step    {step:8.1f} ms/frame (median of {args.frames}, synced)")
        print(f"  generate loop  {loop_ms:8.1f} ms/frame (mean of {res.num_frames}, pipelined)")
        print(f"  real-time      {step * 25 / 1000:8.3f} x (ms/frame x 25 / 1000)")
        print(f"  floor          {floor:8.1f} ms (bare matmuls of the per-frame weights, median)")
        print(f"  step / floor   {step / floor:8.3f} (median of per-frame ratios {paired:.3f})")
        print(f"  peak memory    {mx.get_peak_memory() / GB:8.2f} GB (prefill and decode)")
        del model, res
    print()


if __name__ == "__main__":
    main()
