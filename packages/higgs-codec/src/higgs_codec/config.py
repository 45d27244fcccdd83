"""The codec's hyper-parameters, read from either checkpoint layout's config.json.

transformers' `HiggsAudioV2TokenizerConfig` fills missing fields with library
defaults (75 frames/s, 16 quantizers) that do not describe the released checkpoint;
here every field a checkpoint states wins, the defaults only fill the gaps exactly as
transformers would, and the weights are checked against the result when loading.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import CodecError

T = TypeVar("T")


@dataclass(frozen=True)
class HubertArgs:
    """HuBERT (post-norm, group-norm feature extractor), as in transformers' HubertConfig."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple = (512,) * 7
    conv_kernel: tuple = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    feat_proj_layer_norm: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "HubertArgs":
        unsupported = {
            "feat_extract_norm": "group",
            "do_stable_layer_norm": False,
            "conv_pos_batch_norm": False,
            "hidden_act": "gelu",
            "feat_extract_activation": "gelu",
        }
        for key, want in unsupported.items():
            if d.get(key, want) != want:
                raise CodecError(
                    f"unsupported HuBERT variant: {key}={d[key]!r} (expected {want!r})"
                )
        kwargs = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("conv_dim", "conv_kernel", "conv_stride"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k])
        args = cls(**kwargs)
        if not len(args.conv_dim) == len(args.conv_kernel) == len(args.conv_stride):
            raise CodecError(
                "HuBERT config: conv_dim, conv_kernel and conv_stride differ in length"
            )
        return args

    @property
    def hop(self):
        return math.prod(self.conv_stride)

    def check(self):
        bounds = {
            "hidden_size": (1, 8192),
            "num_hidden_layers": (1, 64),
            "num_attention_heads": (1, 256),
            "intermediate_size": (1, 65536),
            "num_conv_pos_embeddings": (1, 1024),
            "num_conv_pos_embedding_groups": (1, 1024),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise CodecError(f"HuBERT config: {name}={value!r} is outside {low}..{high}")
        if self.hidden_size % self.num_attention_heads:
            raise CodecError("HuBERT config: hidden_size does not split into its attention heads")
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            values = getattr(self, name)
            if not 1 <= len(values) <= 16 or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 8192 for v in values
            ):
                raise CodecError(f"HuBERT config: {name} must be 1-16 integers in 1..8192")
        return self


@dataclass(frozen=True)
class CodecArgs:
    sample_rate: int = 24000
    downsampling_ratios: tuple = (8, 5, 4, 2, 3)
    upsampling_ratios: tuple = (8, 5, 4, 2, 3)
    encoder_hidden_size: int = 64
    decoder_hidden_size: int = 1024
    acoustic_dim: int = 256  # DAC latent width (D)
    semantic_dim: int = 768  # HuBERT width = semantic encoder width
    quantizer_dim: int = 1024  # RVQ width: fc output, fc2 input
    codebook_size: int = 1024
    codebook_dim: int | None = 64  # None: no projection in or out of the codebooks
    num_quantizers: int = 8
    semantic_sample_rate: int = 16000
    downsample_factor: int = 320
    # the semantic encoder (convs + ELU residual units)
    kernel_size: int = 3
    channel_ratios: tuple = (1, 1)
    strides: tuple = (1, 1)
    block_dilations: tuple = (1, 1)
    unit_kernel_size: int = 3
    hubert: HubertArgs | None = field(default=None, compare=False)

    @property
    def hop_length(self):
        return math.prod(self.downsampling_ratios)

    @property
    def frame_rate(self):
        return math.ceil(self.sample_rate / self.hop_length)

    @property
    def semantic_downsample_factor(self):
        return int(
            self.hop_length
            / (self.sample_rate / self.semantic_sample_rate)
            / self.downsample_factor
        )

    def check(self):
        for name, (low, high) in _BOUNDS.items():
            value = getattr(self, name)
            if name == "codebook_dim" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise CodecError(f"codec config: {name}={value!r} is outside {low}..{high}")
        for name in (
            "downsampling_ratios",
            "upsampling_ratios",
            "channel_ratios",
            "strides",
            "block_dilations",
        ):
            values = getattr(self, name)
            if not 1 <= len(values) <= 8 or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64 for v in values
            ):
                raise CodecError(
                    f"codec config: {name}={list(values)!r} must be 1-8 integers in 1..64"
                )
        if self.hubert is not None:
            self.hubert.check()
        if math.prod(self.upsampling_ratios) != self.hop_length:
            raise CodecError(
                f"codec config: upsampling ratios {self.upsampling_ratios} do not invert the "
                f"downsampling ratios {self.downsampling_ratios}"
            )
        if self.decoder_hidden_size % 2 ** len(self.upsampling_ratios):
            raise CodecError(
                "codec config: decoder_hidden_size must halve once per upsampling block"
            )
        return self


