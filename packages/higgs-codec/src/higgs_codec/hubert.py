"""HuBERT (base layout: group-norm conv feature extractor, post-norm transformer).

Only what the codec uses: the average of all hidden states (the encoder's input
and every layer's output). Parameter names follow transformers' HubertModel.
"""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .config import HubertArgs
from .layers import Conv1d, Linear, attention

# query rows per attention block: bounds the score matrix on long inputs
ATTENTION_BLOCK_ELEMENTS = 1 << 26
# long inputs run the conv feature extractor in windows of this many frames (50 per s)
FEATURE_CHUNK_FRAMES = 1500


class ChannelNorm(nn.Module):
    """GroupNorm with one group per channel: normalise each channel over time."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        mean = x.mean(axis=1, keepdims=True)
        var = mx.square(x - mean).mean(axis=1, keepdims=True)
        return self.normalize(x, mean, var)

    def normalize(self, x: mx.array, mean: mx.array, var: mx.array) -> mx.array:
        return (x - mean) * mx.rsqrt(var + self.eps) * self.weight + self.bias


class ConvLayer(nn.Module):
    def __init__(self, args: HubertArgs, i: int):
        super().__init__()
        in_dim = args.conv_dim[i - 1] if i > 0 else 1
        out_dim = args.conv_dim[i]
        self.conv = Conv1d(
            in_dim, out_dim, args.conv_kernel[i], stride=args.conv_stride[i], bias=args.conv_bias
        )
        if i == 0:
            self.layer_norm = ChannelNorm(out_dim)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv(x)
        if "layer_norm" in self:
            x = self.layer_norm(x)
        return nn.gelu(x)


class FeatureEncoder(nn.Module):
    def __init__(self, args: HubertArgs):
        super().__init__()
        self.conv_layers = [ConvLayer(args, i) for i in range(len(args.conv_dim))]
        self.kernels, self.strides = args.conv_kernel, args.conv_stride

    def output_length(self, n: int) -> int:
        for k, s in zip(self.kernels, self.strides, strict=True):
            n = (n - k) // s + 1
        return max(n, 0)

    def __call__(self, x: mx.array) -> mx.array:
        """x [B, N, 1] -> [B, frames, C]. The first layer normalises each channel over the
        whole input, so long inputs take two passes: the first conv's channel statistics
        over all of it, then windows of FEATURE_CHUNK_FRAMES frames (the convs are
        unpadded and windows start on a frame boundary, so the frames are exact)."""
        frames = self.output_length(x.shape[1])
        if frames <= FEATURE_CHUNK_FRAMES:
            for layer in self.conv_layers:
                x = layer(x)
            return x
        first = self.conv_layers[0]
        mean, var = self._first_layer_stats(x)
        hop = math.prod(self.strides)
        span = self.kernels[-1]
        for k, s in zip(self.kernels[-2::-1], self.strides[-2::-1], strict=True):
            span = (span - 1) * s + k  # input samples one output frame sees
        outs = []
        for f0 in range(0, frames, FEATURE_CHUNK_FRAMES):
            f1 = min(f0 + FEATURE_CHUNK_FRAMES, frames)
            y = first.conv(x[:, f0 * hop : (f1 - 1) * hop + span])
            y = nn.gelu(first.layer_norm.normalize(y, mean, var))
            for layer in self.conv_layers[1:]:
                y = layer(y)
            outs.append(y)
            mx.eval(y)
        return mx.concatenate(outs, axis=1)

    def _first_layer_stats(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """Per (batch, channel) mean and biased variance of the first conv's output,
        merged over windows in float64 (Chan et al.)."""
        conv, k, s = self.conv_layers[0].conv, self.kernels[0], self.strides[0]
        total = (x.shape[1] - k) // s + 1
        step = FEATURE_CHUNK_FRAMES * math.prod(self.strides) // s
        count = 0
        mean = m2 = np.zeros((x.shape[0], 1, conv.weight.shape[0]))
        for a in range(0, total, step):
            b = min(a + step, total)
            y = np.asarray(conv(x[:, a * s : (b - 1) * s + k]), dtype=np.float64)
            n_b, mean_b = b - a, y.mean(axis=1, keepdims=True)
            m2_b = np.square(y - mean_b).sum(axis=1, keepdims=True)
            delta = mean_b - mean
            mean = mean + delta * n_b / (count + n_b)
            m2 = m2 + m2_b + np.square(delta) * count * n_b / (count + n_b)
            count += n_b
        return mx.array(mean.astype(np.float32)), mx.array((m2 / count).astype(np.float32))


class FeatureProjection(nn.Module):
    def __init__(self, args: HubertArgs):
        super().__init__()
        if args.feat_proj_layer_norm:
            self.layer_norm = nn.LayerNorm(args.conv_dim[-1], eps=args.layer_norm_eps)
        self.projection = Linear(args.conv_dim[-1], args.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        if "layer_norm" in self:
            x = self.layer_norm(x)
        return self.projection(x)


class PositionalConv(nn.Module):
    def __init__(self, args: HubertArgs):
        super().__init__()
        k = args.num_conv_pos_embeddings
        self.conv = Conv1d(
            args.hidden_size,
            args.hidden_size,
            k,
            padding=k // 2,
            groups=args.num_conv_pos_embedding_groups,
        )
        self.trim = 1 if k % 2 == 0 else 0  # an even kernel yields one extra frame

    def __call__(self, x: mx.array) -> mx.array:
        y = self.conv(x)
        if self.trim:
            y = y[:, : -self.trim]
        return nn.gelu(y)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = Linear(dim, dim)
        self.k_proj = Linear(dim, dim)
        self.v_proj = Linear(dim, dim)
        self.out_proj = Linear(dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        b, n, d = x.shape

        def split(t: mx.array):
            return t.reshape(b, n, self.heads, -1).transpose(0, 2, 1, 3)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        # full (bidirectional) attention; long inputs go in query blocks to bound memory
        block = max(1, ATTENTION_BLOCK_ELEMENTS // (self.heads * n))
        o = attention(q, k, v, self.scale, block)
        return self.out_proj(o.transpose(0, 2, 1, 3).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, args: HubertArgs):
        super().__init__()
        self.intermediate_dense = Linear(args.hidden_size, args.intermediate_size)
        self.output_dense = Linear(args.intermediate_size, args.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.output_dense(nn.gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    def __init__(self, args: HubertArgs):
        super().__init__()
        self.attention = Attention(args.hidden_size, args.num_attention_heads)
        self.layer_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.feed_forward = FeedForward(args)
        self.final_layer_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    def __init__(self, args: HubertArgs):
        super().__init__()
        self.pos_conv_embed = PositionalConv(args)
        self.layer_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.layers = [EncoderLayer(args) for _ in range(args.num_hidden_layers)]


class Hubert(nn.Module):
    def __init__(self, args: HubertArgs):
        super().__init__()
        self.feature_extractor = FeatureEncoder(args)
        self.feature_projection = FeatureProjection(args)
        self.encoder = Encoder(args)

    def mean_hidden_states(self, wave: mx.array) -> mx.array:
        """wave [B, N] at 16 kHz -> the mean of all hidden states [B, frames, hidden]."""
        x = self.feature_extractor(wave[..., None])
        x = self.feature_projection(x)
        x = x + self.encoder.pos_conv_embed(x)
        x = self.encoder.layer_norm(x)
        total = x
        for layer in self.encoder.layers:
            x = layer(x)
            total = total + x
        return total / (len(self.encoder.layers) + 1)
