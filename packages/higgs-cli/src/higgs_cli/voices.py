"""Voices: built-in descriptions pinned on first use, and users' recordings.

Each voice is a folder ``<voices>/<name>/`` holding ``voice.json`` and, for a
recording, a copy of the audio. Codes are stored per codec fingerprint: a
recording's codes, and a built-in voice's pin, which is codes plus a transcript
and so serves every model (bf16, quantized, any folder) alike; a pin's
``.json`` beside it says which model made it. Every write goes to a temporary
file or folder first and is renamed into place.

The built-in voices ``en_woman``, ``en_man`` and ``en_man_deep`` are this
project's own text descriptions, spoken once by the model and then cloned; they
are not the recordings of similar names in the release's ``voice_prompts``.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
CODEBOOK = 1024  # codes are 0..1023 (Higgs Audio v2's codec)


@dataclass(frozen=True)
class Builtin:
    description: str
    seed: int


# Our own descriptions. The pin sentence is spoken once with a fixed seed.
BUILTINS = {
    "en_woman": Builtin(
        "A woman in her thirties with a warm, clear American English voice, speaking at a "
        "relaxed, even pace in a friendly tone; close microphone, very clear audio.",
        seed=11,
    ),
    "en_man": Builtin(
        "A man in his thirties with a clear, mid-pitched American English voice, speaking "
        "at a natural conversational pace in a friendly tone; very clear audio.",
        seed=23,
    ),
    "en_man_deep": Builtin(
        "A man with a deep, low-pitched, resonant English voice, speaking slowly and "
        "calmly with steady emphasis; close microphone, very clear audio.",
        seed=37,
    ),
}
PIN_TEXT = "Hello there. This is my voice, and I will read your text for you today."


class VoiceError(Exception):
    """A voice that is unknown, invalid or damaged, with what to do about it."""


class InvalidVoiceName(VoiceError):
    """A name that cannot be a voice (it would be a path trick, or is empty)."""


class UnknownVoice(VoiceError):
    """No voice of that name."""


class VoiceExists(VoiceError):
    """A voice of that name is there already (replacing it must be asked for)."""


class DamagedVoice(VoiceError):
    """A stored entry that cannot be used as it is; removing it makes room for a new one."""

    def __init__(self, name: str, why: str):
        super().__init__(f"voice {name!r} is damaged ({why})")
        self.name = name


@dataclass
class Voice:
    name: str
    kind: str  # "builtin" or "recording"
    transcript: str | None = None
    description: str | None = None
    audio: Path | None = None  # the stored copy of a recording
    problem: str | None = None  # why the entry cannot be used, if it cannot


def data_dir() -> Path:
    """Per-user data folder: $HIGGS_HOME, else the platform's usual place."""
    if env := os.environ.get("HIGGS_HOME"):
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "higgs"
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "higgs"