# Sane bounds (the released codec is well inside), checked before anything is built.
_BOUNDS = {
    "sample_rate": (1000, 384000),
    "semantic_sample_rate": (1000, 384000),
    "encoder_hidden_size": (1, 4096),
    "decoder_hidden_size": (1, 16384),
    "acoustic_dim": (1, 8192),
    "semantic_dim": (1, 8192),
    "quantizer_dim": (1, 16384),
    "codebook_size": (2, 1 << 16),
    "codebook_dim": (1, 8192),
    "num_quantizers": (1, 64),
    "downsample_factor": (1, 1 << 16),
    "kernel_size": (1, 63),
    "unit_kernel_size": (1, 63),
}


def _checked(build: Callable[[], T]) -> T:
    """Run a config reader; malformed values (strings, lists, zeros where sizes go)
    become one CodecError instead of a TypeError or a math domain error."""
    try:
        return build()
    except CodecError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, KeyError, AttributeError, OverflowError) as e:
        raise CodecError(f"malformed codec config: {type(e).__name__}: {e}") from None


# transformers' HiggsAudioV2TokenizerConfig defaults for the acoustic (DAC) sub-config
_DAC_DEFAULTS = {
    "encoder_hidden_size": 64,
    "downsampling_ratios": [8, 5, 4, 2],
    "decoder_hidden_size": 1024,
    "upsampling_ratios": [8, 5, 4, 2],
    "hidden_size": 256,
}


def from_transformers(config: dict) -> "CodecArgs":
    """CodecArgs from a transformers `higgs_audio_v2_tokenizer` config.json dict."""
    if not isinstance(config, dict):
        raise CodecError(f"a codec config must be a JSON object, not a {type(config).__name__}")
    return _checked(lambda: _from_transformers(config))


def _from_transformers(config: dict) -> "CodecArgs":
    model_type = config.get("model_type")
    if model_type != "higgs_audio_v2_tokenizer":
        hint = ""
        if model_type in ("higgs_audio_v2", "higgs_audio"):
            hint = " (the language model; its codec is an audio_tokenizer/ folder or a repo)"
        raise CodecError(
            f"config.json has model_type {model_type!r}, not 'higgs_audio_v2_tokenizer'{hint}"
        )
    dac = {**_DAC_DEFAULTS, **(config.get("acoustic_model_config") or {})}
    hubert_dict = {"mask_time_prob": 0.0, **(config.get("semantic_model_config") or {})}
    hubert = HubertArgs.from_dict(hubert_dict)
    sample_rate = config.get("sample_rate", 24000)
    ratios = tuple(dac["downsampling_ratios"])
    codebook_size = config.get("codebook_size", 1024)
    bandwidths = config.get("target_bandwidths", (0.5, 1, 1.5, 2, 4))
    if not isinstance(codebook_size, int) or not 2 <= codebook_size <= 1 << 16:
        raise CodecError(f"codec config: codebook_size={codebook_size!r} is outside 2..65536")
    if not bandwidths or not all(
        isinstance(b, int | float) and 0 < b <= 1000 for b in bandwidths
    ):  # kbps; the released codec's largest is 4
        raise CodecError(
            f"codec config: target_bandwidths={bandwidths!r} must be in (0, 1000] kbps"
        )
    if not ratios or not all(isinstance(r, int) and 1 <= r <= 64 for r in ratios):
        raise CodecError(f"codec config: downsampling_ratios={list(ratios)!r} must be in 1..64")
    frame_rate = math.ceil(sample_rate / math.prod(ratios))
    num_quantizers = int(
        1000 * bandwidths[-1] // (frame_rate * math.ceil(math.log2(codebook_size)))
    )
    return CodecArgs(
        sample_rate=sample_rate,
        downsampling_ratios=ratios,
        upsampling_ratios=tuple(dac["upsampling_ratios"]),
        encoder_hidden_size=dac["encoder_hidden_size"],
        decoder_hidden_size=dac["decoder_hidden_size"],
        acoustic_dim=dac["hidden_size"],
        semantic_dim=hubert.hidden_size,
        quantizer_dim=dac["hidden_size"] + hubert.hidden_size,
        codebook_size=codebook_size,
        codebook_dim=config.get("codebook_dim", 64),
        num_quantizers=num_quantizers,
        semantic_sample_rate=config.get("semantic_sample_rate", 16000),
        downsample_factor=config.get("downsample_factor", 320),
        kernel_size=config.get("kernel_size", 3),
        channel_ratios=tuple(config.get("channel_ratios", (1, 1))),
        strides=tuple(config.get("strides", (1, 1))),
        block_dilations=tuple(config.get("block_dilations", (1, 1))),
        unit_kernel_size=config.get("unit_kernel_size", 3),
        hubert=hubert,
    ).check()


