"""Read a PyTorch checkpoint (`torch.save`, zip format) without torch and without
running anything from the file.

A torch checkpoint is a zip holding `data.pkl` plus one raw blob per tensor storage.
Unpickling normally may call any importable function; this reader's unpickler
resolves only the handful of names a tensor state dict uses (the tensor and storage
rebuilders, OrderedDict, and the bytes helpers some checkpoints carry) and refuses
every other global, so a hostile pickle fails before it can do anything. It also
bounds the work a file can cause: members must be stored (torch never compresses),
the pickle's opcodes are scanned before it runs (memo indices and sizes bounded),
BUILD may only set state on objects the reader itself made, and no tensor may hold
more values than its storage.
"""

import io
import os
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from typing import ClassVar

import numpy as np

from .errors import CodecError

_STORAGE_DTYPES: dict[str, "type[np.generic] | str"] = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, dtype: "type[np.generic] | str"):
        self.dtype = dtype


class _Opaque:
    """Stands in for an allowed non-tensor object (e.g. an io.BytesIO); dropped later."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


MAX_PICKLE_BYTES = 64 << 20  # a state dict's pickle is KBs: the tensors live in their own files
MAX_MEMO = 1 << 20  # memo slots a pickle may name


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: object
) -> np.ndarray:
    # The annotations say what torch writes; a hostile pickle may pass anything, hence the checks.
    itemsize = storage.dtype.itemsize
    if not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise pickle.UnpicklingError("a tensor's offset, size and stride must be integers")
    if offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError("a tensor has a negative offset, size or stride")
    if 0 in size:
        return np.zeros(tuple(size), dtype=storage.dtype)
    if int(np.prod(size, dtype=object)) > storage.size:
        # A weight never repeats values (stride 0 would make a tiny file a huge tensor).
        raise pickle.UnpicklingError("a tensor holds more values than its storage")
    if not size:
        return storage[offset : offset + 1].reshape(()).copy()
    end = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if end > storage.size:
        raise pickle.UnpicklingError("a tensor reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_: object) -> np.ndarray:
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("_io", "BytesIO"): _Opaque,
    ("io", "BytesIO"): _Opaque,
    ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),
}


def _scan(data: bytes):
    """Read the pickle's opcodes without running them: refuse memo indices and sizes
    that would make the unpickler allocate far more than the file holds."""
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"):
                if int(arg or 0) > MAX_MEMO:
                    raise pickle.UnpicklingError(f"it names memo slot {arg}")
            elif op.name in ("FRAME",) and int(arg or 0) > len(data):
                raise pickle.UnpicklingError(f"it declares a frame of {arg} bytes")
    except ValueError as e:  # truncated or malformed opcodes
        raise pickle.UnpicklingError(f"malformed pickle ({e})") from None


class _Unpickler(pickle._Unpickler):
    """The pure-Python unpickler (its dispatch table can be narrowed), with globals and
    BUILD restricted."""

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.prefix = prefix
        self.storages: dict[str, np.ndarray] = {}

    def load_build(self):
        # BUILD sets state on the object below it: only on the dicts and stand-ins
        # this reader made (a state dict's metadata), never on an allowed function.
        if not isinstance(self.stack[-2], OrderedDict | dict | _Opaque):
            raise pickle.UnpicklingError(
                f"it sets the state of {type(self.stack[-2]).__name__} objects"
            )
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it asks for {module}.{name}, which a tensor checkpoint never needs"
            ) from None

    def persistent_load(self, pid: object) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}/data/{key!s}")
            if storage_type.dtype == "bfloat16":
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                self.storages[key] = bits.view(np.float32)
            else:
                self.storages[key] = np.frombuffer(
                    raw, dtype=np.dtype(storage_type.dtype).newbyteorder("<")
                )
        return self.storages[key]


def load_torch_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A torch.save'd state dict -> {name: numpy array}; non-tensor entries are dropped.

    bfloat16 tensors come back as float32. Raises CodecError for anything that is not
    a plain tensor state dict, naming what the pickle asked for.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CodecError(
            f"{path} is not a zip-format PyTorch checkpoint (torch.save from torch >= 1.6): {e}"
        ) from e
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CodecError(f"{path} is not a PyTorch checkpoint: no single data.pkl inside")
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                # torch.save never compresses: a compressed member can inflate a small
                # file into gigabytes.
                raise CodecError(
                    f"refusing to load {path}: its member {info.filename} is compressed"
                )
        if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
            raise CodecError(
                f"refusing to load {path}: its data.pkl is over {MAX_PICKLE_BYTES} bytes"
            )
        prefix = pickles[0].rpartition("/")[0]
        order = f"{prefix}/byteorder"
        if order in archive.namelist() and archive.read(order).strip() != b"little":
            raise CodecError(f"{path} was saved big-endian, which this reader does not support")
        try:
            data = archive.read(pickles[0])
            _scan(data)
            state = _Unpickler(data, archive, prefix).load()
        except (
            pickle.UnpicklingError,
            KeyError,
            EOFError,
            TypeError,
            ValueError,
            AttributeError,
            IndexError,
            MemoryError,
            zipfile.BadZipFile,
        ) as e:
            raise CodecError(f"refusing to load {path}: {e}") from e
    if not isinstance(state, dict):
        raise CodecError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
