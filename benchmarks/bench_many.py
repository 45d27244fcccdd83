"""In-process `Higgs.say_many` on a mid-size model: batched against one at a time,
and where the time goes.

    uv run python benchmarks/bench_many.py [--requests 24] [--max-batch 8] [--repeats 2]

A mid-size float32 model (hidden 256, 3 layers, random weights) with a mid-size
codec (decoder width 256) behaves like the full model on a GPU or Apple silicon:
the model step is cheap, so per-request work decides the throughput. Each request
is steered (the library's ``Higgs.logits_processors`` seam) to end after 1-4 s of
audio, so both runs make the same frames. Prints, per ``max_batch`` (interleaved
repeats, medians): requests/s and the ratio; that the PCM is identical; and a
profile of the batched run: seconds in batch steps (the model), in codec calls
(whole decodes and stream pushes), and the codec's GFLOP/s against numpy's fp32
GEMM rate on one thread (what the codec's GEMMs run on, see higgs_codec.layers).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from tokenizers import Tokenizer

from higgs_cli.pipeline import Higgs, Request, Settings
from higgs_codec import layers
from higgs_codec.config import CodecArgs
from higgs_codec.model import Codec
from higgs_core import Batch, ModelConfig
from higgs_core.bench import TINY_TOKENIZER_IDS, build

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["Good morning.", "How are you today?", "The weather is clear.", "See you soon!"]


def mid_size(folder: Path) -> Higgs:
    config = ModelConfig(
        hidden_size=256,
        intermediate_size=768,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=512,
        **TINY_TOKENIZER_IDS,
    )
    model = build(3, mx.float32, 0, 64, config)
    codec = Codec(CodecArgs(decoder_hidden_size=256), decode_only=True)
    for q in codec.quantizer.quantizers:  # zero codebooks would decode silence
        q.codebook.embed = 0.5 * mx.random.normal(q.codebook.embed.shape)
    mx.eval(codec.parameters())
    (folder / "codec.txt").write_text("a random mid-size codec")
    codec.path = folder
    tiny = ROOT / "tests/fixtures/tiny-model"
    tokenizer = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    return Higgs(model, codec, tokenizer, model_path=tiny, codec_path=folder, prefix_cache_mb=0)


def steer_lengths(frames: list[int]):
    """Each stream, in order of submission, ends on its own after frames[i]."""
    counter = iter(range(1 << 30))

    def make(tts):
        n = frames[next(counter) % len(frames)]
        eos = tts.model.config.audio_stream_eos_id

        def push(frame, logits):
            K, V = logits.shape
            is_eos = mx.arange(V)[None, :] == eos
            if frame >= n:
                return logits + mx.where(is_eos & (mx.arange(K)[:, None] == 0), 1e4, 0.0)
            return logits + mx.where(is_eos, -1e4, 0.0)

        return push

    return make


class Profile:
    """Seconds spent in batch steps and in codec calls, and the codec's GEMM flops."""

    def __init__(self, tts: Higgs):
        self.step = self.codec = 0.0
        self.flops = 0
        self._patches = []
        self._wrap(Batch, "step", "step")
        self._wrap(type(tts.codec), "decode", "codec")
        decoder = type(tts.codec.stream_decoder())
        self._wrap(decoder, "push", "codec")
        self._wrap(decoder, "flush", "codec")
        real = layers.gemm

        def counted(a, b):
            self.flops += 2 * int(np.prod(a.shape[:-1])) * a.shape[-1] * b.shape[-1]
            return real(a, b)

        layers.gemm = counted
        self._patches.append((layers, "gemm", real))

    def _wrap(self, owner, name, field):
        real = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                setattr(self, field, getattr(self, field) + time.perf_counter() - t0)

        setattr(owner, name, timed)
        self._patches.append((owner, name, real))

    def close(self):
        for owner, name, real in reversed(self._patches):
            setattr(owner, name, real)


def gemm_rate(n=512, repeats=20) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    layers.gemm(a, a)
    t0 = time.perf_counter()
    for _ in range(repeats):
        layers.gemm(a, a)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tts = mid_size(Path(tmp))
        rate = tts.frame_rate
        frames = [int(rate * (1 + 3 * ((7 * i) % 11) / 10)) for i in range(args.requests)]
        Higgs.logits_processors = steer_lengths(frames)
        requests = [
            Request(TEXTS[i % len(TEXTS)], settings=Settings(seed=i)) for i in range(args.requests)
        ]
        sizes = [1, args.max_batch]
        times: dict[int, list[float]] = {b: [] for b in sizes}
        pcm: dict[int, list[np.ndarray]] = {}
        tts.say_many(requests[:2], max_batch=2)  # warm up
        for _ in range(args.repeats):
            for b in sizes:
                Higgs.logits_processors = steer_lengths(frames)
                t0 = time.perf_counter()
                speeches = tts.say_many(requests, max_batch=b)
                times[b].append(time.perf_counter() - t0)
                pcm[b] = [s.samples for s in speeches]
        audio = sum(len(x) for x in pcm[1]) / tts.sample_rate
        print(
            f"mid-size float32 model (hidden 256, 3 layers), codec width 256; "
            f"{args.requests} requests, {audio:.1f} s of audio"
        )
        for b in sizes:
            t = statistics.median(times[b])
            print(f"  max_batch {b:2d}: {t:6.2f} s, {args.requests / t:5.2f} requests/s")
        ratio = statistics.median(times[1]) / statistics.median(times[args.max_batch])
        same = all(np.array_equal(x, y) for x, y in zip(pcm[1], pcm[args.max_batch], strict=True))
        print(f"  batched/alone: {ratio:.2f}x requests/s; PCM identical: {same}")

        Higgs.logits_processors = steer_lengths(frames)
        profile = Profile(tts)
        t0 = time.perf_counter()
        tts.say_many(requests, max_batch=args.max_batch)
        wall = time.perf_counter() - t0
        profile.close()
        rest = wall - profile.step - profile.codec
        print(
            f"  profile at max_batch {args.max_batch}: {wall:.2f} s = batch steps "
            f"{profile.step:.2f} s + codec {profile.codec:.2f} s + the rest {rest:.2f} s"
        )
        gemm = gemm_rate()
        codec_rate = profile.flops / profile.codec / 1e9
        print(
            f"  codec: {profile.flops / 1e9:.1f} GFLOP in GEMMs, {codec_rate:.1f} GFLOP/s; "
            f"numpy fp32 GEMM (512^3, one thread): {gemm:.1f} GFLOP/s "
            f"({codec_rate / gemm:.0%} of it)"
        )


if __name__ == "__main__":
    main()