# the semantic teachers the original release knows, by the repo it fetches them from
ORIGINAL_SEMANTIC_REPOS = {
    "hubert_base_general": "bosonai/hubert_base",
    "hubert_base": "facebook/hubert-base-ls960",
}


def from_original(
    config: dict, widths: tuple[int, int, int, int], hubert: HubertArgs | None = None
) -> "CodecArgs":
    """CodecArgs from the original release's config.json (HiggsAudioTokenizer kwargs).

    The original code hard-codes the DAC widths (64 in, 1024 out); `widths` carries
    (encoder_hidden_size, decoder_hidden_size, semantic_dim, quantizer_dim) as read
    from the checkpoint's weight shapes, so that small test checkpoints load too.
    """
    if not isinstance(config, dict):
        raise CodecError(f"a codec config must be a JSON object, not a {type(config).__name__}")
    return _checked(lambda: _from_original(config, widths, hubert))


def _from_original(
    config: dict, widths: tuple[int, int, int, int], hubert: HubertArgs | None = None
) -> "CodecArgs":
    if not isinstance(config.get("bins", 1024), int):
        raise CodecError("original codec config: only RVQ codebooks (integer 'bins') are supported")
    for key, want in (("merge_mode", "concat"), ("downsample_mode", "step_down")):
        if config.get(key, want) != want:
            raise CodecError(f"original codec config: unsupported {key}={config[key]!r}")
    teacher = config.get("semantic_techer", "hubert_base_general")
    if teacher not in ORIGINAL_SEMANTIC_REPOS:
        raise CodecError(f"original codec config: unsupported semantic teacher {teacher!r}")
    encoder_hidden, decoder_hidden, semantic_dim, quantizer_dim = widths
    ratios = tuple(config.get("ratios", (8, 5, 4, 2)))
    if hubert is not None and hubert.hidden_size != semantic_dim:
        raise CodecError(
            f"the HuBERT config says width {hubert.hidden_size}, the checkpoint's semantic "
            f"encoder has {semantic_dim}"
        )
    return CodecArgs(
        sample_rate=config.get("sample_rate", 16000),
        downsampling_ratios=ratios,
        upsampling_ratios=ratios,  # the original decoder runs its rates in the same order
        encoder_hidden_size=encoder_hidden,
        decoder_hidden_size=decoder_hidden,
        acoustic_dim=config.get("D", 128),
        semantic_dim=semantic_dim,
        quantizer_dim=quantizer_dim,
        codebook_size=config.get("bins", 1024),
        codebook_dim=config.get("codebook_dim"),
        num_quantizers=config.get("n_q", 8),
        semantic_sample_rate=config.get("semantic_sample_rate") or 16000,
        hubert=hubert,
    ).check()
