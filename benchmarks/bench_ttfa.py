"""Time to first audio for a stored voice, with and without its cached prefix.

    uv run python benchmarks/bench_ttfa.py [--layers 28] [--bits 0]

Builds the real-size language model and the real-size audio decoder with random
weights (no download) and the tests' tiny text tokenizer (its special tokens
mapped into the model's vocabulary), stores a voice (a 20-word transcript and
about 8 s of codes), then streams one sentence in that voice three times:

- cold: the voice prefix is computed (and stored);
- warm (memory): the same process again, the prefix from the in-memory cache;
- warm (disk): a fresh pipeline on the same voice store, the prefix read from disk.

For each: prompt positions, positions prefilled (the rest came from the cache),
prefill seconds, frames made before the first PCM left, and seconds to the
first PCM. The target: first audio within prefill(new text) + 12 frames.
"""

import argparse
import atexit
import shutil
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from tokenizers import Tokenizer

from higgs_cli.pipeline import Higgs, codec_key
from higgs_cli.voices import VoiceStore
from higgs_core import ModelConfig
from higgs_core.bench import TINY_TOKENIZER_IDS, build

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer" / "tokenizer.json"
TRANSCRIPT = (
    "This is how I sound when I read aloud at an easy pace, clearly, "
    "in a quiet room, for anyone listening."
)
TEXT = "Good morning, and welcome to the show."


def codec_for_bench():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_codec import real_size_codec

    codec = real_size_codec(decode_only=True)
    codec.path = Path(tempfile.mkdtemp(prefix="higgs-codec-"))  # a key for stored codes
    atexit.register(shutil.rmtree, codec.path, ignore_errors=True)
    return codec


def one(tts, label):
    times = {"start": time.perf_counter()}
    batch_submit = tts.new_batch

    results = {}

    def spy_batch(max_batch=8):
        batch = batch_submit(max_batch)
        submit = batch.submit

        def recorded(*a, **kw):
            stream = submit(*a, **kw)
            results["stream"] = stream
            return stream

        batch.submit = recorded
        return batch

    tts.new_batch = spy_batch
    stream = tts.stream(TEXT, voice="bench-voice", seed=1, max_seconds=2)
    first = next(stream)
    times["first"] = time.perf_counter()
    s = results["stream"]
    frames_at_first = len(s.frames) - 1
    for _ in stream:
        pass
    tts.new_batch = batch_submit
    res = s.result
    prompt, cached = res.prompt_tokens, res.cached_tokens
    print(
        f"  {label:<14} prompt {prompt:4d}  prefilled {prompt - cached + 1:4d}  "
        f"prefill {res.prefill_seconds:6.2f} s  first PCM after {frames_at_first:3d} frames, "
        f"{times['first'] - times['start']:6.2f} s  ({len(first)} samples)"
    )
    return res.prefill_seconds, frames_at_first, times["first"] - times["start"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--bits", type=int, default=0)
    args = parser.parse_args()
    model = build(args.layers, mx.bfloat16, args.bits, 64, ModelConfig(**TINY_TOKENIZER_IDS))
    codec = codec_for_bench()
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    home = Path(tempfile.mkdtemp(prefix="higgs-home-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    store = VoiceStore(home / "voices")
    audio = home / "voice.wav"
    audio.write_bytes(b"RIFF")  # the store keeps a copy; the codes below are what is used
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1024, size=(8, 200)).astype(np.int32)
    store.add("bench-voice", audio, TRANSCRIPT, codes=codes, key=codec_key(codec))

    model_dir = Path(tempfile.mkdtemp(prefix="higgs-model-"))  # stands in for a checkpoint
    atexit.register(shutil.rmtree, model_dir, ignore_errors=True)

    def pipeline():
        return Higgs(
            model, codec, tokenizer, model_path=model_dir, codec_path=codec.path, voices=store
        )

    print(
        f"{args.layers}/28 layers, {f'q{args.bits}' if args.bits else 'bf16'}, "
        f"kernels: {model.kernels}; stream decoder first audio after "
        f"{codec.stream_decoder().first_audio_frames} code columns"
    )
    tts = pipeline()
    cold = one(tts, "cold")
    one(tts, "warm (memory)")
    warm = one(pipeline(), "warm (disk)")
    steps = warm[1] - 1  # frame 1 comes with the prefill
    per_frame = (warm[2] - warm[0]) / max(steps, 1)
    print(
        f"  prefill saved by the cache: {cold[0] - warm[0]:.2f} s of {cold[0]:.2f} s\n"
        f"  warm first audio {warm[2]:.2f} s = prefill {warm[0]:.2f} s + {steps} decode steps "
        f"at {per_frame * 1e3:.0f} ms (target: prefill + 12 frames = "
        f"{warm[0] + 12 * per_frame:.2f} s)\n"
        f"  the {warm[1]} frames: the stream decoder's {codec.stream_decoder().first_audio_frames} "
        f"code columns of look-ahead, the delay pattern's 7 and the BOS column"
    )


if __name__ == "__main__":
    main()
