"""`higgs batch`: bulk synthesis from a manifest, resumable.

A manifest is JSON Lines or CSV with a header; each row has an ``id`` and a
``text``, and may set ``voice``, ``ref_audio`` + ``ref_text``, ``scene``,
``seed``, ``temperature``, ``top_k``, ``top_p`` and ``format``. Each row becomes
``OUTDIR/<id>.<format>`` (written under a temporary name, then renamed) and a
line of ``OUTDIR/results.jsonl``. A row whose output and success line both
exist is skipped, so a run that was killed is finished by running it again. A
bad row is recorded with its error and the others go on.

Rows run locally as jobs on one batch (:mod:`higgs_cli.runner`), each exactly as
``higgs say`` would speak it, or on a Ray cluster (:mod:`higgs_cli.batch_ray`).
"""

import csv
import io
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from higgs_cli.output import FORMATS, encode
from higgs_cli.settings import HiggsError, Request, Settings
from higgs_cli.voices import NAME as VOICE_NAME

RESULTS = "results.jsonl"
# Ids become file names: letters, digits, '.', '_', '-', not starting with a dot.
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FIELDS = {
    "id",
    "text",
    "voice",
    "ref_audio",
    "ref_text",
    "scene",
    "seed",
    "temperature",
    "top_k",
    "top_p",
    "format",
}
# Bounds on a manifest: rows, bytes of one row, characters of one text.
MAX_ROWS, MAX_ROW_BYTES, MAX_TEXT_CHARS = 1_000_000, 1 << 20, 100_000


class ManifestError(HiggsError):
    """The manifest as a whole cannot be read (a row's own problems are recorded)."""


@dataclass
class Row:
    line: int  # where the row is in the manifest (1-based, the CSV header is line 1)
    id: str | None = None
    request: Request | None = None
    format: str = "wav"
    voice: str | None = None
    ref: tuple[str, str] | None = None  # (audio, transcript)
    error: str | None = None

    @property
    def output(self) -> str:
        return f"{self.id}.{self.format}"


@dataclass
class Defaults:
    """What the command line gives every row that does not say otherwise."""

    settings: Settings = field(default_factory=Settings)
    voice: str | None = None
    format: str = "wav"


# -- the manifest ----------------------------------------------------------------------


