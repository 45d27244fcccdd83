"""Finding, loading, quantizing and saving checkpoints.

Layouts read: the original release (one file, or shards with
``model.safetensors.index.json``), transformers' conversion, and MLX-quantized
re-uploads (original names plus ``.scales``/``.biases`` and a ``quantization``
block in config.json). :func:`save_model` writes the last of these.
"""

import json
import os
import re
import stat
from pathlib import Path
from typing import cast

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from higgs_core.backend import warn_if_cuda_shadowed
from higgs_core.config import ModelConfig
from higgs_core.errors import CheckpointError, ModelNotFoundError
from higgs_core.kernels import use_kernels
from higgs_core.model import HiggsAudioModel

# Files a model directory needs: weights, configs and the text tokenizer.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]

# Quantizing these shifts the voice; they stay in the model's float dtype.
NEVER_QUANTIZED = ("audio_codebook_embeddings", "audio_decoder_proj.audio_lm_head")

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_path(path_or_repo: str | os.PathLike[str]) -> Path:
    """The local directory of a checkpoint: ``path_or_repo`` itself when it is
    a directory, else the hub repo's snapshot (downloaded if not cached).

    higgs_codec.loading.resolve_path is its twin (neither package may import the
    other): the same rules, errors and words, tested side by side.
    """
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file; pass the checkpoint's directory")
    name = str(path_or_repo)
    if not isinstance(path_or_repo, str) or not _REPO_ID.fullmatch(name):
        raise ModelNotFoundError(f"no such checkpoint directory: {path}")
    return _download(name, HUB_PATTERNS)


def _download(repo_id: str, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise ModelNotFoundError(
            f"{repo_id!r} is neither a local directory nor a Hugging Face Hub repo this "
            f"machine can access ({type(e).__name__})",
            repo_id=repo_id,
        ) from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        raise ModelNotFoundError(
            f"cannot download {repo_id!r} from the Hugging Face Hub (offline or unreachable) "
            "and it is not in the local cache. Fetch it where there is a network, e.g. "
            f"`hf download {repo_id} --local-dir DIR`, then pass DIR instead of the repo id",
            repo_id=repo_id,
        ) from e


def named_arrays(model: nn.Module) -> list[tuple[str, mx.array]]:
    """The model's arrays by dotted name (tree_flatten of its parameters, typed)."""
    return cast(list[tuple[str, mx.array]], tree_flatten(model.parameters()))


MAX_JSON_BYTES = 16 << 20  # a config or a shard index is a few KB; refuse absurd ones


def regular_file(path: Path, max_bytes: int | None = None) -> Path:
    """``path`` if it is a regular file (symlinks followed, as hub snapshots use them),
    at most ``max_bytes``: never a FIFO that blocks a read or a device that never ends."""
    try:
        info = path.stat()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} is not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise CheckpointError(f"{path} is {info.st_size} bytes; a checkpoint's is far smaller")
    return path


def inside(folder: Path, name) -> Path:
    """A file a checkpoint names (a shard in its index): a plain relative name in ``folder``."""
    parts = Path(name).parts if isinstance(name, str) else ()
    if not parts or Path(name).is_absolute() or ".." in parts or "\\" in name:
        raise CheckpointError(f"{folder} names {name!r}, which is not a file in the checkpoint")
    return folder / name


def read_json(path: Path) -> dict:
    regular_file(path, MAX_JSON_BYTES)
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"unreadable {path}: {e}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not a {type(value).__name__}")
    return value


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, per its index if it has one."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"unreadable shard index {index}: no 'weight_map' object")
        files = [inside(path, name) for name in sorted(set(map(str, weight_map.values())))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index.name} names shards missing from {path}: {missing}")
        return [regular_file(f) for f in files]
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise CheckpointError(f"no model*.safetensors weights in {path}")
    return [regular_file(f) for f in files]


def read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.exists():
        raise CheckpointError(f"no config.json in {path}")
    return read_json(file)


def load_model(path_or_repo: str | Path, *, dtype: mx.Dtype | str | None = None) -> HiggsAudioModel:
    """Load a Higgs Audio v2 model from a directory or a Hugging Face Hub repo id.

    ``dtype`` (``mx.float32`` or "float32", ...) casts the float weights; None
    keeps the checkpoint's. Weights are read lazily, so memory peaks near the
    model's own size.
    """
    if isinstance(dtype, str):
        if not isinstance(getattr(mx, dtype, None), mx.Dtype):
            raise ValueError(f"unknown dtype {dtype!r}; try 'bfloat16', 'float16' or 'float32'")
        dtype = getattr(mx, dtype)
    path = resolve_path(path_or_repo)
    warn_if_cuda_shadowed()
    try:
        return _load(path, dtype)
    except (CheckpointError, ModelNotFoundError):
        raise
    except Exception as e:  # anything else a broken or hostile checkpoint provokes
        raise CheckpointError(f"cannot load {path}: {type(e).__name__}: {e}") from e


