"""Token samplers over logits shaped ``[..., K, V]``.

The order is the one Hugging Face's generate (and so Higgs Audio) applies:
temperature, then top-k, then top-p, then a categorical draw. Everything is
vectorised over the leading axes and takes an explicit PRNG key.
"""

import mlx.core as mx

from higgs_sampling.params import SamplingParams as SamplingParams  # (its home was here)


def greedy(logits: mx.array) -> mx.array:
    """Argmax over the last axis, as int32."""
    return mx.argmax(logits, axis=-1).astype(mx.int32)


def gumbel_max(logits: mx.array, key: mx.array) -> mx.array:
    """One categorical draw per row from softmax(logits), by the Gumbel-max trick.

    Entries at -inf are never drawn.
    """
    noise = mx.random.gumbel(logits.shape, key=key)
    return greedy(logits.astype(mx.float32) + noise)


def _per_row(value, ndim: int):
    """A parameter as given (a Python number), or an array of per-row values shaped to
    broadcast against logits of ``ndim`` axes (one value per leading index)."""
    if isinstance(value, mx.array):
        return value.reshape(*value.shape, *([1] * (ndim - value.ndim)))
    return value


def filter_logits(logits: mx.array, temperature=1.0, top_k=0, top_p=1.0) -> mx.array:
    """Scale by ``1 / temperature``, then keep the top-k, then the top-p nucleus.

    Removed entries become -inf. Top-k keeps every entry tied with the k-th
    largest; top-p keeps the most probable entries whose mass, counted before
    each entry, is below ``top_p`` (so at least one entry always stays).

    Each parameter is a number, or an array with one value per row of the
    leading axes (rows of a batch with settings of their own); a row's result
    is the same either way. A temperature <= 0 in an array leaves its row
    unscaled (that row is greedy, see :func:`sample`).
    """
    x = logits.astype(mx.float32)
    V = x.shape[-1]
    t, k, p = (_per_row(v, x.ndim) for v in (temperature, top_k, top_p))
    if isinstance(t, mx.array):
        x = x / mx.where(t > 0, t, 1.0)
    elif t != 1.0:
        x = x / t
    use_k = (k > 0) & (k < V)
    use_p = p < 1.0
    if use_k is False and use_p is False:  # numbers that disable both filters
        return x
    ranked = -mx.sort(-x, axis=-1)  # descending
    if use_k is not False:
        at = mx.clip(mx.array(k) - 1, 0, V - 1) if isinstance(k, mx.array) else k - 1
        kth = mx.take_along_axis(ranked, mx.broadcast_to(at, (*x.shape[:-1], 1)), axis=-1)
        x = mx.where(_where(use_k, x < kth), -mx.inf, x)
        ranked = mx.where(_where(use_k, ranked < kth), -mx.inf, ranked)
    if use_p is not False:
        probs = mx.softmax(ranked, axis=-1)
        before = mx.cumsum(probs, axis=-1) - probs  # mass of strictly better entries
        keep = mx.sum(before < p, axis=-1, keepdims=True).astype(mx.int32)
        cutoff = mx.take_along_axis(ranked, mx.maximum(keep, 1) - 1, axis=-1)
        x = mx.where(_where(use_p, x < cutoff), -mx.inf, x)
    return x


def _where(flag, mask: mx.array) -> mx.array:
    """``mask`` in the rows a filter applies to: ``flag`` is True or a per-row array."""
    return mask if flag is True else mx.logical_and(flag, mask)


def sample(
    logits: mx.array,
    key: mx.array | None = None,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> mx.array:
    """Draw one code per row of ``logits [..., V]`` -> int32 ``[...]``.

    ``temperature <= 0`` is greedy and ignores the key and the filters.
    """
    if temperature <= 0:
        return greedy(logits)
    if key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    return gumbel_max(filter_logits(logits, temperature, top_k, top_p), key)


def repetition_aware(
    codes: mx.array,
    logits: mx.array,
    history: mx.array,
    key: mx.array,
    max_repeat: int = 2,
) -> mx.array:
    """Repetition-aware sampling (RAS) as in the Higgs Audio release.

    ``codes [..., K]`` were sampled from ``logits [..., K, V]``; ``history
    [..., K, W]`` holds each codebook's last W codes (negative entries are
    empty slots). Where a code already appears ``max_repeat`` or more times in
    its codebook's window, that codebook is redrawn from softmax of the RAW
    logits: no temperature, top-k or top-p, and also when decoding greedily.
    """
    if history.shape[-1] == 0:
        return codes
    count = mx.sum(history == codes[..., None], axis=-1)
    redraw = gumbel_max(logits, key)
    return mx.where(count >= max_repeat, redraw, codes)
