"""Find, read and check codec checkpoints in every layout the project meets.

- transformers layout: config.json (`higgs_audio_v2_tokenizer`) + model.safetensors
  (or a sharded index), weight norm folded, keys `acoustic_encoder.*`, ...;
- MLX re-uploads: that layout inside an `audio_tokenizer/` folder of a model repo;
- the original release: config.json (HiggsAudioTokenizer kwargs) + `model.pth`, a torch
  pickle read by `torch_pickle` without torch, with weight-norm g/v pairs and the
  original key names. Its HuBERT weights are inside model.pth, but the HuBERT config
  comes from the teacher's own repo (bosonai/hubert_base), as the original code fetches it;
- a Hugging Face Hub repo id holding any of these.
"""

import json
import os
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import config as cfg
from .errors import CodecError, CodecNotFoundError
from .layers import Conv1d, ConvTranspose1d
from .model import Codec
from .torch_pickle import load_torch_checkpoint

# A checkpoint's tensors by name, as read (numpy; MLX arrays once converted).
Weights = dict[str, np.ndarray]

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
ORIGINAL_WEIGHTS = "model.pth"
SUBFOLDER = "audio_tokenizer"
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

# weights a checkpoint may carry that nothing here uses
IGNORED = re.compile(
    r"^(decoder_semantic\.|fc1\.|semantic_model\.masked_spec_embed$"
    r"|quantizer\.quantizers\.\d+\.codebook\.(inited|cluster_size|embed_avg)$)"
)
# what decoding needs; decode_only keeps only these
DECODE = re.compile(
    r"^(acoustic_decoder\.|fc2\.|quantizer\.quantizers\.\d+\.(codebook\.embed$|project_out\.))"
)


def load_codec(
    path_or_repo: str | os.PathLike[str],
    *,
    decode_only: bool = False,
    semantic_model: str | os.PathLike[str] | None = None,
) -> Codec:
    """Load the audio tokenizer from a local directory or a Hub repo id.

    decode_only: build and load only what decoding needs (no HuBERT, no encoders).
    semantic_model: for the original layout only, the directory or repo id holding the
    HuBERT config (and weights, if model.pth lacks them); by default the repo the
    original code fetches for the checkpoint's semantic teacher.
    """
    directory = resolve_path(path_or_repo)
    try:
        directory, layout = _find_layout(directory)
        if layout == "transformers":
            args, weights = _read_transformers(directory, decode_only)
        else:
            args, weights = _read_original(directory, decode_only, semantic_model)
        codec = Codec(args, decode_only=decode_only)
        _load_weights(codec, weights, directory)
    except CodecError:
        raise
    except Exception as e:  # anything else a broken or hostile checkpoint provokes
        raise CodecError(f"cannot load the codec in {directory}: {type(e).__name__}: {e}") from e
    codec.eval()
    codec.path = directory  # where it came from: callers key caches of codes on it
    return codec


# -- finding the checkpoint -------------------------------------------------------------


def resolve_path(path_or_repo: str | os.PathLike[str], what: str = "codec") -> Path:
    """The local directory of a checkpoint: ``path_or_repo`` itself when it is a
    directory, else the hub repo's snapshot of the codec's files.

    higgs_core.loading.resolve_path is its twin (neither package may import the
    other): the same rules, errors and words, tested side by side.
    """
    return _local(path_or_repo, what) or _download(str(path_or_repo), what)


