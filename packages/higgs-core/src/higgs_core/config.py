"""The model's configuration, read from either config.json layout.

Two layouts exist for Higgs Audio v2:

- the original release (``model_type`` "higgs_audio"): the Llama backbone in a
  nested ``text_config``, audio fields prefixed ``audio_``, the audio codebook
  size counting only real codes (1024);
- transformers (``model_type`` "higgs_audio_v2"): one flat dict, the codebook
  size counting the stream BOS and EOS too (1026).

Both become one :class:`ModelConfig`; ``to_dict`` writes the original layout.
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from higgs_core.errors import CheckpointError

ORIGINAL = "higgs_audio"
TRANSFORMERS = "higgs_audio_v2"

# Sane bounds (the released model is well inside): checked before anything is built,
# so an absurd config fails with a line instead of allocating gigabytes.
BOUNDS = {
    "hidden_size": (1, 1 << 16),
    "intermediate_size": (1, 1 << 18),
    "num_hidden_layers": (1, 512),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "head_dim": (1, 1024),
    "vocab_size": (1, 1 << 22),
    "max_position_embeddings": (1, 1 << 24),
    "num_codebooks": (1, 64),
    "codebook_size": (1, 1 << 16),
}
MAX_PARAMETERS = 100e9


@dataclass(frozen=True)
class ModelConfig:
    """Everything the model and the frame loop need, in one flat record.

    ``codebook_size`` counts real codes only (1024); each codebook's rows in the
    audio embedding table and the audio head number ``audio_vocab_size``
    (codes plus the stream BOS and EOS).
    """

    # Llama backbone
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_hidden_layers: int = 28
    num_attention_heads: int = 24
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    vocab_size: int = 128256
    rope_theta: float = 500000.0
    rope_scaling: dict | None = field(
        default_factory=lambda: {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    )
    max_position_embeddings: int = 131072
    # audio
    num_codebooks: int = 8
    codebook_size: int = 1024
    audio_stream_bos_id: int = 1024
    audio_stream_eos_id: int = 1025
    # special text tokens
    audio_out_token_id: int = 128016
    audio_in_token_id: int = 128015
    audio_out_bos_token_id: int = 128013
    audio_eos_token_id: int = 128012
    audio_delay_token_id: int | None = None  # transformers' extra audio placeholder
    # Whether <|AUDIO|> (audio in) positions carry codes, as in the released config;
    # they then route like audio out (same embedding, the audio FFN path).
    encode_audio_in_tokens: bool = False
    pad_token_id: int = 128001
    bos_token_id: int = 128000
    eos_token_id: int = 128009
    # what the checkpoint holds: a text head (optional), quantized modules
    has_text_head: bool = True
    quantization: dict | None = None

    @property
    def audio_vocab_size(self) -> int:
        """Rows per codebook: the codes, then the stream BOS and EOS."""
        return self.codebook_size + 2

    @property
    def audio_placeholder_ids(self) -> tuple[int, ...]:
        """Token ids whose positions carry an audio frame.

        Audio-in positions count when the checkpoint encodes audio-in tokens: the
        release embeds their codes with the same table and marks them in
        ``audio_discrete_codes_mask`` (``audio_in_discrete_codes_mask |
        audio_out_mask``), which sends them through the audio FFN path.
        """
        ids: tuple[int, ...] = (self.audio_out_token_id,)
        if self.audio_delay_token_id is not None:
            ids += (self.audio_delay_token_id,)
        if self.encode_audio_in_tokens:
            ids += (self.audio_in_token_id,)
        return ids

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "ModelConfig":
        """Read a config.json dict in the original or the transformers layout."""
        if not isinstance(config, dict):
            raise CheckpointError(
                f"a model config must be a JSON object, not a {type(config).__name__}"
            )
        model_type = config.get("model_type")
        try:
            if model_type == ORIGINAL:
                fields = _from_original(config)
            elif model_type == TRANSFORMERS:
                fields = _from_transformers(config)
        except CheckpointError:
            raise
        except (TypeError, ValueError, ZeroDivisionError, AttributeError, KeyError) as e:
            raise CheckpointError(f"malformed {model_type} config: {e}") from None
        if model_type not in (ORIGINAL, TRANSFORMERS):
            raise CheckpointError(
                f"unknown config layout: model_type={model_type!r} (keys: "
                f"{', '.join(sorted(config)[:12])}{', ...' if len(config) > 12 else ''}); "
                f"expected {ORIGINAL!r} (Boson AI's release, MLX re-uploads) or "
                f"{TRANSFORMERS!r} (transformers)"
            )
        fields["quantization"] = config.get("quantization")
        try:
            out = cls(**fields)
        except TypeError as e:  # a field of the wrong kind, e.g. a string where a number goes
            raise CheckpointError(f"malformed {model_type} config: {e}") from None
        out._check()
        return out

    def _check(self):
        for name in BOUNDS:
            _bounded(name, getattr(self, name))
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < 1e30:
                raise CheckpointError(f"config: {name}={value!r} must be a positive number")
        params = self.num_hidden_layers * (
            self.hidden_size * self.head_dim * (2 * self.num_attention_heads)
            + 2 * self.hidden_size * self.head_dim * self.num_key_value_heads
            + 6 * self.hidden_size * self.intermediate_size
        ) + self.hidden_size * (
            2 * self.vocab_size + 2 * self.num_codebooks * self.audio_vocab_size
        )
        if params > MAX_PARAMETERS:
            raise CheckpointError(
                f"config: it describes a model of {params / 1e9:.0f}e9 parameters; "
                f"Higgs Audio v2 has 5.8e9 (the limit here is {MAX_PARAMETERS / 1e9:.0f}e9)"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"{self.num_attention_heads} attention heads do not split into "
                f"{self.num_key_value_heads} key/value heads"
            )
        stream_ids = {self.audio_stream_bos_id, self.audio_stream_eos_id}
        if stream_ids != {self.codebook_size, self.codebook_size + 1}:
            raise CheckpointError(
                f"the stream BOS/EOS ids ({self.audio_stream_bos_id}, "
                f"{self.audio_stream_eos_id}) must be the two rows after the "
                f"{self.codebook_size} codes of each codebook"
            )

    def to_dict(self) -> dict[str, Any]:
        """The original-layout config.json (what :func:`higgs_core.save_model` writes)."""
        text_config = {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "vocab_size": self.vocab_size,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": False,
        }
        out = {
            "architectures": ["HiggsAudioModel"],
            "model_type": ORIGINAL,
            "text_config": text_config,
            "audio_adapter_type": "dual_ffn_fast_forward",
            "audio_dual_ffn_layers": list(range(self.num_hidden_layers)),
            "audio_decoder_proj_num_layers": 0,
            "audio_embed_avg": False,
            "use_audio_out_embed_projector": False,
            "use_audio_out_self_attention": False,
            "use_delay_pattern": True,
            "skip_audio_tower": True,
            "audio_num_codebooks": self.num_codebooks,
            "audio_codebook_size": self.codebook_size,
            "audio_stream_bos_id": self.audio_stream_bos_id,
            "audio_stream_eos_id": self.audio_stream_eos_id,
            "audio_in_token_idx": self.audio_in_token_id,
            "encode_audio_in_tokens": self.encode_audio_in_tokens,
            "encode_whisper_embed": False,
            "audio_out_token_idx": self.audio_out_token_id,
            "audio_out_bos_token_id": self.audio_out_bos_token_id,
            "audio_eos_token_id": self.audio_eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        if self.audio_delay_token_id is not None:
            out["audio_delay_token_id"] = self.audio_delay_token_id
        if self.quantization is not None:
            out["quantization"] = self.quantization
        return out

    def replace(self, **changes) -> "ModelConfig":
        return ModelConfig(**{**asdict(self), **changes})


def _rope(config: dict) -> tuple[float, dict | None]:
    """(theta, scaling) from Llama's ``rope_theta``/``rope_scaling`` or transformers 5's
    ``rope_parameters``."""
    params = config.get("rope_parameters")
    if params:
        params = dict(params)
        theta = params.pop("rope_theta", config.get("rope_theta", 10000.0))
        if params.get("rope_type", params.get("type", "default")) == "default":
            return float(theta), None
        return float(theta), params
    return float(config.get("rope_theta", 10000.0)), config.get("rope_scaling")


def _bounded(name: str, value):
    """An integer field within BOUNDS, checked as it is read (before it sizes anything)."""
    low, high = BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CheckpointError(f"config: {name}={value!r} is outside {low}..{high}")
    return value


def _backbone(text: dict) -> dict:
    heads = _bounded("num_attention_heads", text["num_attention_heads"])
    hidden = _bounded("hidden_size", text["hidden_size"])
    theta, scaling = _rope(text)
    return {
        "hidden_size": hidden,
        "intermediate_size": _bounded("intermediate_size", text["intermediate_size"]),
        "num_hidden_layers": _bounded("num_hidden_layers", text["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": text.get("num_key_value_heads") or heads,
        "head_dim": text.get("head_dim") or hidden // heads,
        "rms_norm_eps": text.get("rms_norm_eps", 1e-5),
        "vocab_size": text["vocab_size"],
        "rope_theta": theta,
        "rope_scaling": scaling,
        "max_position_embeddings": text.get("max_position_embeddings", 131072),
    }


def _unsupported(what: str):
    raise CheckpointError(f"unsupported Higgs Audio variant: {what} (only the v2 dual-FFN model)")


def _from_original(config: dict) -> dict:
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise CheckpointError("a 'higgs_audio' config needs a nested 'text_config' (the Llama)")
    try:
        fields = _backbone(text)
    except KeyError as e:
        raise CheckpointError(f"the config's text_config lacks {e.args[0]!r}") from None
    layers = fields["num_hidden_layers"]
    adapter = config.get("audio_adapter_type", "stack")
    if not adapter.startswith("dual_ffn"):
        _unsupported(f"audio_adapter_type {adapter!r}")
    dual = config.get("audio_dual_ffn_layers") or []
    if sorted(dual) != list(range(layers)):
        _unsupported(f"audio_dual_ffn_layers {dual} (not every layer)")
    flags = ("audio_embed_avg", "use_audio_out_embed_projector", "use_audio_out_self_attention")
    for flag in flags:
        if config.get(flag):
            _unsupported(f"{flag}=true")
    if config.get("audio_decoder_proj_num_layers", 0):
        _unsupported("audio_decoder_proj_num_layers > 0")
    if not config.get("use_delay_pattern", False):
        _unsupported("use_delay_pattern=false")
    codebook_size = config.get("audio_codebook_size", 1024)
    fields.update(
        num_codebooks=config.get("audio_num_codebooks", 8),
        codebook_size=codebook_size,
        audio_stream_bos_id=config.get("audio_stream_bos_id", codebook_size),
        audio_stream_eos_id=config.get("audio_stream_eos_id", codebook_size + 1),
        audio_out_token_id=config.get("audio_out_token_idx", 128016),
        audio_in_token_id=config.get("audio_in_token_idx", 128015),
        audio_out_bos_token_id=config.get("audio_out_bos_token_id", 128013),
        audio_eos_token_id=config.get("audio_eos_token_id", 128012),
        audio_delay_token_id=config.get("audio_delay_token_id"),
        # HiggsAudioConfig's default is False; the released checkpoint sets it.
        encode_audio_in_tokens=bool(config.get("encode_audio_in_tokens", False)),
        pad_token_id=config.get("pad_token_id", 128001),
        bos_token_id=_first(text.get("bos_token_id"), 128000),
        eos_token_id=_first(text.get("eos_token_id"), 128009),
    )
    return fields


def _from_transformers(config: dict) -> dict:
    try:
        fields = _backbone(config)
    except KeyError as e:
        raise CheckpointError(f"the higgs_audio_v2 config lacks {e.args[0]!r}") from None
    rows = config.get("codebook_size", 1024)  # transformers counts BOS and EOS in it
    fields.update(
        num_codebooks=config.get("num_codebooks", 8),
        codebook_size=rows - 2,
        audio_stream_bos_id=config.get("audio_stream_bos_id", 1024),
        audio_stream_eos_id=config.get("audio_stream_eos_id", 1025),
        audio_out_token_id=config.get("audio_token_id", 128016),
        # transformers has no audio-in or audio-eos field; read them if a
        # checkpoint adds them, else take the release's ids.
        audio_in_token_id=config.get("audio_in_token_id", 128015),
        audio_out_bos_token_id=config.get("audio_bos_token_id", 128013),
        audio_eos_token_id=config.get("audio_eos_token_id", 128012),
        audio_delay_token_id=config.get("audio_delay_token_id", 128014),
        pad_token_id=_first(config.get("pad_token_id"), 128001),
        bos_token_id=_first(config.get("bos_token_id"), 128000),
        eos_token_id=_first(config.get("eos_token_id"), 128009),
    )
    if fields["audio_stream_eos_id"] >= rows or fields["audio_stream_bos_id"] >= rows:
        raise CheckpointError(
            f"codebook_size {rows} in a higgs_audio_v2 config must count the stream BOS and "
            f"EOS ({fields['audio_stream_bos_id']}, {fields['audio_stream_eos_id']}); "
            "the released checkpoint says 1026"
        )
    return fields


def _first(value, default):
    """A token id from a field that may hold a list of them, or nothing."""
    if isinstance(value, list):
        value = value[0] if value else None
    return default if value is None else value
