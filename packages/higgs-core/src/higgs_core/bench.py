"""Speed of the real-size model with random weights: no download needed.

Builds Higgs Audio v2's language model at its real size (``layers`` of its 28)
with random weights and measures prefill tokens/s, the decode step against its
floor (the bare matmuls of the least a frame must read), the pipelined
generate loop, and peak memory. ``benchmarks/bench_decode.py`` and
``higgs bench`` print these figures.
"""

import statistics
import time
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map

from higgs_core.config import ModelConfig
from higgs_core.generate import generate
from higgs_core.kernels import use_kernels
from higgs_core.loading import named_arrays, quantize
from higgs_core.model import MLP, Attention, HiggsAudioModel
from higgs_sampling import FrameSampler, SamplingParams

PARAMS = SamplingParams(temperature=0.7, top_k=50, top_p=0.95, ras_window=7)
GB = 1e9
# The special ids of the tests' tiny tokenizer (tests/fixtures/tokenizer), which puts
# the Llama-3 specials at 384 + (id - 128000): ``ModelConfig(**TINY_TOKENIZER_IDS)``
# is a real-size model that speaks through it, or any model with a small vocabulary.
TINY_TOKENIZER_IDS = dict(
    audio_out_token_id=400,
    audio_in_token_id=399,
    audio_out_bos_token_id=397,
    audio_eos_token_id=396,
    pad_token_id=385,
    bos_token_id=384,
    eos_token_id=393,
)


def build(
    layers: int, dtype: mx.Dtype, bits: int, group_size: int, config: ModelConfig | None = None
) -> HiggsAudioModel:
    """The real-size model with random weights, filled one module at a time so
    no float32 copy of it ever exists, then quantized with ``higgs_core.quantize``.
    ``config``: another configuration to build (its layer count is ``layers``)."""
    config = (config or ModelConfig()).replace(num_hidden_layers=layers)
    model = HiggsAudioModel(config)
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
        for _, value in named_arrays(model):  # frees each float source in turn
            mx.eval(value)
    use_kernels(model)  # as load_model does
    return model