def _local(path_or_repo: str | os.PathLike[str], what: str) -> Path | None:
    """The directory ``path_or_repo`` names, or None when it is a hub repo id."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CodecNotFoundError(f"{path} is a file; pass the {what}'s directory", what=what)
    if not isinstance(path_or_repo, str) or not REPO_ID.fullmatch(str(path_or_repo)):
        raise CodecNotFoundError(f"no such {what} directory: {path}", what=what)
    return None


def _snapshot(repo_id: str, patterns: list[str], what: str = "codec") -> Path:
    # The HuBERT teacher's repo comes from the checkpoint's config, not the caller.
    use = "as semantic_model=" if what != "codec" else "instead of the repo id"
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
        raise CodecNotFoundError(
            f"{repo_id!r} is neither a local directory nor a Hugging Face Hub repo this "
            f"machine can access ({type(e).__name__})",
            repo_id=repo_id,
            what=what,
        ) from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        raise CodecNotFoundError(
            f"cannot download {repo_id!r} from the Hugging Face Hub (offline or unreachable) "
            "and it is not in the local cache. Fetch it where there is a network, e.g. "
            f"`hf download {repo_id} --local-dir DIR`, then pass DIR {use}",
            repo_id=repo_id,
            what=what,
        ) from e


def _download(repo_id: str, what: str) -> Path:
    """Fetch only the codec's files: the repo's config says whether the codec is the
    repo itself or its audio_tokenizer/ folder (a model repo)."""
    root = _snapshot(repo_id, ["config.json"], what)
    config = _read_json(root / "config.json") if (root / "config.json").is_file() else {}
    if _codec_kind(config) is None:
        return _snapshot(repo_id, [f"{SUBFOLDER}/*"], what)
    files = ["config.json", SAFETENSORS, SAFETENSORS_INDEX, "model-*.safetensors"]
    return _snapshot(repo_id, [*files, ORIGINAL_WEIGHTS], what)


MAX_JSON_BYTES = 16 << 20  # a config or an index is a few KB


def _regular(path: str | os.PathLike[str], max_bytes: int | None = None) -> Path:
    """``path`` if it is a regular file (symlinks followed): never a FIFO or a device."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as e:
        raise CodecError(f"could not read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CodecError(f"{path} is not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise CodecError(f"{path} is {info.st_size} bytes; a checkpoint's is far smaller")
    return path


def _inside(directory: Path, name: str) -> Path:
    """A file the checkpoint names (a shard in its index): a plain name in ``directory``."""
    parts = Path(name).parts if isinstance(name, str) else ()
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise CodecError(f"{directory} names {name!r}, which is not a file in the checkpoint")
    return _regular(directory / name)


def _read_json(path: str | os.PathLike[str]) -> dict:
    _regular(path, MAX_JSON_BYTES)
    try:
        value = json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise CodecError(f"could not read {path}: {e}") from e
    if not isinstance(value, dict):
        raise CodecError(f"{path} must hold a JSON object, not a {type(value).__name__}")
    return value


def _codec_kind(config: dict) -> str | None:
    if config.get("model_type") == "higgs_audio_v2_tokenizer":
        return "transformers"
    if "model_type" not in config and {"n_q", "ratios", "bins"} & set(config):
        return "original"
    return None


def _find_layout(directory: Path) -> tuple[Path, str]:
    config_path = directory / "config.json"
    if config_path.exists():
        _regular(config_path, MAX_JSON_BYTES)  # a FIFO or a device is never read
    if config_path.is_file():
        config = _read_json(config_path)
        kind = _codec_kind(config)
        if kind == "transformers":
            if not (
                (directory / SAFETENSORS).is_file() or (directory / SAFETENSORS_INDEX).is_file()
            ):
                raise CodecError(f"{directory} has a codec config.json but no {SAFETENSORS}")
            return directory, kind
        if kind == "original":
            if not (directory / ORIGINAL_WEIGHTS).is_file():
                raise CodecError(
                    f"{directory} has an original codec config.json but no {ORIGINAL_WEIGHTS}"
                )
            return directory, kind
    if (directory / SUBFOLDER).is_dir():
        return _find_layout(directory / SUBFOLDER)
    if config_path.is_file():
        cfg.from_transformers(_read_json(config_path))  # raises, naming the model type found
    found = sorted(p.name for p in directory.iterdir())[:12]
    raise CodecError(
        f"{directory} is not a codec checkpoint: expected config.json with {SAFETENSORS} "
        f"(transformers layout), with {ORIGINAL_WEIGHTS} (original layout), or an "
        f"{SUBFOLDER}/ folder; found {found}"
    )


# -- reading each layout ----------------------------------------------------------------


_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4"}


def _read_safetensors_file(path: Path, keep: Callable[[str], bool]) -> Weights:
    """The tensors of one .safetensors file whose names pass `keep`, memory-mapped, so
    that skipped tensors are never read (decode_only skips most of the file)."""
    _regular(path)
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > min(Path(path).stat().st_size, MAX_JSON_BYTES * 4):
                raise ValueError(f"a header of {size} bytes")
            header = json.loads(f.read(size))
        data = np.memmap(path, dtype=np.uint8, mode="r")
        out = {}
        for key, info in header.items():
            if key == "__metadata__" or not keep(key):
                continue
            start, end = (8 + size + o for o in info["data_offsets"])
            raw = data[start:end]
            if info["dtype"] == "BF16":
                value = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                value = raw.view(_SAFETENSORS_DTYPES[info["dtype"]])
            out[key] = value.reshape(info["shape"])
        return out
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise CodecError(f"could not read weights from {path}: {e!r}") from e


def _read_safetensors(directory: Path, keep: Callable[[str], bool] = lambda key: True) -> Weights:
    index = directory / SAFETENSORS_INDEX
    files = [directory / SAFETENSORS]
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CodecError(f"unreadable shard index {index}: no 'weight_map' object")
        files = sorted({_inside(directory, f) for f in map(str, weight_map.values())})
    weights = {}
    for f in files:
        weights.update(_read_safetensors_file(f, keep))
    return weights


def _read_transformers(directory: Path, decode_only: bool) -> tuple[cfg.CodecArgs, Weights]:
    args = cfg.from_transformers(_read_json(directory / "config.json"))
    return args, _read_safetensors(directory, lambda key: _wanted(key, decode_only))


def _wanted(key: str, decode_only: bool) -> bool:
    return not IGNORED.match(key) and (not decode_only or DECODE.match(key) is not None)


_INNER = ("snake1", "conv1", "snake2", "conv2")


def _original_key(key: str, n_blocks: int) -> str | None:
    """An original-release key -> the transformers name (None: not used here)."""
    parts = key.split(".")
    head = parts[0]
    if head in ("encoder", "decoder_2"):
        enc = head == "encoder"
        prefix = "acoustic_encoder" if enc else "acoustic_decoder"
        i = int(parts[2])
        if i == 0:
            return ".".join([prefix, "conv1", *parts[3:]])
        if i == n_blocks + 1:
            return ".".join([prefix, "snake1", *parts[3:]])
        if i == n_blocks + 2:
            return ".".join([prefix, "conv2", *parts[3:]])
        j = int(parts[4])
        block = f"{prefix}.block.{i - 1}"
        if (enc and j < 3) or (not enc and j >= 2):
            unit = j + 1 if enc else j - 1
            return ".".join([block, f"res_unit{unit}", _INNER[int(parts[6])], *parts[7:]])
        name = {3: "snake1", 4: "conv1"}[j] if enc else {0: "snake1", 1: "conv_t1"}[j]
        return ".".join([block, name, *parts[5:]])
    if head == "encoder_semantic":
        return re.sub(r"\.(conv[12]?)\.conv\.", r".\1.", key)
    if head == "quantizer" and parts[1] == "vq" and parts[2] == "layers":
        rest = ".".join(parts[4:]).replace("_codebook.", "codebook.")
        return f"quantizer.quantizers.{parts[3]}.{rest}"
    if head in ("fc_prior", "fc_post2"):
        return ".".join(["fc" if head == "fc_prior" else "fc2", *parts[1:]])
    if head == "semantic_model":
        return key
    return None


def _weight_shape(weights: Weights, base: str) -> tuple[int, ...] | None:
    for suffix in (".weight", ".weight_v", ".parametrizations.weight.original1"):
        if base + suffix in weights:
            return weights[base + suffix].shape
    return None


def _read_original(
    directory: Path, decode_only: bool, semantic_model: str | os.PathLike[str] | None
) -> tuple[cfg.CodecArgs, Weights]:
    config = _read_json(directory / "config.json")
    raw = load_torch_checkpoint(directory / ORIGINAL_WEIGHTS)
    n_blocks = len(config.get("ratios", (8, 5, 4, 2)))
    weights = {}
    for key, value in raw.items():
        new = _original_key(key, n_blocks)
        if new is not None:
            weights[new] = value
    d = config.get("D", 128)
    encoder = _weight_shape(weights, "acoustic_encoder.conv1")
    decoder = _weight_shape(weights, "acoustic_decoder.conv1")
    fc2 = _weight_shape(weights, "fc2")
    fc = _weight_shape(weights, "fc")
    if decoder is None or fc2 is None:
        raise CodecError(
            f"{directory / ORIGINAL_WEIGHTS} lacks the decoder weights (decoder_2.*, fc_post2.*)"
        )
    semantic_dim = fc[1] - d if fc is not None else 768

    hubert = None
    if not decode_only:
        source = (
            semantic_model
            or cfg.ORIGINAL_SEMANTIC_REPOS[config.get("semantic_techer", "hubert_base_general")]
        )
        has_weights = any(k.startswith("semantic_model.") for k in weights)
        hubert_dir = _locate_hubert(source, need_weights=not has_weights)
        hubert = cfg.HubertArgs.from_dict(_read_json(hubert_dir / "config.json"))
        if not has_weights:
            weights.update(_read_hubert_weights(hubert_dir))
    widths = (encoder[0] if encoder else 64, decoder[0], semantic_dim, fc2[1])
    args = cfg.from_original(config, widths, hubert)
    if not any(k.endswith("project_out.weight") for k in weights):
        args = replace(args, codebook_dim=None)
    return args, weights


def _locate_hubert(source: str | os.PathLike[str], need_weights: bool) -> Path:
    path = _local(source, "HuBERT checkpoint")
    if path is None:
        patterns = ["config.json"] + ([SAFETENSORS, "pytorch_model.bin"] if need_weights else [])
        path = _snapshot(str(source), patterns, "HuBERT checkpoint")
    if not (path / "config.json").is_file():
        raise CodecError(f"{path} holds no HuBERT config.json")
    return path


def _read_hubert_weights(directory: Path) -> Weights:
    if (directory / SAFETENSORS).is_file() or (directory / SAFETENSORS_INDEX).is_file():
        raw = _read_safetensors(directory)
    elif (directory / "pytorch_model.bin").is_file():
        raw = load_torch_checkpoint(directory / "pytorch_model.bin")
    else:
        raise CodecError(
            f"{directory} holds no HuBERT weights ({SAFETENSORS} or pytorch_model.bin)"
        )
    return {"semantic_model." + k.removeprefix("hubert."): v for k, v in raw.items()}


# -- from checkpoint tensors to the model's parameters ----------------------------------


def _fold_weight_norm(weights: Weights) -> Weights:
    """Replace every weight-norm pair (g, v) by weight = g * v / |v|, the norm taken over
    the axes where g has size 1 (dim 0 for the DAC convs, dim 2 for HuBERT's pos conv)."""
    pairs = {
        ".weight_g": ".weight_v",
        ".parametrizations.weight.original0": ".parametrizations.weight.original1",
    }
    out = {}
    for key, value in weights.items():
        for g_suffix, v_suffix in pairs.items():
            if key.endswith(v_suffix) and key.removesuffix(v_suffix) + g_suffix in weights:
                break
            if key.endswith(g_suffix):
                base = key.removesuffix(g_suffix)
                g = np.asarray(weights[key], dtype=np.float64)
                v = np.asarray(weights.get(base + v_suffix), dtype=np.float64)
                if v.ndim != g.ndim:
                    raise CodecError(f"weight norm of {base}: no matching {v_suffix.lstrip('.')}")
                axes = tuple(i for i in range(v.ndim) if g.shape[i] == 1)
                norm = np.sqrt(np.square(v).sum(axis=axes, keepdims=True))
                out[base + ".weight"] = (g * v / norm).astype(np.float32)
                break
        else:
            out[key] = value
    return out


def _torch_conv_shape(expected: tuple[int, ...], module: nn.Module) -> tuple[int, ...]:
    """The torch layout of an MLX conv weight shape [out, k, in]."""
    out, k, inp = expected
    return (inp, out, k) if isinstance(module, ConvTranspose1d) else (out, inp, k)


def _channels_last(
    weights: Weights, expected: dict[str, mx.array], modules: dict[str, nn.Module]
) -> bool:
    """Whether the checkpoint stores conv weights as MLX does ([out, k, in]) rather than as
    torch does; decided over all conv weights whose shape tells the layouts apart."""
    votes = set()
    for key, value in weights.items():
        module = modules.get(key.rpartition(".")[0])
        conv = isinstance(module, (Conv1d, ConvTranspose1d))
        if conv and key.endswith(".weight") and key in expected and len(value.shape) == 3:
            assert module is not None
            mlx_shape = tuple(expected[key].shape)
            torch_shape = _torch_conv_shape(mlx_shape, module)
            if mlx_shape != torch_shape and tuple(value.shape) in (mlx_shape, torch_shape):
                votes.add(tuple(value.shape) == mlx_shape)
    if len(votes) > 1:
        raise CodecError("the checkpoint mixes torch and MLX conv weight layouts")
    return votes == {True}


def _to_mlx(
    value: np.ndarray | mx.array,
    expected: tuple[int, ...],
    module: nn.Module | None,
    channels_last: bool,
) -> mx.array | None:
    """A checkpoint tensor -> float32 mx.array in MLX layout, or None if it cannot fit."""
    x = value if isinstance(value, mx.array) else mx.array(np.asarray(value))
    x = x.astype(mx.float32)
    if isinstance(module, (Conv1d, ConvTranspose1d)) and x.ndim == 3 and not channels_last:
        if tuple(x.shape) != _torch_conv_shape(expected, module):
            return None
        # torch conv [out, in, k] and transposed conv [in, out, k] -> [out, k, in]
        return x.transpose(1, 2, 0) if isinstance(module, ConvTranspose1d) else x.swapaxes(1, 2)
    if tuple(x.shape) == expected:
        return x
    if x.size == int(np.prod(expected)) and x.ndim == 3 and len(expected) == 1:
        return x.reshape(expected)  # Snake alpha [1, C, 1]
    return None


def _load_weights(codec: Codec, weights: Weights, source: Path) -> None:
    weights = _fold_weight_norm(weights)
    expected = dict(tree_flatten(codec.parameters()))
    modules = dict(codec.named_modules())
    channels_last = _channels_last(weights, expected, modules)
    keep = {}
    unexpected = []
    for key, value in weights.items():
        if not _wanted(key, codec.decode_only):
            continue
        if key not in expected:
            unexpected.append(key)
            continue
        module = modules.get(key.rpartition(".")[0])
        converted = _to_mlx(value, tuple(expected[key].shape), module, channels_last)
        if converted is None:
            raise CodecError(
                f"{source}: weight {key} has shape {tuple(value.shape)}, the config implies "
                f"{tuple(expected[key].shape)}"
            )
        keep[key] = converted
    missing = sorted(set(expected) - set(keep))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(sorted(unexpected)[:4])})")
    if problems:
        raise CodecError(
            f"{source} does not match the codec its config describes: weights "
            + "; ".join(problems)
        )
    codec.load_weights(list(keep.items()))
    mx.eval(codec.parameters())
    # Arrays kept beside the parameters too: a lazy array belongs to the thread that
    # made it, and a codec loaded on one thread may serve on another.
    mx.eval([v for m in codec.modules() for v in m.values() if isinstance(v, mx.array)])
