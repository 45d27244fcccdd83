"""Writing speech out: files (wav, flac, raw pcm), stdout, and the speaker."""

import io
import os
import struct
import sys
import unicodedata
from pathlib import Path

import numpy as np

FORMATS = ("wav", "flac", "mp3", "opus", "pcm")
# libsndfile's names for the formats it writes: (container, subtype).
SOUNDFILE = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),
}
# Formats whose bytes can leave before the clip is complete.
STREAMABLE = ("wav", "pcm")
MEDIA_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "pcm": "audio/L16",
}


class OutputError(Exception):
    pass


def pcm16(samples: np.ndarray) -> bytes:
    """float32 [-1, 1] -> little-endian signed 16-bit."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def _for_soundfile(samples: np.ndarray, fmt: str) -> np.ndarray:
    """The 16-bit formats get pcm16's integers, so a flac or a streamed wav holds the very
    samples of raw pcm and a whole wav (libsndfile's own float -> int16 scales by 32768
    and rounds its own way, up to 2 apart); the lossy coders get the floats."""
    if SOUNDFILE[fmt][1] == "PCM_16":
        return np.frombuffer(pcm16(samples), "<i2")
    return samples


# File extensions and the format each one means.
EXTENSIONS = {
    "wav": "wav",
    "wave": "wav",
    "flac": "flac",
    "mp3": "mp3",
    "opus": "opus",
    "ogg": "opus",
    "pcm": "pcm",
    "raw": "pcm",
}


def format_for(path: str, fmt: str | None) -> str:
    """The format to write ``path`` in: its extension decides, and ``fmt`` (--format)
    must agree with it. Without an extension (or on stdout): ``fmt``, else wav."""
    suffix = Path(path).suffix.lower().lstrip(".") if path != "-" else ""
    if not suffix:
        return fmt or "wav"
    named = EXTENSIONS.get(suffix)
    if named is None:
        known = ", ".join(f".{e}" for e in EXTENSIONS)
        raise OutputError(
            f"cannot write audio as {path!r}: .{suffix} is not a format higgs writes ({known})"
        )
    if fmt and fmt != named:
        raise OutputError(f"{path!r} is named .{suffix} but --format is {fmt}: change one")
    return named


def default_path(text: str, fmt: str, folder: Path = Path(".")) -> Path:
    """A file name from the text's first words (in any script) that does not
    overwrite anything."""
    words = _words(unicodedata.normalize("NFC", text).lower())[:5]
    stem = "-".join(words)[:40].strip("-") or "speech"
    path = folder / f"{stem}.{fmt}"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}.{fmt}"
        n += 1
    return path


def _words(text: str) -> list[str]:
    """Runs of letters, marks and digits: a name safe on every file system (no
    separators, dots or reserved characters), and whole in scripts with combining
    vowel signs, which ``\\w`` would split."""
    keep = "".join(c if unicodedata.category(c)[0] in "LMN" else " " for c in text)
    return keep.split()


UNKNOWN = 0xFFFFFFFF  # a streamed WAV's sizes: unknown, as streaming encoders write them


def wav_header(sample_rate: int, data_bytes: int = UNKNOWN) -> bytes:
    """A 16-bit mono WAV header; the default marks a stream of unknown length (both the
    RIFF and the data size 0xFFFFFFFF, what ffmpeg and sox write when streaming)."""
    return (
        b"RIFF"
        + struct.pack("<I", UNKNOWN if data_bytes == UNKNOWN else min(data_bytes + 36, UNKNOWN))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A whole clip as the bytes of a file."""
    if fmt == "pcm":
        return pcm16(samples)
    if fmt == "wav":
        data = pcm16(samples)
        return wav_header(sample_rate, len(data)) + data
    import soundfile as sf

    container, subtype = SOUNDFILE[fmt]
    buf = io.BytesIO()
    sf.write(buf, _for_soundfile(samples, fmt), sample_rate, format=container, subtype=subtype)
    return buf.getvalue()