def _load(path: Path, dtype) -> HiggsAudioModel:
    config = ModelConfig.from_dict(read_config(path))
    weights: dict[str, mx.array] = {}
    for file in weight_files(path):
        loaded = mx.load(str(file))
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{file} holds no named tensors")
        weights.update(loaded)
    weights = HiggsAudioModel.sanitize(weights)
    config = config.replace(has_text_head="audio_decoder_proj.text_lm_head.weight" in weights)

    model = HiggsAudioModel(config)
    if config.quantization is not None:
        _quantize_as_stored(model, config.quantization, weights)
    _check_names(model, weights, path)
    if dtype is not None:
        weights = {
            k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v
            for k, v in weights.items()
        }
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:  # shapes that do not fit the config
        raise CheckpointError(f"checkpoint {path} does not fit its config: {e}") from None
    # One tensor at a time: a cast frees each source as soon as its copy exists.
    for _, value in named_arrays(model):
        mx.eval(value)
    materialize_buffers(model)
    use_kernels(model)
    return model


def materialize_buffers(module: nn.Module):
    """Evaluate the arrays modules keep beside their parameters (RoPE frequencies,
    codebook offsets). A lazy array belongs to the thread that made it, and a model
    loaded on one thread may serve on another (a server's worker)."""
    mx.eval([v for m in module.modules() for v in m.values() if isinstance(v, mx.array)])


def _quantize_as_stored(model: nn.Module, quantization: dict, weights: dict):
    """Swap in quantized layers exactly where the checkpoint stores ``.scales``."""
    mode = quantization.get("mode", "affine")

    def predicate(path: str, module: nn.Module):
        if isinstance(quantization.get(path), dict):  # a per-layer override
            return quantization[path]
        if not hasattr(module, "to_quantized") or f"{path}.scales" not in weights:
            return False
        # Infer this layer's bits and group size from the stored shapes.
        in_dim = module.weight.shape[-1]
        packed, scales = weights[f"{path}.weight"], weights[f"{path}.scales"]
        return {
            "bits": packed.shape[-1] * 32 // in_dim,
            "group_size": in_dim // scales.shape[-1],
            "mode": mode,
        }

    try:
        nn.quantize(
            model,
            group_size=quantization.get("group_size", 64),
            bits=quantization.get("bits", 4),
            mode=mode,
            class_predicate=predicate,
        )
    except (ValueError, KeyError, ZeroDivisionError) as e:
        raise CheckpointError(f"cannot rebuild the quantized layers: {e}") from None


def _check_names(model: nn.Module, weights: dict, path: Path):
    expected = {k for k, _ in named_arrays(model)}
    missing = sorted(expected - weights.keys())
    unexpected = sorted(weights.keys() - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weight(s): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} weight(s): {_names(unexpected)}")
        raise CheckpointError(f"checkpoint {path} does not match the model: " + "; ".join(parts))


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def quantize(model: HiggsAudioModel, bits: int, group_size: int = 64) -> HiggsAudioModel:
    """Quantize the model's linear layers and text embedding in place (and return it).

    The audio embedding table and the audio head stay in float: quantizing
    them shifts the voice.
    """
    if bits not in (4, 6, 8):
        raise ValueError(f"bits must be 4, 6 or 8, got {bits}")
    if model.config.quantization is not None:
        q = model.config.quantization
        raise ValueError(
            f"the model is already quantized ({q.get('bits')}-bit, groups of "
            f"{q.get('group_size')}): quantize the unquantized model instead"
        )

    def predicate(path: str, module: nn.Module) -> bool:
        if path in NEVER_QUANTIZED or not hasattr(module, "to_quantized"):
            return False
        return module.weight.shape[-1] % group_size == 0

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)
    # Quantize now, one tensor at a time: each float source is freed as its
    # copy lands, and none stays alive in a lazy graph (the text head is never
    # run while generating audio).
    for _, value in named_arrays(model):
        mx.eval(value)
    quantization = {"group_size": group_size, "bits": bits, "mode": "affine"}
    model.config = model.config.replace(quantization=quantization)
    use_kernels(model)  # the new quantized layers too
    return model


def save_model(model: HiggsAudioModel, path: str | Path, *, max_shard_gb: float = 5.0) -> Path:
    """Write ``model`` as an MLX checkpoint (original names, config.json with the
    ``quantization`` block if any) that :func:`load_model` reads back."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = dict(named_arrays(model))
    shards: list[dict[str, mx.array]] = [{}]
    size = 0
    for key, value in weights.items():
        if shards[-1] and size + value.nbytes > max_shard_gb * 2**30:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += value.nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        mx.save_safetensors(str(path / name), shard, metadata={"format": "mlx"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {
        "metadata": {"total_size": sum(v.nbytes for v in weights.values())},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
    return path
