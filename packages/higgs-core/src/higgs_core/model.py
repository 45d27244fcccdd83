"""The Higgs Audio v2 language model on MLX.

A Llama-3.2 backbone in which every layer keeps one shared self-attention but
two of everything else: text positions go through ``input_layernorm``,
``post_attention_layernorm`` and ``mlp``; audio positions (one per delayed
frame) through ``audio_input_layernorm``, ``audio_post_attention_layernorm``
and ``audio_mlp``. A frame enters as the sum of its K codebook embeddings and
leaves through the audio head as K rows of logits.

Parameter names are the original release's, so its checkpoints (and MLX
re-uploads of them) load without renaming.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.activations import swiglu
from mlx_lm.models.base import create_attention_mask, scaled_dot_product_attention
from mlx_lm.models.cache import KVCache
from mlx_lm.models.rope_utils import initialize_rope

from higgs_core.config import ModelConfig


@dataclass(frozen=True)
class Routing:
    """Which rows of a chunk are text and which are audio.

    ``apply`` runs each group through its own function on just its rows, then
    restores sequence order; chunks that are all text or all audio skip the
    gathers.
    """

    text: mx.array | None
    audio: mx.array | None
    order: mx.array | None  # concat([text rows, audio rows])[:, order] is in sequence order

    @classmethod
    def from_mask(cls, is_audio: np.ndarray) -> "Routing":
        is_audio = np.asarray(is_audio, dtype=bool)
        if is_audio.all():
            return AUDIO
        if not is_audio.any():
            return TEXT
        text, audio = np.flatnonzero(~is_audio), np.flatnonzero(is_audio)
        order = np.argsort(np.concatenate([text, audio]), kind="stable")
        return cls(mx.array(text), mx.array(audio), mx.array(order))

    def apply(self, x: mx.array, text_fn: Callable, audio_fn: Callable) -> mx.array:
        if self.audio is None:
            return text_fn(x)
        if self.text is None:
            return audio_fn(x)
        y = mx.concatenate([text_fn(x[:, self.text]), audio_fn(x[:, self.audio])], axis=1)
        return y[:, self.order]


HEADS = ("audio_lm_head", "text_lm_head")
TEXT = Routing(mx.zeros(0), None, None)
AUDIO = Routing(None, mx.zeros(0), None)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        dim, self.head_dim = config.hidden_size, config.head_dim
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=False)
        self.rope = initialize_rope(
            self.head_dim,
            config.rope_theta,
            False,  # rotate-half, as Llama
            config.rope_scaling,
            config.max_position_embeddings,
        )

    def __call__(self, x: mx.array, mask, cache: KVCache | list[KVCache] | None) -> mx.array:
        """``x [B, L, D]`` with one cache for the batch, or a list of one cache per
        row: a batch of decode steps (L = 1) of rows whose caches differ in length."""
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        if isinstance(cache, list):
            out = self.attend_rows(q, k, v, cache)
        else:
            out = self._attend(q, k, v, mask, cache)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))

    def attend_rows(self, q, k, v, caches: list[KVCache]) -> mx.array:
        """A decode batch: each row attends over its own cache, as it would alone.
        (higgs_core.kernels.KernelAttention does all rows in one op each.)"""
        rows = [
            self._attend(q[b : b + 1], k[b : b + 1], v[b : b + 1], None, c)
            for b, c in enumerate(caches)
        ]
        return mx.concatenate(rows)

    def _attend(self, q, k, v, mask, cache: KVCache | None) -> mx.array:
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        return self.attend(q, k, v, mask, cache)

    def attend(self, q, k, v, mask, cache: KVCache | None) -> mx.array:
        """mlx-lm's attention (stock MLX); higgs_core.kernels.KernelAttention, which
        use_kernels swaps in on the CPU, runs higgs-kernels' instead."""
        return scaled_dot_product_attention(q, k, v, cache=cache, scale=self.scale, mask=mask)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        dim, hidden = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(self.activation(self.gate_proj(x), self.up_proj(x)))

    def activation(self, gate: mx.array, up: mx.array) -> mx.array:
        """mlx-lm's silu(gate) * up; higgs_core.kernels.KernelMLP runs higgs-kernels'
        (MLX's CPU exp is scalar: 150 us per 8192 values, 28 times a frame)."""
        return swiglu(gate, up)


