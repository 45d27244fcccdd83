"""A prompt's constant beginning, prefilled once: its KV state (a :class:`Prefix`)
starts other prompts that share it (a voice's system and reference turns)."""

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache

from higgs_core.model import HiggsAudioModel


@dataclass
class Prefix:
    """The KV state of a prompt's constant beginning (a voice's system turn and
    reference turns), to start other prompts from.

    ``ids`` and ``audio`` are the positions it holds (audio: their frames
    ``[N, K]``); ``cache`` one KVCache per layer, trimmed to them.
    """

    ids: np.ndarray
    audio: mx.array | None
    cache: list[KVCache]

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.cache)

    def fresh_cache(self) -> list[KVCache]:
        """A cache holding the prefix, for one stream to extend (the prefix stays as it is)."""
        out = []
        for c in self.cache:
            new = KVCache()
            # New array objects: the stream's in-place updates never reach the prefix.
            new.keys, new.values = c.keys[..., : c.offset, :], c.values[..., : c.offset, :]
            new.offset = c.offset
            out.append(new)
        return out


def make_prefix(model: HiggsAudioModel, input_ids, audio_ids=None, *, step: int = 512) -> Prefix:
    """Prefill ``input_ids`` (a prompt's constant beginning) once, for :class:`Prefix` reuse."""
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"a prefix needs a non-empty 1-D sequence of ids, got shape {ids.shape}")
    audio = None if audio_ids is None else mx.array(audio_ids).astype(mx.int32)
    if audio is not None and audio.size == 0:
        audio = None
    model.route(ids, audio)  # ids in range, a frame for every audio position
    cache = model.make_cache()
    model.prefill(ids, audio, cache, step)
    for c in cache:  # drop the unused tail of the 256-step blocks
        c.keys, c.values = c.keys[..., : c.offset, :], c.values[..., : c.offset, :]
    mx.eval([c.state for c in cache], audio)  # data, not work queued on this thread's stream
    return Prefix(ids, audio, cache)