def fingerprint(folder: Path) -> str:
    """A short id of a checkpoint folder: its config and its weight files' names and sizes."""
    h = hashlib.sha256()
    for name in ("config.json", "audio_tokenizer/config.json"):
        if (folder / name).is_file():
            h.update((folder / name).read_bytes())
    for f in sorted(folder.rglob("*")):
        if f.suffix in (".safetensors", ".pth", ".npz", ".bin") and f.is_file():
            h.update(f"{f.relative_to(folder)}:{f.stat().st_size};".encode())
    return h.hexdigest()[:16]


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidVoiceName(
            f"invalid voice name {name!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _write_atomic(path: Path, data: bytes):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _npy_bytes(codes: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, codes, allow_pickle=False)
    return buf.getvalue()


class VoiceStore:
    """The voices folder (``data_dir()/voices`` unless told otherwise)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else data_dir() / "voices"

    # reading ---------------------------------------------------------------

    def names(self) -> list[str]:
        stored = []
        if self.root.is_dir():
            stored = [p.name for p in self.root.iterdir() if p.is_dir() and NAME.fullmatch(p.name)]
        return sorted(set(BUILTINS) | set(stored))

    def list(self) -> list[Voice]:
        return [self.get(name, strict=False) for name in self.names()]

    def get(self, name: str, *, strict: bool = True) -> Voice:
        """The voice called ``name``; ``strict`` raises if its entry is damaged."""
        check_name(name)
        folder = self.root / name
        meta_path = folder / "voice.json"
        if name in BUILTINS and not meta_path.exists():
            return Voice(name, "builtin", description=BUILTINS[name].description)
        if not folder.is_dir():
            known = ", ".join(self.names())
            raise UnknownVoice(f"unknown voice {name!r} (known: {known})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT or meta.get("kind") not in ("builtin", "recording"):
                raise ValueError("not a voice entry of this version of higgs")
            voice = Voice(
                name,
                meta["kind"],
                transcript=meta.get("transcript"),
                description=meta.get("description"),
            )
            for field_name in ("transcript", "description"):
                if getattr(voice, field_name) is not None and not isinstance(
                    getattr(voice, field_name), str
                ):
                    raise ValueError(f"its {field_name} is not text")
            if voice.kind == "recording":
                if not voice.transcript:
                    raise ValueError("no transcript")
                audio = meta.get("audio")
                voice.audio = folder / audio if audio else None
                if voice.audio is None or not voice.audio.is_file():
                    raise ValueError("the copy of the recording is missing")
            elif name in BUILTINS:
                voice.description = BUILTINS[name].description
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            damaged = DamagedVoice(name, str(e))
            if strict:
                raise damaged from e
            return Voice(name, "damaged", problem=str(damaged))
        return voice

    def codes(self, name: str, key: str, num_codebooks: int) -> np.ndarray | None:
        """Stored codes ``[K, T]`` of ``name`` for fingerprint ``key``; None if absent.

        A damaged or foreign codes file raises :class:`VoiceError`.
        """
        path = self.root / check_name(name) / f"codes-{key}.npy"
        if not path.exists():
            return None
        try:
            with open(path, "rb") as f:
                codes = np.load(f, allow_pickle=False)
                if not isinstance(codes, np.ndarray):  # an .npz archive, say
                    raise ValueError("not a single array")
            if codes.ndim != 2 or codes.shape[0] != num_codebooks or codes.dtype != np.uint16:
                raise ValueError(f"codes of shape {codes.shape} and type {codes.dtype}")
            if codes.size == 0 or codes.max() >= CODEBOOK:
                raise ValueError("codes out of the codebook's range")
        except Exception as e:  # whatever a damaged file makes numpy raise
            why = str(e)
            if "allow_pickle" in why:  # numpy's advice would be to trust the file
                why = "not a plain array of codes"
            raise DamagedVoice(name, f"its stored codes: {why}") from e
        return codes.astype(np.int32)

    # writing ---------------------------------------------------------------

    def add(
        self,
        name: str,
        audio: Path,
        transcript: str,
        *,
        codes: np.ndarray | None = None,
        key: str | None = None,
        force: bool = False,
    ) -> Voice:
        """Store a recording (copied), its transcript and its codes for ``key``.

        The entry is made in a staging folder and renamed into place in one step
        that fails if the name is taken meanwhile (two adds of one name: one wins,
        the other says the voice exists); ``force`` replaces an existing one.
        """
        check_name(name)
        transcript = " ".join(transcript.split())
        if not transcript:
            raise VoiceError("the transcript is empty: pass the words spoken in the recording")
        if (m := re.search(r"<\|[^|<>\s]{1,64}\|>", transcript)) is not None:
            raise VoiceError(f"the transcript holds the control token {m.group()}")
        if name in BUILTINS:
            raise VoiceError(f"{name!r} is a built-in voice; choose another name")
        if not Path(audio).is_file():
            raise VoiceError(f"no audio file {str(audio)!r}")
        dest = self.root / name
        if dest.exists() and not force:
            raise VoiceExists(f"voice {name!r} already exists")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._clean_leftovers()
            staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".add-{os.getpid()}-"))
        except OSError as e:
            raise VoiceError(f"cannot write the voice store {self.root}: {e.strerror or e}") from e
        try:
            copy = f"audio{audio.suffix.lower() or '.wav'}"
            shutil.copyfile(audio, staging / copy)
            meta = {"format": FORMAT, "kind": "recording", "transcript": transcript, "audio": copy}
            (staging / "voice.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            if codes is not None:
                np.save(staging / f"codes-{key}.npy", np.asarray(codes, np.uint16))
            self._swap_in(staging, dest, force)
        except OSError as e:
            raise VoiceError(f"cannot store voice {name!r}: {e.strerror or e}") from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get(name)

    def pin(
        self, name: str, key: str, codes: np.ndarray, transcript: str, made_by: dict | None = None
    ):
        """Record the codes a built-in voice was pinned to for fingerprint ``key``,
        and (``made_by``) how: the model, seed and length."""
        folder = self.root / check_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "kind": "builtin", "transcript": transcript}
        if made_by is not None:
            _write_atomic(folder / f"codes-{key}.json", json.dumps(made_by, indent=2).encode())
        self.save_codes(name, key, codes)
        if not (folder / "voice.json").exists():
            _write_atomic(folder / "voice.json", json.dumps(meta, indent=2).encode())

    def pins(self, name: str) -> dict[str, dict]:
        """What made each stored pin of ``name``: ``{key: {"model", "seed", "seconds"}}``
        (an empty record where nothing was noted)."""
        folder = self.root / check_name(name)
        out = {}
        for path in sorted(folder.glob("codes-pin-*.npy")):
            key = path.stem.removeprefix("codes-")
            try:
                out[key] = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                out[key] = {}
        return out

    def save_codes(self, name: str, key: str, codes: np.ndarray):
        folder = self.root / check_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / f"codes-{key}.npy", _npy_bytes(np.asarray(codes, np.uint16)))

    def remove(self, name: str) -> str:
        """Delete a voice; for a built-in one, forget its pins (made again on next use),
        the voice itself stays. Returns what happened: "removed" or "pin forgotten"."""
        folder = self.root / check_name(name)
        if not folder.exists():
            if name in BUILTINS:
                raise UnknownVoice(f"built-in voice {name!r} has no pin to forget")
            raise UnknownVoice(f"unknown voice {name!r}")
        try:
            # Rename first so a half-deleted folder never looks like a voice.
            trash = Path(tempfile.mkdtemp(dir=self.root, prefix=f".rm-{os.getpid()}-"))
            os.replace(folder, trash / name)
        except OSError as e:
            raise VoiceError(f"cannot remove voice {name!r}: {e.strerror or e}") from e
        shutil.rmtree(trash, ignore_errors=True)
        return "pin forgotten" if name in BUILTINS else "removed"

    def _swap_in(self, staging: Path, dest: Path, force: bool):
        """Rename ``staging`` to ``dest``: never over another voice unless ``force``,
        which moves the old one aside first (retrying if another writer gets between)."""
        for _ in range(8):
            if force and dest.exists():
                trash = Path(tempfile.mkdtemp(dir=self.root, prefix=f".old-{os.getpid()}-"))
                with contextlib.suppress(FileNotFoundError):  # another writer moved it first
                    os.replace(dest, trash / dest.name)
                shutil.rmtree(trash, ignore_errors=True)
            try:
                # rename() refuses to replace a folder that is not empty: a voice made
                # meanwhile by someone else stays theirs.
                os.rename(staging, dest)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if not force:
                    raise VoiceExists(f"voice {dest.name!r} already exists") from None
        raise VoiceError(f"voice {dest.name!r} kept changing while it was being replaced")

    def _clean_leftovers(self):
        """Staging and trash folders a crashed writer left (their process is gone)."""
        for path in self.root.glob(".*-*-*"):
            kind, _, rest = path.name[1:].partition("-")
            pid = rest.partition("-")[0]
            if kind in ("add", "old", "rm") and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