class DualFFNLayer(nn.Module):
    """Shared attention; text and audio rows each take their own norms and MLP."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        eps = config.rms_norm_eps
        self.self_attn = Attention(config)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=eps)
        self.mlp = MLP(config)
        self.audio_input_layernorm = nn.RMSNorm(config.hidden_size, eps=eps)
        self.audio_post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=eps)
        self.audio_mlp = MLP(config)

    def _text_ffn(self, h: mx.array) -> mx.array:
        return self.mlp(self.post_attention_layernorm(h))

    def _audio_ffn(self, h: mx.array) -> mx.array:
        return self.audio_mlp(self.audio_post_attention_layernorm(h))

    def __call__(
        self, x: mx.array, mask, cache: KVCache | list[KVCache] | None, route: Routing
    ) -> mx.array:
        normed = route.apply(x, self.input_layernorm, self.audio_input_layernorm)
        h = x + self.self_attn(normed, mask, cache)
        return h + route.apply(h, self._text_ffn, self._audio_ffn)


class DecoderProjector(nn.Module):
    """The two heads (the original keeps them under ``audio_decoder_proj``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim, K = config.hidden_size, config.num_codebooks
        self.audio_lm_head = nn.Linear(dim, K * config.audio_vocab_size, bias=False)
        if config.has_text_head:
            self.text_lm_head = nn.Linear(dim, config.vocab_size, bias=False)


class HiggsAudioModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        K, D = config.num_codebooks, config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, D)
        self.audio_codebook_embeddings = nn.Embedding(K * config.audio_vocab_size, D)
        self.layers = [DualFFNLayer(config) for _ in range(config.num_hidden_layers)]
        self.norm = nn.RMSNorm(D, eps=config.rms_norm_eps)
        self.audio_decoder_proj = DecoderProjector(config)
        # Row of code c in codebook k: c + k * (codebook_size + 2).
        self._codebook_offsets = mx.arange(K, dtype=mx.int32) * config.audio_vocab_size

    # -- pieces -----------------------------------------------------------------

    def embed_audio(self, codes: mx.array) -> mx.array:
        """Frames ``[..., K]`` of delayed codes -> ``[..., D]``: the sum of K rows."""
        return self.audio_codebook_embeddings(codes + self._codebook_offsets).sum(axis=-2)

    def embed(self, input_ids: np.ndarray, audio_ids: mx.array | None, route: Routing) -> mx.array:
        """One sequence's embeddings ``[1, L, D]``; audio rows come from ``audio_ids [N, K]``."""
        if route.audio is None or audio_ids is None:  # (route() has checked they agree)
            return self.embed_tokens(mx.array(input_ids))[None]
        audio = self.embed_audio(audio_ids)[None]
        if route.text is None:
            return audio
        text = self.embed_tokens(mx.array(input_ids[~self.audio_mask(input_ids)]))[None]
        return mx.concatenate([text, audio], axis=1)[:, route.order]

    def backbone(self, h: mx.array, route: Routing, cache: Sequence[KVCache] | None = None):
        """The layers, without the final norm."""
        mask = create_attention_mask(h, cache[0] if cache else None)
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, cache[i] if cache else None, route)
        return h

    def audio_logits(self, h: mx.array) -> mx.array:
        """Normed hidden states ``[..., D]`` -> ``[..., K, codebook_size + 2]``."""
        out = self.audio_decoder_proj.audio_lm_head(h)
        return out.reshape(*h.shape[:-1], self.config.num_codebooks, self.config.audio_vocab_size)

    def text_logits(self, h: mx.array) -> mx.array:
        if not self.config.has_text_head:
            raise ValueError("this checkpoint has no text head (text_lm_head)")
        return self.audio_decoder_proj.text_lm_head(h)

    def audio_mask(self, input_ids: np.ndarray) -> np.ndarray:
        return np.isin(input_ids, self.config.audio_placeholder_ids)

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    @property
    def kv_bytes_per_position(self) -> int:
        """What one position of one row holds in the KV cache: keys and values of
        every layer, in the activations' type (the embeddings are never quantized)."""
        c = self.config
        size = self.audio_codebook_embeddings.weight.dtype.size
        return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * size

    # -- the public test hook ---------------------------------------------------

    def logits(self, input_ids, audio_ids=None) -> tuple[mx.array | None, mx.array]:
        """The reference forward pass over whole sequences.

        ``input_ids [B, L]``; every position holding an audio placeholder id
        takes the next frame of ``audio_ids [B, N, K]``. Returns ``text_logits
        [B, L, vocab]`` (None when the checkpoint has no text head) and
        ``audio_logits [B, L, K, codebook_size + 2]`` for every position.
        """
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {ids.shape}")
        if audio_ids is not None:
            audio_ids = mx.array(audio_ids) if not isinstance(audio_ids, mx.array) else audio_ids
        hidden = []
        for b in range(ids.shape[0]):  # rows may route differently; run them one by one
            row_audio = audio_ids[b] if audio_ids is not None else None
            route = self.route(ids[b], row_audio)
            h = self.backbone(self.embed(ids[b], row_audio, route), route)
            hidden.append(self.norm(h))
        h = mx.concatenate(hidden, axis=0)
        text = self.text_logits(h) if self.config.has_text_head else None
        return text, self.audio_logits(h)

    def route(self, input_ids: np.ndarray, audio_ids: mx.array | None) -> Routing:
        """The routing of one sequence, checking its ids are the model's and it has a
        frame for every audio position."""
        V_text = self.config.vocab_size
        if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= V_text):
            # An id out of range would read past the embedding table (MLX does not check).
            raise ValueError(
                f"token ids must lie in 0..{V_text - 1}, "
                f"got {int(input_ids.min())}..{int(input_ids.max())}"
            )
        is_audio = self.audio_mask(input_ids)
        n = int(is_audio.sum())
        have = 0 if audio_ids is None else audio_ids.shape[0]
        if n != have:
            raise ValueError(
                f"the token ids hold {n} audio positions but {have} audio frames were given"
            )
        if audio_ids is not None and n:
            if tuple(audio_ids.shape[1:]) != (self.config.num_codebooks,):
                raise ValueError(
                    f"audio frames must be [N, {self.config.num_codebooks}], got {audio_ids.shape}"
                )
            # A code out of range would silently read another codebook's rows.
            V = self.config.audio_vocab_size
            if mx.any((audio_ids < 0) | (audio_ids >= V)).item():
                raise ValueError(
                    f"audio codes must lie in 0..{V - 1} (codes, then stream BOS and EOS), "
                    f"got {mx.min(audio_ids).item()}..{mx.max(audio_ids).item()}"
                )
        return Routing.from_mask(is_audio)

    # -- generation ---------------------------------------------------------------

    def prefill(
        self,
        input_ids: np.ndarray,
        audio_ids: mx.array | None,
        cache: list[KVCache],
        step: int,
        start: int = 0,
    ) -> mx.array:
        """Run a prompt through the cache in chunks of ``step`` positions.

        ``start``: positions the cache already holds (a cached prefix of this
        prompt). Returns the audio logits ``[K, codebook_size + 2]`` of its last
        position.
        """
        self.route(input_ids, audio_ids)  # validates the whole prompt up front
        for begin in range(start, len(input_ids), step):
            end = min(begin + step, len(input_ids))
            logits = self.prefill_chunk(input_ids, audio_ids, cache, begin, end)
            if end < len(input_ids):
                mx.eval([c.state for c in cache])
                mx.clear_cache()
        return logits

    def prefill_chunk(
        self,
        input_ids: np.ndarray,
        audio_ids: mx.array | None,
        cache: list[KVCache],
        start: int,
        end: int,
    ) -> mx.array:
        """Positions ``start..end-1`` of a prompt into a cache holding ``start``
        positions; the audio logits of position ``end - 1``."""
        is_audio = self.audio_mask(input_ids)
        before, upto = int(is_audio[:start].sum()), int(is_audio[:end].sum())
        chunk_audio = audio_ids[before:upto] if audio_ids is not None and upto > before else None
        route = Routing.from_mask(is_audio[start:end])
        h = self.backbone(self.embed(input_ids[start:end], chunk_audio, route), route, cache)
        return self.audio_logits(self.norm(h[0, -1]))

    def step(self, frame: mx.array, cache: list[KVCache]) -> mx.array:
        """One decode step: frame ``[K]`` in, audio logits ``[K, V]`` of the next out.

        Only the audio path runs: audio norms, attention, audio MLP, audio head.
        """
        h = self.embed_audio(frame)[None, None]
        h = self.backbone(h, AUDIO, cache)
        return self.audio_logits(self.norm(h[0, 0]))

    def step_rows(self, frames: mx.array, caches: list[list[KVCache]]) -> mx.array:
        """One decode step for a batch of streams: frames ``[B, K]`` in, each row
        with its own cache (``caches[b]``, one KVCache per layer); audio logits
        ``[B, K, V]`` out. The weights are read once for all rows; each row
        attends over its own cache."""
        h = self.embed_audio(frames)[:, None]
        mask = None
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, [c[i] for c in caches], AUDIO)
        return self.audio_logits(self.norm(h[:, 0]))

    # -- checkpoints --------------------------------------------------------------

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Map any supported checkpoint's tensor names onto this model's.

        Takes the transformers names (``model.`` prefix, ``embed_audio_tokens``,
        bare heads), merges the release's partially-frozen splits, and drops
        buffers that are not weights.
        """
        out = {}
        for key, value in weights.items():
            if key.endswith(("rotary_emb.inv_freq", "rotary_emb.original_inv_freq")):
                continue
            if key.endswith("audio_codebook_weights"):
                continue
            if key.startswith("model.embed_audio_tokens.embed_audio_tokens."):
                key = "audio_codebook_embeddings." + key.split(".", 3)[3]
            elif key.startswith("model."):
                key = key[len("model.") :]
            elif key.startswith(("audio_lm_head.", "text_lm_head.")):
                key = "audio_decoder_proj." + key
            out[key] = value
        for name in ("embed_tokens.embedding", *(f"audio_decoder_proj.{h}.linear" for h in HEADS)):
            frozen = out.pop(f"{name}_frozen.weight", None)
            trainable = out.pop(f"{name}_trainable.weight", None)
            if frozen is not None and trainable is not None:
                out[f"{name.rsplit('.', 1)[0]}.weight"] = mx.concatenate([frozen, trainable])
            elif frozen is not None:  # half a pair: leave it to be reported
                out[f"{name}_frozen.weight"] = frozen
            elif trainable is not None:
                out[f"{name}_trainable.weight"] = trainable
        return out
