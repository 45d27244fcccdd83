"""The codec: encode audio to RVQ codes, decode codes to 24 kHz audio."""

from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .audio import resample, to_mono
from .config import CodecArgs
from .dac import AcousticDecoder, AcousticEncoder
from .errors import CodecError
from .hubert import Hubert
from .layers import A, Linear, numpy_gemm
from .quantizer import ResidualVectorQuantizer
from .semantic import SemanticEncoder

if TYPE_CHECKING:
    from .streaming import StreamDecoder

# whole-utterance decode above this many frames goes through the stream decoder in
# chunks, which gives the same samples with memory bounded by the chunk
DECODE_CHUNK_FRAMES = 750


class Codec(nn.Module):
    def __init__(self, args: CodecArgs, decode_only: bool = False):
        super().__init__()
        self.args = args
        self.decode_only = decode_only
        self.quantizer = ResidualVectorQuantizer(
            args.num_quantizers,
            args.quantizer_dim,
            args.codebook_size,
            args.codebook_dim,
            not decode_only,
        )
        self.fc2 = Linear(args.quantizer_dim, args.acoustic_dim)
        self.acoustic_decoder = AcousticDecoder(
            args.acoustic_dim, args.decoder_hidden_size, args.upsampling_ratios
        )
        if not decode_only:
            if args.hubert is None:
                raise CodecError("encoding needs the HuBERT config, which this checkpoint lacks")
            self.semantic_model = Hubert(args.hubert)
            self.encoder_semantic = SemanticEncoder(args)
            self.acoustic_encoder = AcousticEncoder(
                args.encoder_hidden_size, args.downsampling_ratios, args.acoustic_dim
            )
            self.fc = Linear(args.acoustic_dim + args.semantic_dim, args.quantizer_dim)

    sample_rate = property(lambda self: self.args.sample_rate)
    frame_rate = property(lambda self: self.args.frame_rate)
    hop_length = property(lambda self: self.args.hop_length)
    num_codebooks = property(lambda self: self.args.num_quantizers)
    codebook_size = property(lambda self: self.args.codebook_size)

    # -- decoding ---------------------------------------------------------------------

    def check_codes(self, codes: "np.ndarray | mx.array") -> mx.array:
        """codes [K, T] (numpy or mlx, integer) -> int32 mx.array, validated."""
        if not isinstance(codes, mx.array):
            return mx.array(self.host_codes(codes))
        if not mx.issubdtype(codes.dtype, mx.integer):
            raise CodecError(f"codes must be integers, got {codes.dtype}")
        self._check_shape(codes.shape)
        codes = codes.astype(mx.int32)
        if codes.size and mx.any((codes < 0) | (codes >= self.codebook_size)).item():
            raise self._out_of_range()
        return codes

    def host_codes(self, codes: "np.ndarray | mx.array") -> np.ndarray:
        """codes [K, T] (numpy or mlx, integer) -> int32 numpy array, validated on the
        host (no MLX evaluation of its own: what the numpy decoder wants)."""
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu":
            raise CodecError(f"codes must be integers, got {codes.dtype}")
        self._check_shape(codes.shape)
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise self._out_of_range()
        return codes.astype(np.int32, copy=False)

    def _check_shape(self, shape: "tuple[int, ...]") -> None:
        if len(shape) != 2 or not 1 <= shape[0] <= self.num_codebooks:
            raise CodecError(
                f"codes must be shaped [K, T] with K <= {self.num_codebooks}, got {tuple(shape)}"
            )

    def _out_of_range(self) -> CodecError:
        return CodecError(
            f"codes must lie in [0, {self.codebook_size}); clip or drop stream BOS/EOS first"
        )

    def latents(self, codes: A) -> A:
        """Validated codes [K, T] -> decoder input [1, T, acoustic_dim], in numpy when
        the codes are numpy."""
        return self.fc2(self.quantizer.decode(codes))[None]

    def decode(self, codes: "np.ndarray | mx.array") -> mx.array:
        """codes [K, T] -> float32 samples [T * hop] at `sample_rate`."""
        codes = self.check_codes(codes)
        frames = codes.shape[1]
        if frames == 0:
            raise CodecError("there are no frames to decode")
        if frames <= DECODE_CHUNK_FRAMES:
            if numpy_gemm():  # wholly in numpy (see layers)
                return mx.array(self.acoustic_decoder(self.latents(np.asarray(codes)))[0, :, 0])
            return self.acoustic_decoder(self.latents(codes))[0, :, 0]
        stream = self.stream_decoder()
        parts = []
        for start in range(0, frames, DECODE_CHUNK_FRAMES):
            parts.append(stream.push(codes[:, start : start + DECODE_CHUNK_FRAMES]))
            mx.eval(parts[-1])
        parts.append(stream.flush())
        return mx.concatenate(parts)

    def stream_decoder(self) -> "StreamDecoder":
        """A decoder that takes frames as they come and returns the samples that are final."""
        from .streaming import StreamDecoder

        return StreamDecoder(self)

    # -- encoding ---------------------------------------------------------------------

    def encode(self, wave: "np.ndarray | mx.array", sample_rate: int) -> mx.array:
        """wave [N] or [C, N] (numpy or mlx; channels are averaged) -> int32 codes [K, T]."""
        if self.decode_only:
            raise CodecError(
                "this codec was loaded with decode_only=True; load it again without it to encode"
            )
        x = to_mono(wave)
        if x.size == 0:
            raise CodecError("the audio is empty")
        if not mx.all(mx.isfinite(x)).item():
            raise CodecError("the audio contains NaN or infinite samples")
        if sample_rate != self.sample_rate:
            x = resample(x, sample_rate, self.sample_rate)
        if x.size < self.hop_length:
            raise CodecError(
                f"the audio is shorter than one codec frame ({self.hop_length} samples at "
                f"{self.sample_rate} Hz, {1000 / self.frame_rate:g} ms)"
            )
        embeddings = self.embeddings(x)
        return self.quantizer.encode(embeddings[0])

    def semantic_features(self, x: mx.array) -> mx.array:
        """24 kHz wave [N] -> averaged HuBERT states at the frame rate [1, T, semantic_dim]."""
        a = self.args
        wave = resample(x, a.sample_rate, a.semantic_sample_rate)
        wave = mx.pad(wave, (160, 160))[None]
        states = self.semantic_model.mean_hidden_states(wave)
        return states[:, :: max(a.semantic_downsample_factor, 1)]

    def embeddings(self, x: mx.array) -> mx.array:
        """24 kHz wave [N] -> RVQ input [1, T, quantizer_dim], as the original release glues
        the branches: when the acoustic frame count misses the semantic one, the acoustic
        encoder reads the wave padded by 160 * downsample samples each side, and both
        branches are cut to the shorter."""
        semantic = self.encoder_semantic(self.semantic_features(x))
        frames = semantic.shape[1]
        if self.acoustic_encoder.output_length(x.size) != frames:
            pad = 160 * self.args.semantic_downsample_factor
            x = mx.pad(x, (pad, pad))
        acoustic = self.acoustic_encoder(x[None, :, None])
        frames = min(frames, acoustic.shape[1])
        joined = mx.concatenate([acoustic[:, :frames], semantic[:, :frames]], axis=-1)
        return self.fc(joined)
