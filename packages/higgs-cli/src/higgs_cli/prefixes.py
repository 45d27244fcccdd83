"""Voice prefixes kept for reuse: in memory (an LRU bounded in bytes) and on disk
beside the voice.

A prompt's constant beginning (the system turn with its scene, the reference
turns with a voice's transcript and codes) is the same for every text spoken in
that voice, so its KV state (a :class:`higgs_core.Prefix`) is computed once.
Its key covers everything that changes that state: the model (its checkpoint
fingerprint, weight dtype, quantization, and whether the CPU kernels run it),
the positions' token ids and the codes of their audio. Files are mlx-lm's
prompt-cache safetensors, checked against the key and the model's shapes when
read; a stale or damaged file is reported and made again.
"""

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache, load_prompt_cache, save_prompt_cache

from higgs_core import Prefix

FORMAT = "higgs-prefix-1"


def model_identity(model, model_fingerprint: str) -> str:
    """What about a model changes a prefix's KV state."""
    weight = model.audio_codebook_embeddings.weight  # never quantized: the activations' dtype
    quant = model.config.quantization or {}
    kernels = getattr(model, "kernels", "")
    return "|".join(
        [
            model_fingerprint,
            str(weight.dtype),
            f"{quant.get('bits')}/{quant.get('group_size')}",
            "kernels" if kernels.startswith("higgs-kernels") else str(mx.default_device()),
        ]
    )


def prefix_key(identity: str, ids: np.ndarray, audio: np.ndarray | None) -> str:
    h = hashlib.sha256(f"{FORMAT}|{identity}|".encode())
    h.update(np.asarray(ids, np.int64).tobytes())
    if audio is not None:
        h.update(np.asarray(audio, np.int32).tobytes())
    return h.hexdigest()[:24]


class PrefixCache:
    """Prefixes by key, least recently used dropped first, at most ``max_bytes``.

    Counted for a server's health report, which another thread reads: ``hits`` and
    ``misses`` in memory, and ``loaded``, the misses read back from a voice's store
    (the rest were computed).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max(int(max_bytes), 0)
        self._items: OrderedDict[str, Prefix] = OrderedDict()
        self.nbytes = 0  # kept as items come and go: a reader never walks the dict
        self.hits = self.misses = self.loaded = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Prefix | None:
        prefix = self._items.get(key)
        if prefix is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return prefix

    def put(self, key: str, prefix: Prefix):
        if prefix.nbytes > self.max_bytes:
            return
        if (old := self._items.pop(key, None)) is not None:
            self.nbytes -= old.nbytes
        self._items[key] = prefix
        self.nbytes += prefix.nbytes
        while self.nbytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.nbytes -= dropped.nbytes

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._items),
            "bytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "loaded": self.loaded,
        }


def save_prefix(path: Path, key: str, prefix: Prefix):
    """Write a prefix to ``path`` (a temporary file renamed into place)."""
    metadata = {"format": FORMAT, "key": key, "length": str(prefix.length)}
    metadata["ids"] = ",".join(str(int(i)) for i in prefix.ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".safetensors")
    os.close(fd)
    try:
        save_prompt_cache(tmp, prefix.cache, metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_prefix(path: Path, key: str, model, audio: mx.array | None) -> Prefix:
    """Read a prefix written by :func:`save_prefix`; ValueError if it is not the
    one ``key`` names for this model, or is damaged."""
    try:
        cache, metadata = load_prompt_cache(str(path), return_metadata=True)
    except Exception as e:  # a torn or foreign file: safetensors, JSON or key errors
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from e
    if metadata.get("format") != FORMAT or metadata.get("key") != key:
        raise ValueError("made for another model or prompt")
    try:
        length = int(metadata["length"])
        ids = np.array([int(i) for i in metadata["ids"].split(",")], np.int64)
    except (KeyError, ValueError) as e:
        raise ValueError(f"damaged metadata ({e})") from e
    cfg = model.config
    want = (1, cfg.num_key_value_heads, length, cfg.head_dim)
    dtype = model.audio_codebook_embeddings.weight.dtype
    if len(cache) != cfg.num_hidden_layers or len(ids) != length:
        raise ValueError(f"holds {len(cache)} layers of {len(ids)} positions")
    for c in cache:
        if not isinstance(c, KVCache) or c.offset != length:
            raise ValueError("not a KV cache of the prefix's length")
        for a in (c.keys, c.values):
            if tuple(a.shape) != want or a.dtype != dtype:
                raise ValueError(f"an array of shape {tuple(a.shape)} and type {a.dtype}")
    return Prefix(ids, audio, cache)


class PrefixStore:
    """Where prefixes are looked up and kept: the memory LRU, then the folder of the
    voice a prompt speaks in (``folder`` None: memory only). A folder that refuses a
    write is remembered and not tried again."""

    def __init__(self, memory: PrefixCache, model, files_per_voice: int):
        self.memory = memory
        self.model = model
        self.files_per_voice = files_per_voice
        self._unwritable: set[Path] = set()

    def get(self, key: str, folder: Path | None, audio, warn) -> Prefix | None:
        """The prefix under ``key`` (``audio``: its positions' codes, to check a file)."""
        if (prefix := self.memory.get(key)) is not None or folder is None:
            return prefix
        path = folder / f"prefix-{key}.safetensors"
        if not path.is_file():
            return None
        try:
            prefix = load_prefix(path, key, self.model, None if audio is None else mx.array(audio))
        except ValueError as e:
            warn(f"the stored prefix {path.name} of voice {folder.name!r} is {e}; making it again")
            path.unlink(missing_ok=True)
            return None
        self.memory.loaded += 1
        self.memory.put(key, prefix)
        return prefix

    def keep(self, key: str, prefix: Prefix, folder: Path | None, warn):
        """Keep a new prefix in memory, and beside its voice (the newest few files)."""
        self.memory.put(key, prefix)
        if folder is None or folder in self._unwritable:
            return
        try:
            save_prefix(folder / f"prefix-{key}.safetensors", key, prefix)
            files = sorted(folder.glob("prefix-*.safetensors"), key=lambda p: p.stat().st_mtime)
            for old in files[: -self.files_per_voice]:
                old.unlink(missing_ok=True)
        except OSError as e:
            self._unwritable.add(folder)
            warn(f"cannot store the prefix of voice {folder.name!r} ({e}); keeping it in memory")