def read_manifest(path: str | os.PathLike, defaults: Defaults) -> list[Row]:
    """Every row of the manifest, each parsed into a request or given an error."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ManifestError(f"manifest {path} does not exist or is not a file")
        if path.stat().st_size > MAX_ROWS * 1024:
            raise ManifestError(f"manifest {path} is over {MAX_ROWS * 1024} bytes")
        data = path.read_bytes()
    except OSError as e:
        raise ManifestError(f"cannot read manifest {path}: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(f"manifest {path} is not UTF-8 text ({e.reason})") from e
    if not text.strip():
        raise ManifestError(f"manifest {path} is empty: it has no rows")
    is_csv = path.suffix.lower() == ".csv" or not text.lstrip().startswith("{")
    items = _csv_rows(text, path) if is_csv else _jsonl_rows(text)
    rows: list[Row] = []
    seen: set[str] = set()
    for line, fields, problem in items:
        if len(rows) >= MAX_ROWS:
            raise ManifestError(f"manifest {path} has over {MAX_ROWS} rows")
        row = Row(line) if problem else _row(line, fields, defaults, path.parent)
        row.error = row.error or problem
        if row.id is not None and row.error is None:
            if row.id in seen:
                row.error = f"duplicate id {row.id!r}"
            seen.add(row.id)
        rows.append(row)
    return rows


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict, str | None]]:
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        if len(raw.encode()) > MAX_ROW_BYTES:
            yield n, {}, f"row over {MAX_ROW_BYTES} bytes"
            continue
        try:
            fields = json.loads(raw)
        except (ValueError, RecursionError) as e:
            yield n, {}, f"not valid JSON ({e})"
            continue
        if not isinstance(fields, dict):
            yield n, {}, "not a JSON object"
            continue
        yield n, fields, None


def _csv_rows(text: str, path: Path) -> Iterator[tuple[int, dict, str | None]]:
    csv.field_size_limit(MAX_ROW_BYTES)
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = reader.fieldnames
    except csv.Error as e:
        raise ManifestError(f"manifest {path}: the CSV header cannot be read ({e})") from e
    if not header or "id" not in header or "text" not in header:
        raise ManifestError(
            f"manifest {path}: a CSV manifest needs a header with 'id' and 'text' columns"
            + (f" (found: {', '.join(header)})" if header else "")
        )
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield reader.line_num, {}, f"not valid CSV ({e})"
            continue
        if None in fields:
            yield reader.line_num, {}, "more columns than the header has"
            continue
        yield reader.line_num, {k: v for k, v in fields.items() if v not in (None, "")}, None


def _row(line: int, fields: dict, defaults: Defaults, folder: Path) -> Row:
    """One row, its ``ref_audio`` taken relative to ``folder`` (the manifest's, as
    manifest formats do: the manifest and its recordings move together)."""
    row = Row(line, format=defaults.format)
    try:
        unknown = set(fields) - FIELDS
        if unknown:
            raise HiggsError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        row.id = _id(fields.get("id"))
        text = fields.get("text")
        if not isinstance(text, str) or not text.strip():
            raise HiggsError(
                "missing text" if text is None else "'text' must be a non-empty string"
            )
        if len(text) > MAX_TEXT_CHARS:
            raise HiggsError(f"text of {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        row.format = _string(fields, "format") or defaults.format
        if row.format not in FORMATS:
            raise HiggsError(f"format {row.format!r} is not one of {', '.join(FORMATS)}")
        changes = {}
        for name, kind in (("seed", int), ("temperature", float), ("top_k", int), ("top_p", float)):
            if name in fields:
                changes[name] = _number(fields[name], name, kind)
        if "scene" in fields:
            changes["scene"] = _string(fields, "scene") or None
        settings = defaults.settings.but(**changes)
        voice = _string(fields, "voice") or None
        ref_audio, ref_text = _string(fields, "ref_audio"), _string(fields, "ref_text")
        if bool(ref_audio) != bool(ref_text):
            raise HiggsError("'ref_audio' and 'ref_text' go together")
        if voice and ref_audio:
            raise HiggsError("give a row either a 'voice' or a 'ref_audio', not both")
        if voice is not None and not VOICE_NAME.fullmatch(voice):
            raise HiggsError(f"invalid voice name {voice!r}")
        if not ref_audio:
            voice = voice or defaults.voice
        row.voice = voice
        row.ref = (str(folder / Path(ref_audio).expanduser()), ref_text) if ref_audio else None
        refs = (row.ref,) if row.ref else ()
        row.request = Request(text.strip(), (voice,) if voice else (), refs, settings).check()
    except (HiggsError, ValueError, TypeError) as e:
        row.error = " ".join(str(e).split())
    return row


def _id(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None:
        raise HiggsError("missing id")
    if not isinstance(value, str) or not ID.fullmatch(value) or value == RESULTS:
        raise HiggsError(
            f"id {value!r} is not a safe file name (1-128 letters, digits, '.', '_' or '-', "
            "not starting with '.')"
        )
    return value


def _string(fields: dict, name: str) -> str:
    value = fields.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HiggsError(f"'{name}' must be a string")
    return value.strip()


def _number(value, name: str, kind):
    if isinstance(value, str):  # CSV cells
        try:
            value = kind(value)
        except ValueError:
            raise HiggsError(f"'{name}' must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HiggsError(f"'{name}' must be a number")
    if kind is int and value != int(value):
        raise HiggsError(f"'{name}' must be a whole number, got {value}")
    return kind(value)


# -- results -----------------------------------------------------------------------------


def read_results(text: str) -> list[dict]:
    """The entries of a results.jsonl (a line torn by a crash is skipped: that row is
    simply redone)."""
    entries = []
    for raw in text.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and "id" in entry:
            entries.append(entry)
    return entries


def latest(entries: list[dict]) -> list[dict]:
    """One entry per row, its latest outcome; a row is its id and its manifest line
    (a duplicate id on another line is a row of its own, with its own error)."""
    kept: dict[tuple, dict] = {}
    for entry in entries:
        kept[(entry["id"], entry.get("line"))] = entry
    return list(kept.values())


def results_text(entries: list[dict]) -> str:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)


class Results:
    """``OUTDIR/results.jsonl``: one line per row, its latest outcome. Results are
    appended as rows finish (a crash loses none); the file is rewritten with one line
    per row when it is opened and when the run is over (:meth:`close`)."""

    def __init__(self, outdir: Path):
        self.path = outdir / RESULTS
        self.done: set[str] = set()  # ids with a success line (and, once checked, output)
        if self.path.exists():
            with open(self.path, encoding="utf-8", errors="replace") as f:
                entries = read_results(f.read())
            self.done = {str(e["id"]) for e in entries if e.get("error") is None}
            self._rewrite(latest(entries))

    def finished(self, row: Row, outdir: Path) -> bool:
        return row.id in self.done and (outdir / row.output).is_file()

    def add(self, entry: dict):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(results_text([entry]))
            f.flush()
            os.fsync(f.fileno())
        if entry.get("error") is None:
            self.done.add(entry["id"])

    def close(self):
        """One line per row again: this run's outcomes replace the rows' earlier ones."""
        if self.path.exists():
            with open(self.path, encoding="utf-8", errors="replace") as f:
                self._rewrite(latest(read_results(f.read())))

    def _rewrite(self, entries: list[dict]):
        tmp = self.path.with_name(f".{RESULTS}.partial")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(results_text(entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class Named(Protocol):
    """What :func:`entry` reads of a row (a :class:`Row`, or a Ray worker's view)."""

    @property
    def id(self) -> str | None: ...
    @property
    def line(self) -> int: ...


def entry(row: Named, output: str | None, speech=None, seconds=0.0, error: str | None = None):
    return {
        "id": row.id,
        "line": row.line,
        "output": output,
        "audio_seconds": round(speech.duration, 3) if speech is not None else 0.0,
        "frames": speech.frames if speech is not None else 0,
        "stop": speech.stops() if speech is not None else None,
        "seconds": round(seconds, 3),
        "warnings": list(speech.warnings) if speech is not None else [],
        "error": error,
    }


def write_output(outdir: Path, name: str, samples: np.ndarray, sample_rate: int, fmt: str):
    """The row's file, written whole under a temporary name and renamed into place."""
    data = encode(samples, sample_rate, fmt)
    path = outdir / name
    tmp = outdir / f".{name}.partial"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise HiggsError(f"cannot write {path}: {e.strerror or e}") from e


# -- the local run -----------------------------------------------------------------------


@dataclass
class Tally:
    """Rows and audio so far, for the progress line and the summary."""

    total: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def count(self, result: dict):
        if result["error"] is None:
            self.done += 1
            self.audio_seconds += result["audio_seconds"]
        else:
            self.failed += 1

    def summary(self) -> str:
        return (
            f"{self.done} of {self.total} rows spoken, {self.failed} failed, {self.skipped} "
            f"already done; {self.audio_seconds:.1f} s of audio in {self.elapsed:.1f} s"
        )


def run_local(
    tts,
    rows: list[Row],
    outdir: Path,
    results: Results,
    tally: Tally,
    *,
    max_batch: int,
    on_result: Callable[[dict], None] = lambda _: None,
    warn=None,
):
    """Speak every row on one batch: up to ``max_batch`` at once, each as ``say`` would."""
    from higgs_cli.engine import Audio, Done, Engine

    engine = Engine(tts.new_batch(max_batch))

    def work(request):
        return lambda _: tts.job(request, engine.batch, warn=warn)

    todo = deque(enumerate(rows))
    started: dict[int, float] = {}
    try:
        while todo or engine.pending:
            while todo and engine.pending < 2 * max_batch:  # a few waiting: it never idles
                i, row = todo.popleft()
                started[i] = time.perf_counter()
                engine.add(i, work(row.request))
            for event in engine.tick():
                if isinstance(event, Audio):  # rows are written whole
                    continue
                speech, error = (
                    (event.result, None) if isinstance(event, Done) else (None, event.error)
                )
                seconds = time.perf_counter() - started.pop(event.key)
                result = finish(rows[event.key], outdir, speech, error, seconds, tts.sample_rate)
                results.add(result)
                tally.count(result)
                on_result(result)
    finally:
        engine.close()


def finish(row: Row, outdir: Path, speech, error, seconds: float, sample_rate: int) -> dict:
    """Write a finished row's output; its result line."""
    if error is None:
        try:
            write_output(outdir, row.output, speech.samples, sample_rate, row.format)
            return entry(row, row.output, speech, seconds)
        except HiggsError as e:
            error = e
    return entry(row, None, None, seconds, " ".join(str(error).split()) or type(error).__name__)