def write_clip(target: str, samples: np.ndarray, sample_rate: int, fmt: str):
    """Write a whole clip to a file (via a temporary file, renamed) or stdout ('-')."""
    data = encode(samples, sample_rate, fmt)
    if target == "-":
        _to_stdout(data)
        return
    path = Path(target)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e


def _to_stdout(data: bytes):
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except OSError as e:  # a closed pipe, a full disk behind a redirect
        # Nothing more can reach stdout: keep Python's exit-time flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputError(f"cannot write to stdout: {e.strerror or e}") from e


def check_writable(target: str):
    """Fail now, before any work, if ``target`` ('-' for stdout) cannot be written."""
    if target == "-":
        if sys.stdout.isatty():
            raise OutputError(
                "refusing to write binary audio to a terminal: redirect it (> file.wav) "
                "or give -o FILE"
            )
        return
    path = Path(target)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
    probe = path.with_name(f".{path.name}.partial")
    try:
        with open(probe, "wb"):
            pass
        probe.unlink()
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e


class Writer:
    """Writes a clip chunk by chunk to a file or to stdout ('-')."""

    def __init__(self, target: str, fmt: str, sample_rate: int):
        if fmt not in FORMATS:
            raise OutputError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
        self.fmt, self.sample_rate = fmt, sample_rate
        self.target = target
        self.to_stdout = target == "-"
        self._sf = None
        if self.to_stdout:
            if fmt not in STREAMABLE:
                raise OutputError(f"{fmt} cannot stream to stdout; use wav or pcm")
            self._out = sys.stdout.buffer
            if fmt == "wav":
                _to_stdout(wav_header(sample_rate))
        else:
            path = Path(target)
            if not path.parent.is_dir():
                raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
            if fmt == "pcm":
                self._out = open(path, "wb")  # noqa: SIM115 - closed in close()
            else:
                import soundfile as sf

                container, subtype = SOUNDFILE[fmt]
                self._sf = sf.SoundFile(path, "w", sample_rate, 1, subtype, format=container)

    def write(self, samples: np.ndarray):
        try:
            if self._sf is not None:
                self._sf.write(_for_soundfile(samples, self.fmt))
            elif self.to_stdout:
                _to_stdout(pcm16(samples))
            else:
                self._out.write(pcm16(samples))
        except OutputError:
            raise
        except (OSError, RuntimeError) as e:  # soundfile says "System error" for a full disk
            raise OutputError(
                f"cannot write {self.target}: {getattr(e, 'strerror', None) or e}"
            ) from e

    def close(self):
        try:
            if self._sf is not None:
                self._sf.close()
            elif not self.to_stdout:
                self._out.close()
        except (OSError, RuntimeError) as e:
            raise OutputError(
                f"cannot write {self.target}: {getattr(e, 'strerror', None) or e}"
            ) from e


class Player:
    """Plays chunks on the default output device (needs the `play` extra)."""

    def __init__(self, sample_rate: int):
        sd = self.check()
        try:
            self._stream = sd.OutputStream(samplerate=sample_rate, channels=1, dtype="float32")
            self._stream.start()
        except Exception as e:
            raise OutputError(f"--play cannot open an audio output device: {e}") from e

    @staticmethod
    def check():
        """The sounddevice module, or a clear error saying how to get it."""
        try:
            import sounddevice as sd
        except ImportError as e:
            raise OutputError(
                "--play needs the optional 'play' extra: pip install 'higgs-cli[play]' "
                "(or uv sync --extra play)"
            ) from e
        except OSError as e:  # the PortAudio library is missing
            raise OutputError(
                f"--play needs the PortAudio library ({e}): install it with your system's "
                "packages (Debian/Ubuntu: apt install libportaudio2; Fedora: dnf install "
                "portaudio; macOS: brew install portaudio)"
            ) from e
        return sd

    def write(self, samples: np.ndarray):
        self._stream.write(np.ascontiguousarray(samples, dtype=np.float32).reshape(-1, 1))

    def close(self):
        self._stream.stop()
        self._stream.close()