def prompt(length: int, cfg: ModelConfig, rng: np.random.Generator):
    """Text, one reference clip taking about 3/4 of the prompt, text, <|audio_out_bos|>."""
    frames = (3 * length) // 4
    head = length - frames - 4
    text = min(128000, cfg.vocab_size)  # below the specials, in the real and the tiny vocab
    text = min(text, min(cfg.audio_out_bos_token_id, cfg.audio_out_token_id))
    ids = [*rng.integers(0, text, head // 2), cfg.audio_out_bos_token_id]
    ids += [cfg.audio_out_token_id] * frames + [cfg.audio_eos_token_id]
    ids += [*rng.integers(0, text, length - len(ids) - 1), cfg.audio_out_bos_token_id]
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


@dataclass
class Figures:
    label: str  # "bfloat16", "q8", ...
    layers: int
    model_gb: float
    build_seconds: float
    prefill_tokens: int
    prefill_seconds: float
    step_ms: float  # median synced decode step
    loop_ms: float  # mean per frame of the pipelined generate loop
    floor_ms: float  # median of the bare per-frame matmuls
    paired_ratio: float  # median of per-frame step / floor
    frames: int
    peak_gb: float  # prefill and decode
    kernels: str  # what runs the linear layers and attention

    @property
    def real_time_factor(self) -> float:
        """Processing time / audio duration at 25 frames per second."""
        return self.step_ms * 25 / 1000

    def lines(self) -> list[str]:
        return [
            f"[{self.label}] {self.layers}/28 layers, model {self.model_gb:.2f} GB "
            f"(built in {self.build_seconds:.1f} s)",
            f"  kernels        {self.kernels}",
            f"  prefill        {self.prefill_tokens / self.prefill_seconds:8.1f} tokens/s "
            f"({self.prefill_tokens} positions in {self.prefill_seconds:.2f} s)",
            f"  decode step    {self.step_ms:8.1f} ms/frame (median of {self.frames}, synced)",
            f"  generate loop  {self.loop_ms:8.1f} ms/frame (mean, pipelined)",
            f"  real-time      {self.real_time_factor:8.3f} x (ms/frame x 25 / 1000)",
            f"  floor          {self.floor_ms:8.1f} ms (bare matmuls of the per-frame weights)",
            f"  step / floor   {self.step_ms / self.floor_ms:8.3f} "
            f"(median of per-frame ratios {self.paired_ratio:.3f})",
            f"  peak memory    {self.peak_gb:8.2f} GB (prefill and decode)",
        ]


def run(
    *,
    layers: int = 28,
    dtype: mx.Dtype = mx.bfloat16,
    bits: int = 0,
    group_size: int = 64,
    frames: int = 32,
    warmup: int = 3,
    prompt_length: int = 256,
    seed: int = 0,
    stock_attention: bool = False,
    stock_swiglu: bool = False,
) -> Figures:
    """Build one model (``bits`` 0: unquantized) and time it; ``stock_attention``
    and ``stock_swiglu`` keep mlx-lm's attention or MLP activation where
    higgs-kernels would take them over (for before/after figures in one run)."""
    mx.clear_cache()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    model = build(layers, dtype, bits, group_size)
    build_seconds = time.perf_counter() - t0
    kernels = model.kernels
    if stock_attention and "attention too" in kernels:
        for layer in model.layers:
            layer.self_attn.__class__ = Attention  # the stock attend (RoPE stays the kernels')
        kernels = kernels.replace("attention too", "stock attention")
    if stock_swiglu and "attention too" in model.kernels:
        for layer in model.layers:
            layer.mlp.__class__ = layer.audio_mlp.__class__ = MLP  # the stock activation
        kernels += ", stock swiglu"
    size = sum(v.nbytes for _, v in named_arrays(model))
    mx.reset_peak_memory()

    ids, audio = prompt(prompt_length, model.config, np.random.default_rng(seed))
    generate(model, [1, 2, 3, ids[-1]], params=PARAMS, max_frames=2)  # warm up
    res = generate(model, ids, audio, params=PARAMS, max_frames=frames)
    steps, floors = step_and_floor(model, ids, audio, frames, warmup)
    figures = Figures(
        label=f"q{bits}" if bits else str(dtype).removeprefix("mlx.core."),
        layers=layers,
        model_gb=size / GB,
        build_seconds=build_seconds,
        prefill_tokens=len(ids),
        prefill_seconds=res.prefill_seconds,
        step_ms=statistics.median(steps),
        loop_ms=1e3 * res.decode_seconds / res.num_frames,
        floor_ms=statistics.median(floors),
        paired_ratio=statistics.median(a / b for a, b in zip(steps, floors, strict=True)),
        frames=frames,
        peak_gb=mx.get_peak_memory() / GB,
        kernels=kernels,
    )
    del model, res
    mx.clear_cache()
    return figures


@dataclass
class BatchFigures:
    label: str
    layers: int
    kernels: str
    sizes: list[int]
    step_ms: list[float]  # per batch step (one frame for every stream), median of rounds
    peak_gb: float

    def lines(self) -> list[str]:
        base = self.step_ms[0] / self.sizes[0]  # ms per frame at the smallest batch
        out = [
            f"[{self.label}, batched] {self.layers}/28 layers, kernels: {self.kernels}",
            "  batch   ms/step   frames/s   vs first   per-row ms",
        ]
        for B, ms in zip(self.sizes, self.step_ms, strict=True):
            out.append(
                f"  {B:5d}  {ms:8.1f}  {1e3 * B / ms:9.2f}  {base * B / ms:8.2f}x  {ms / B:10.1f}"
            )
        out.append(f"  peak memory {self.peak_gb:.2f} GB")
        return out


def run_batched(
    *,
    layers: int = 28,
    dtype: mx.Dtype = mx.bfloat16,
    bits: int = 0,
    group_size: int = 64,
    sizes: tuple[int, ...] = (1, 2, 4, 8),
    frames: int = 16,
    warmup: int = 3,
    prompt_length: int = 256,
    seed: int = 0,
    round_steps: int = 4,
) -> BatchFigures:
    """Aggregate decode throughput of :class:`higgs_core.Batch` for each batch size:
    every stream starts from one cached prefix of the same prompt (so setting up B
    streams costs one prefill) and decodes with its own seed; the figure is the
    steady-state time of a batch step, which makes one frame for every stream.

    All sizes' batches run side by side, taking turns in rounds of ``round_steps``
    steps, and each figure is the median of its rounds: a machine whose speed
    drifts (a shared VM's does, by 20% and more) then shifts every size alike
    instead of the ratios between them."""
    from higgs_core.batch import Batch, Frames
    from higgs_core.prefix import make_prefix

    def read(events) -> list:
        return [f for e in events if isinstance(e, Frames) for f in e.frames]

    mx.clear_cache()
    model = build(layers, dtype, bits, group_size)
    mx.reset_peak_memory()
    ids, audio = prompt(prompt_length, model.config, np.random.default_rng(seed))
    prefix = make_prefix(model, ids[:-1], audio)
    runs = []
    for B in sizes:
        batch = Batch(model, max_batch=B)
        streams = [
            batch.submit(ids, audio, params=PARAMS, max_frames=1 << 20, seed=i, prefix=prefix)
            for i in range(B)
        ]
        while batch.running < B:
            batch.step()
        for _ in range(warmup):
            batch.step()
        runs.append((batch, streams))
    rounds: list[list[float]] = [[] for _ in sizes]
    for _ in range(-(-frames // round_steps)):
        for (batch, _), times in zip(runs, rounds, strict=True):
            mx.eval(read(batch.step()))  # as in the steady state: a step in flight, the last read
            t0 = time.perf_counter()
            for _ in range(round_steps):
                made = read(batch.step())
            mx.eval(made)
            times.append(1e3 * (time.perf_counter() - t0) / round_steps)
            mx.synchronize()  # its step in flight done before the next size's turn
    for batch, streams in runs:
        for s in streams:
            s.cancel()
        batch.run()
    figures = BatchFigures(
        label=f"q{bits}" if bits else str(dtype).removeprefix("mlx.core."),
        layers=layers,
        kernels=model.kernels,
        sizes=list(sizes),
        step_ms=[statistics.median(times) for times in rounds],
        peak_gb=mx.get_peak_memory() / GB,
    )
    del model, prefix, runs
    mx.clear_cache()
    return figures
