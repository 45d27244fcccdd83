"""higgs_codec: the Higgs Audio v2 audio tokenizer on MLX.

codec = load_codec("bosonai/higgs-audio-v2-tokenizer")  # or a local directory
codes = codec.encode(wave, sample_rate)                 # int32 [8, T] at 25 frames/s
audio = codec.decode(codes)                             # float32 [T * 960] at 24 kHz
"""

from importlib.metadata import version as _version

from .audio import read_audio, resample, write_audio
from .errors import CodecError, CodecFileNotFoundError, CodecNotFoundError
from .loading import load_codec, resolve_path
from .model import Codec
from .streaming import StreamDecoder

__version__ = _version("higgs-codec")

__all__ = [
    "Codec",
    "CodecError",
    "CodecFileNotFoundError",
    "CodecNotFoundError",
    "StreamDecoder",
    "load_codec",
    "read_audio",
    "resample",
    "resolve_path",
    "write_audio",
]
