"""Token samplers over logits shaped ``[..., K, V]``.

The order is the one Hugging Face's generate (and so Higgs Audio) applies:
temperature, then top-k, then top-p, then a categorical draw. Everything is
vectorised over the leading axes and takes an explicit PRNG key.

A draw inverts the filtered distribution at one uniform number per row
(:func:`draw`) over the kept values, sorted: a full sort of the vocabulary and
one Gumbel number per entry cost ~0.9 ms a row of 8 codebooks on the CPU, the
top-k and the kept entries' exponentials a fraction of that.
"""

from dataclasses import dataclass

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
    x = scale(logits, temperature)
    if isinstance(top_k, int) and top_k == 0 and isinstance(top_p, float | int) and top_p >= 1:
        return x  # numbers that disable both filters
    kept = rank(x, top_k, top_p, top_k if isinstance(top_k, int) else 0)
    return mx.where(x < kept.floor, -mx.inf, x)


def scale(logits: mx.array, temperature) -> mx.array:
    """The logits in float32 over the temperature (a number, or one per row; <= 0
    in an array leaves the row as it is)."""
    x = logits.astype(mx.float32)
    t = _per_row(temperature, x.ndim)
    if isinstance(t, mx.array):
        return x / mx.where(t > 0, t, 1.0)
    return x / t if t != 1.0 else x


@dataclass(frozen=True)
class Kept:
    """What top-k and top-p keep of each row of ``x [..., V]`` (each field ``[..., 1]``
    but ``ranked``): the values above the k-th largest in descending order
    (``ranked [..., W]``, -inf past them), the k-th largest value ``kth`` and how
    many entries equal it (``ties``; -inf and 0 without top-k), the row's largest
    value ``top``, and the smallest value kept, ``floor``.

    Only values enter, and the run of entries tied with the k-th largest enters as
    a count: so a row's figures are the same whatever number of entries its
    batch ranked (any number at least its k), ties included."""

    ranked: mx.array
    kth: mx.array
    ties: mx.array
    top: mx.array
    floor: mx.array

    def tie_mass(self) -> tuple[mx.array, mx.array]:
        return _tie_mass(self.kth, self.ties, self.top)


def _tie_mass(kth: mx.array, ties: mx.array, top: mx.array) -> tuple[mx.array, mx.array]:
    """exp(kth - top) for each entry tied with the k-th largest, and the ties' whole mass."""
    each = mx.where(ties > 0, mx.exp(kth - top), 0.0)
    return each, ties * each


def rank(x: mx.array, top_k, top_p, kmax: int = 0) -> Kept:
    """What the filters keep of ``x`` (see :class:`Kept`): all of it when neither is on.

    ``kmax`` > 0 promises that every row's top-k is at most ``kmax``: then only the
    top ``kmax`` entries are sorted (a full sort of the vocabulary costs ~0.4 ms a
    row of 8 codebooks on the CPU). Rows without top-k need ``kmax`` 0 (all)."""
    V = x.shape[-1]
    k, p = (_per_row(v, x.ndim) for v in (top_k, top_p))
    use_k = (k > 0) & (k < V)
    use_p = p < 1.0
    if 0 < kmax < V:
        ranked = -mx.sort(-mx.topk(x, kmax, axis=-1), axis=-1)
    else:
        ranked = -mx.sort(-x, axis=-1)
    W = ranked.shape[-1]
    lead = (*x.shape[:-1], 1)
    top = ranked[..., :1]
    kth = mx.full(lead, -mx.inf)
    if use_k is not False:
        at = mx.clip(mx.array(k) - 1, 0, W - 1) if isinstance(k, mx.array) else min(k, W) - 1
        kth = mx.where(use_k, mx.take_along_axis(ranked, mx.broadcast_to(at, lead), axis=-1), kth)
    ties = mx.where(kth > -mx.inf, mx.sum(x == kth, axis=-1, keepdims=True), 0).astype(mx.int32)
    ranked = mx.where(ranked > kth, ranked, -mx.inf)
    floor = kth
    if use_p is not False:
        # The mass before each kept entry, from the top: a scan over the values above
        # the k-th, then the run of its ties, j of them before the (j+1)-th.
        e = mx.exp(ranked - top)
        cum = mx.cumsum(e, axis=-1)
        above = cum[..., -1:]
        each, tied = _tie_mass(kth, ties, top)
        bound = p * (above + tied)
        keep = mx.sum((ranked > -mx.inf) & (cum - e < bound), axis=-1, keepdims=True)
        in_ties = mx.where(
            (ties > 0) & (above < bound),
            mx.minimum(ties, mx.ceil((bound - above) / mx.where(each > 0, each, 1.0))),
            0,
        )
        cutoff = mx.take_along_axis(ranked, mx.maximum(keep, 1) - 1, axis=-1)
        floor = mx.where(use_p, mx.maximum(kth, mx.where(in_ties > 0, kth, cutoff)), kth)
    return Kept(ranked, kth, ties, top, floor)


def draw(x: mx.array, u: mx.array, kept: Kept | None = None) -> mx.array:
    """One code per row of ``x [..., V]`` from softmax(x) over what ``kept`` keeps (all
    when None), by inverting its distribution at ``u [...]`` (uniform in [0, 1)). int32.

    With ``kept``, over its values in descending order, then the run of the k-th
    largest's ties: exponentials of the kept entries only. An entry tied with
    others takes the place of its rank among them in vocabulary order, so the result
    is canonical. Without, over the whole vocabulary in its order (no sort): a
    different draw for the same ``u``, which RAS's redraws use.
    """
    if kept is None:
        cum = mx.cumsum(mx.exp(x - mx.max(x, axis=-1, keepdims=True)), axis=-1)
        return mx.sum(cum <= _below(u, cum[..., -1:]), axis=-1).astype(mx.int32)
    ranked = mx.where(kept.ranked >= kept.floor, kept.ranked, -mx.inf)
    cum = mx.cumsum(mx.exp(ranked - kept.top), axis=-1)
    above = cum[..., -1:]
    each, tied = kept.tie_mass()
    tied = mx.where(kept.floor <= kept.kth, tied, 0.0)  # the ties are kept
    target = _below(u, above + tied)
    # the value drawn and its place among the entries of that value
    at = mx.minimum(mx.sum(cum <= target, axis=-1, keepdims=True), ranked.shape[-1] - 1)
    value = mx.take_along_axis(ranked, at, axis=-1)
    place = at - mx.sum(ranked > value, axis=-1, keepdims=True)
    j = mx.floor((target - above) / mx.where(each > 0, each, 1.0)).astype(mx.int32)
    in_ties = target >= above
    value = mx.where(in_ties, kept.kth, value)
    place = mx.where(in_ties, mx.clip(j, 0, mx.maximum(kept.ties - 1, 0)), place)
    seen = mx.cumsum((x == value).astype(mx.int32), axis=-1)
    return mx.sum(seen <= place, axis=-1).astype(mx.int32)


def _below(u: mx.array, total: mx.array) -> mx.array:
    """The point ``u`` of the way to ``total``, strictly below it, so that the entry
    found is a kept one."""
    return u[..., None] * total * (1.0 - 2.0**-23)


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
    x = scale(logits, temperature)
    return draw(x, mx.random.uniform(shape=x.shape[:-1], key=key), rank(x, top_k, top_p, top_k))


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
    raw = logits.astype(mx.float32)
    redraw = draw(raw, mx.random.uniform(shape=raw.shape[:-1], key=key))
    return mx.where(count >= max_repeat, redraw, codes)
