"""Codec speed and memory at the real architecture size, with random weights.

    uv run python benchmarks/bench_codec.py [--seconds 10] [--repeats 3]

Builds the released tokenizer's shapes (HuBERT-base, DAC 64 -> 2048 encoder, 1024-wide
decoder with ratios [8, 5, 4, 2, 3], 8 x 1024 codes of dim 64) with random weights and
prints, for the device MLX runs on:
- decode and encode speed as multiples of real time (audio seconds per wall second);
- the stream decoder: frames pushed before the first audio leaves, its steady-state
  look-ahead, the time to the first audio and per pushed frame, and its SNR against a
  whole-utterance decode;
- working memory for each (peak resident set above the start, on Linux), and for loading
  a real-size checkpoint (written to a temporary directory in the transformers layout)
  whole and decode_only.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map

import higgs_codec
from higgs_codec.config import CodecArgs, HubertArgs
from higgs_codec.layers import numpy_gemm
from higgs_codec.model import Codec


def real_size_codec(decode_only=False):
    args = CodecArgs(hubert=HubertArgs())
    codec = Codec(args, decode_only=decode_only)
    # MLX's default init keeps activations in range; the codebooks start at zero
    codebooks = {
        f"quantizer.quantizers.{i}.codebook.embed": 0.5 * mx.random.normal((1024, 64))
        for i in range(args.num_quantizers)
    }
    codec.load_weights(list(codebooks.items()), strict=False)
    codec.update(tree_map(lambda p: p.astype(mx.float32), codec.parameters()))
    mx.eval(codec.parameters())
    return codec


def timed(fn, repeats):
    out = fn()
    mx.eval(out)  # warm-up (compiles, allocates)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        mx.eval(out)
        best = min(best, time.perf_counter() - start)
    return best, out


def _proc_status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None


def peak(fn):
    """Working memory of fn in MiB, above what was held before it (weights excluded): the
    process's peak resident set on Linux (numpy's buffers included), else MLX's peak."""
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set (VmHWM)
        rss = _proc_status_mib("VmRSS")
    except OSError:
        rss = None
    mx.eval(fn())
    if rss is not None:
        return _proc_status_mib("VmHWM") - rss
    return (mx.get_peak_memory() - before) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--chunks", type=int, nargs="+", default=[1, 5], help="frames per streamed push"
    )
    opts = parser.parse_args()

    codec = real_size_codec()
    n_params = sum(v.size for _, v in tree_flatten(codec.parameters()))
    frames = int(opts.seconds * codec.frame_rate)
    seconds = frames / codec.frame_rate
    rng = np.random.default_rng(0)
    codes = mx.array(rng.integers(0, 1024, (8, frames)).astype(np.int32))
    t = np.arange(int(seconds * 24000)) / 24000
    wave = (0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.2 * np.sin(3 * t)))).astype(np.float32)

    gemm = "numpy (OpenBLAS)" if numpy_gemm() else "MLX"
    print(
        f"device: {mx.default_device()}, GEMMs: {gemm}, parameters: {n_params / 1e6:.1f}M, "
        f"audio: {seconds:g} s"
    )

    t_dec, audio = timed(lambda: codec.decode(codes), opts.repeats)
    t_enc, _ = timed(lambda: codec.encode(wave, 24000), opts.repeats)
    print(f"decode: {seconds / t_dec:7.1f}x real time ({t_dec * 1000:.0f} ms)")
    print(f"encode: {seconds / t_enc:7.1f}x real time ({t_enc * 1000:.0f} ms)")

    def run_stream(chunk):
        dec = codec.stream_decoder()
        parts, first_at, start = [], None, time.perf_counter()
        for i in range(0, frames, chunk):
            out = dec.push(codes[:, i : i + chunk])
            mx.eval(out)
            if first_at is None and out.size:
                first_at = time.perf_counter() - start
            parts.append(out)
        parts.append(dec.flush())
        mx.eval(parts[-1])
        return dec, mx.concatenate(parts), first_at, time.perf_counter() - start

    ref = np.array(audio, np.float64)
    for chunk in opts.chunks:
        run_stream(chunk)  # warm-up
        dec, streamed, first_at, total = run_stream(chunk)
        got = np.array(streamed, np.float64)
        noise = np.sum((got - ref) ** 2)
        snr = float("inf") if noise == 0 else 10 * np.log10(np.sum(ref**2) / noise)
        print(
            f"stream, {chunk} frame(s) per push: first audio after {dec.first_audio_frames} "
            f"frames pushed, {first_at * 1000:.0f} ms of decoding; {seconds / total:.1f}x real "
            f"time overall ({total / frames * 1000:.1f} ms per frame); SNR vs whole "
            f"decode {snr:.1f} dB"
        )
    print(
        f"stream look-ahead: {dec.lookahead_frames} frames "
        f"({dec.lookahead_frames * 1000 // codec.frame_rate} ms of audio)"
    )

    weights = sum(v.nbytes for _, v in tree_flatten(codec.parameters())) / 2**20
    print(f"weights: {weights:.0f} MiB (float32); working memory above them:")
    print(f"  decode {seconds:g} s: {peak(lambda: codec.decode(codes)):.0f} MiB")
    print(f"  encode {seconds:g} s: {peak(lambda: codec.encode(wave, 24000)):.0f} MiB")
    report_decode_only(codes, seconds)
    report_loading(codec)


def real_size_config():
    return {
        "model_type": "higgs_audio_v2_tokenizer",
        "sample_rate": 24000,
        "target_bandwidths": [0.5, 1, 1.5, 2],
        "codebook_size": 1024,
        "codebook_dim": 64,
        "acoustic_model_config": {
            "encoder_hidden_size": 64,
            "downsampling_ratios": [8, 5, 4, 2, 3],
            "decoder_hidden_size": 1024,
            "upsampling_ratios": [8, 5, 4, 2, 3],
            "hidden_size": 256,
        },
        "semantic_model_config": {"model_type": "hubert"},
    }


def report_loading(codec):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(real_size_config()))
        mx.save_safetensors(
            str(Path(tmp) / "model.safetensors"), dict(tree_flatten(codec.parameters()))
        )
        size = (Path(tmp) / "model.safetensors").stat().st_size / 2**20
        for decode_only in (False, True):
            start = time.perf_counter()
            loaded = None

            def load(decode_only=decode_only):
                nonlocal loaded
                loaded = higgs_codec.load_codec(tmp, decode_only=decode_only)
                return mx.array(0)

            load_peak = peak(load)
            elapsed = time.perf_counter() - start
            held = sum(v.nbytes for _, v in tree_flatten(loaded.parameters())) / 2**20
            print(
                f"load {size:.0f} MiB checkpoint{' decode_only' if decode_only else ''}: "
                f"{elapsed:.2f} s, weights held {held:.0f} MiB, "
                f"peak while loading {load_peak:.0f} MiB"
            )
            del loaded


def report_decode_only(codes, seconds):
    codec = real_size_codec(decode_only=True)
    n_params = sum(v.size for _, v in tree_flatten(codec.parameters()))
    print(
        f"decode_only codec: {n_params / 1e6:.1f}M parameters; working memory decoding "
        f"{seconds:g} s: {peak(lambda: codec.decode(codes)):.0f} MiB"
    )


if __name__ == "__main__":
    main()
