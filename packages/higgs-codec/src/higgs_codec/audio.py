"""Audio files in and out (soundfile), channel mixdown and sinc resampling.

`resample` follows torchaudio.functional.resample with its defaults (a Hann-windowed
sinc, 6 zero crossings, roll-off 0.99): the filter bank is built once per rate pair and
applied as one strided convolution, so there is no per-sample Python work.
"""

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, overload

import mlx.core as mx
import numpy as np
import soundfile as sf

from .errors import CodecError, CodecFileNotFoundError

# Samples: numpy or MLX, [N] or [C, N] (channels first).
Wave = np.ndarray | mx.array
# Where audio is read or written: a path, or an open binary file.
AudioFile = str | os.PathLike[str] | BinaryIO

WRITE_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16")}

# A rate pair whose reduced ratio needs a bigger filter bank than this is refused
# (e.g. 24001 -> 24000 Hz would need 24000 filters of 24015 taps).
MAX_FILTER_TAPS = 1 << 24


def read_audio(path: AudioFile, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Read wav/flac/ogg (anything libsndfile reads) -> (float32 [C, N], sample_rate).

    ``max_seconds``: refuse a longer recording, judged from the file's header before
    any sample is decoded.
    """
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        if not path.is_file():
            raise CodecFileNotFoundError(f"audio file not found: {path}")
    if max_seconds is not None and (seconds := read_audio_info(path)) > max_seconds:
        raise CodecError(
            f"{path} is {seconds:.1f} s long; reference audio may be at most {max_seconds:g} s"
        )
    try:
        data, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise CodecError(f"could not read audio from {path}: {e}") from e
    if data.size == 0:
        raise CodecError(f"audio file {path} holds no samples")
    return np.ascontiguousarray(data.T), int(sample_rate)


def read_audio_info(path: AudioFile) -> float:
    """An audio file's length in seconds, from its header (nothing is decoded)."""
    if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
        raise CodecFileNotFoundError(f"audio file not found: {path}")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise CodecError(f"could not read audio from {path}: {e}") from e
    if info.samplerate <= 0 or info.frames <= 0:
        raise CodecError(f"audio file {path} holds no samples")
    return info.frames / info.samplerate


def write_audio(
    file: AudioFile, samples: Wave, sample_rate: int, format: str | None = None
) -> None:
    """Write float samples [N] or [C, N] in [-1, 1] as 16-bit wav or flac.

    `format` is "wav" or "flac"; left out, it follows the file name's suffix (wav for
    file objects and unknown suffixes). Samples beyond [-1, 1] are clipped.
    """
    if format is None:
        suffix = (
            Path(file).suffix.lower().lstrip(".") if isinstance(file, (str, os.PathLike)) else ""
        )
        format = suffix if suffix in WRITE_FORMATS else "wav"
    if format not in WRITE_FORMATS:
        raise CodecError(f"cannot write audio as {format!r}: choose one of {sorted(WRITE_FORMATS)}")
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim not in (1, 2) or data.size == 0:
        raise CodecError(f"expected samples shaped [N] or [C, N], got shape {data.shape}")
    if not np.isfinite(data).all():
        raise CodecError("cannot write audio that contains NaN or infinite samples")
    if int(sample_rate) <= 0:
        raise CodecError(f"invalid sample rate {sample_rate}")
    major, subtype = WRITE_FORMATS[format]
    data = np.clip(data, -1.0, 1.0)
    sf.write(file, data.T if data.ndim == 2 else data, int(sample_rate), subtype, format=major)


def to_mono(wave: Wave) -> mx.array:
    """[N] or [C, N] (numpy or mlx, channels first) -> float32 mx.array [N], channel mean."""
    if isinstance(wave, mx.array):
        floating = mx.issubdtype(wave.dtype, mx.floating)
    else:
        wave = np.asarray(wave)
        floating = wave.dtype.kind == "f"
    if not floating:
        raise CodecError(f"expected float samples in [-1, 1], got {wave.dtype}")
    x = wave if isinstance(wave, mx.array) else mx.array(wave.astype(np.float32))
    if x.ndim == 2:
        x = x.astype(mx.float32).mean(axis=0)
    elif x.ndim != 1:
        raise CodecError(f"expected a wave shaped [N] or [C, N] (channels first), got {x.shape}")
    return x.astype(mx.float32)


@lru_cache(maxsize=32)
def _sinc_filters(
    orig: int, new: int, width_zeros: int = 6, rolloff: float = 0.99
) -> tuple[mx.array, int]:
    """Filter bank [new, taps] of torchaudio's sinc_interp_hann resampler (reduced rates)."""
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = (-np.arange(new, dtype=np.float64)[:, None] / new + idx) * base
    t = np.clip(t, -width_zeros, width_zeros)
    window = np.cos(t * math.pi / width_zeros / 2) ** 2
    t = t * math.pi
    safe = np.where(t == 0, 1.0, t)
    kernels = np.where(t == 0, 1.0, np.sin(safe) / safe) * window * (base / orig)
    return mx.array(kernels.astype(np.float32)[:, :, None]), width


@overload
def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray: ...
@overload
def resample(wave: mx.array, orig_sr: int, new_sr: int) -> mx.array: ...
def resample(wave: Wave, orig_sr: int, new_sr: int) -> Wave:
    """Resample along the last axis like torchaudio.functional.resample (defaults).

    numpy in -> numpy out, mlx in -> mlx out; float32; output length ceil(N * new / orig).
    """
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise CodecError(f"sample rates must be positive integers, got {orig_sr} and {new_sr}")
    as_numpy = not isinstance(wave, mx.array)
    if isinstance(wave, mx.array):
        x = wave.astype(mx.float32)
    else:
        x = mx.array(np.asarray(wave, dtype=np.float32))
    if orig_sr != new_sr:
        g = math.gcd(int(orig_sr), int(new_sr))
        orig, new = int(orig_sr) // g, int(new_sr) // g
        if new * (orig + 2 * math.ceil(6 * orig / (min(orig, new) * 0.99))) > MAX_FILTER_TAPS:
            raise CodecError(
                f"cannot resample {orig_sr} Hz to {new_sr} Hz: the rates share no factor"
            )
        filters, width = _sinc_filters(orig, new)
        shape = x.shape
        length = shape[-1]
        frames = x.reshape(-1, length)
        frames = mx.pad(frames, [(0, 0), (width, width + orig)])[..., None]
        y = mx.conv1d(frames, filters, stride=orig).reshape(frames.shape[0], -1)
        x = y[:, : math.ceil(new * length / orig)].reshape(*shape[:-1], -1)
    return np.array(x) if as_numpy else x
