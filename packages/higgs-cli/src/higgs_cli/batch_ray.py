"""`higgs batch --ray`: the manifest as a Ray Dataset, spoken by actors that each
load the model and codec once.

The driver resolves every voice the rows name (stored codes, a built-in voice's
pin, each distinct reference recording encoded once) and ships them to the
actors as codes plus transcript, so workers need no voice store. Each actor
speaks a batch of rows at once, as ``higgs batch`` does locally, and writes
their files into OUTDIR, which every node must see: a shared folder, or a
pyarrow filesystem URI (``s3://bucket/prefix``). The driver gathers the result
lines into ``results.jsonl``.

Ray is imported only here, only for ``--ray``.
"""

import json
import os
import time
import warnings

import numpy as np

from higgs_cli.batch import latest, read_results, results_text
from higgs_cli.settings import HiggsError

RAY_HINT = (
    "--ray needs the optional 'ray' extra: pip install 'higgs-cli[ray]' (or uv sync --extra ray)"
)


def import_ray():
    # Under `uv run`, Ray 2.5x would start every worker through `uv run` again (a
    # fresh environment per worker, minutes on a small machine): the cluster's
    # Python, which has higgs installed, is what the workers use.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        import ray
        import ray.data  # the extra brings it
    except ImportError as e:
        raise HiggsError(RAY_HINT) from e
    return ray


def is_uri(outdir: str) -> bool:
    return "://" in outdir


class Outdir:
    """Where outputs and the results file go: a local folder, or a pyarrow URI."""

    def __init__(self, where: str):
        self.where = where
        self.fs = None
        if is_uri(where):
            from pyarrow import fs

            self.fs, self.root = fs.FileSystem.from_uri(where)
            self.fs.create_dir(self.root, recursive=True)
        else:
            self.root = where

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        if self.fs is None:
            return os.path.isfile(self._path(name))
        from pyarrow import fs

        return self.fs.get_file_info(self._path(name)).type == fs.FileType.File

    def write(self, name: str, data: bytes):
        """A whole file, under a temporary name first, then renamed into place."""
        tmp = self._path(f".{name}.partial")
        try:
            if self.fs is None:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._path(name))
            else:
                with self.fs.open_output_stream(tmp) as f:
                    f.write(data)
                self.fs.move(tmp, self._path(name))
        except OSError as e:
            raise HiggsError(f"cannot write {self._path(name)}: {e}") from e

    def read(self, name: str) -> bytes | None:
        if not self.exists(name):
            return None
        if self.fs is None:
            with open(self._path(name), "rb") as f:
                return f.read()
        with self.fs.open_input_stream(self._path(name)) as f:
            return f.read()


class UriResults:
    """``results.jsonl`` under a URI, where files cannot be appended to: rewritten whole
    (it is small) after each result."""

    def __init__(self, out: Outdir):
        self.out = out
        self.entries = read_results((out.read("results.jsonl") or b"").decode("utf-8", "replace"))
        self.done = {str(e["id"]) for e in self.entries if e.get("error") is None}

    def add(self, entry: dict):
        self.entries = latest([*self.entries, entry])  # one line per row, its latest outcome
        self.out.write("results.jsonl", results_text(self.entries).encode())
        if entry.get("error") is None:
            self.done.add(entry["id"])

    def close(self):
        pass  # rewritten whole at every result already


class RowSpeaker:
    """A Ray Data actor: loads the model and codec once, then speaks batches of rows."""

    def __init__(self, model, codec, outdir, voices, max_batch, threads):
        if threads:
            os.environ["HIGGS_KERNELS_THREADS"] = str(threads)  # no more threads than CPUs
        from higgs_cli.pipeline import Higgs

        self.tts = Higgs.from_pretrained(model, codec, prefix_cache_mb=256)
        self.outdir = Outdir(outdir)
        self.voices = {k: (t, np.asarray(c, np.int32)) for k, (t, c) in voices.items()}
        self.max_batch = max_batch

    def __call__(self, batch: dict) -> dict:
        from higgs_cli.batch import entry
        from higgs_cli.engine import Audio, Done, Engine
        from higgs_cli.output import encode
        from higgs_cli.settings import Request, Settings

        engine = Engine(self.tts.new_batch(self.max_batch))
        n = len(next(iter(batch.values()))) if batch else 0
        rows = [{key: batch[key][i] for key in batch} for i in range(n)]
        start = time.perf_counter()

        def work(request):
            return lambda _: self.tts.job(request, engine.batch)

        for i, row in enumerate(rows):
            settings = Settings().but(**json.loads(row["settings"]))
            clones = (self.voices[row["voice"]],) if row["voice"] else ()
            engine.add(i, work(Request(str(row["text"]), settings=settings, clones=clones)))
        ended: dict[int, tuple] = {}  # row -> (result or None, error or None, seconds)
        try:
            while engine.pending:
                for event in engine.tick():
                    seconds = time.perf_counter() - start
                    if isinstance(event, Done):
                        ended[event.key] = (event.result, None, seconds)
                    elif not isinstance(event, Audio):  # rows are written whole
                        ended[event.key] = (None, event.error, seconds)
        finally:
            engine.close()
        out = []
        for i, row in enumerate(rows):
            view = _RowView(row)
            speech, error, seconds = ended[i]
            if error is None:
                try:
                    name = f"{row['id']}.{row['format']}"
                    data = encode(speech.samples, self.tts.sample_rate, row["format"])
                    self.outdir.write(name, data)
                    out.append(entry(view, name, speech, seconds))
                    continue
                except HiggsError as e:
                    error = e
            out.append(entry(view, None, None, seconds, " ".join(str(error).split())))
        return {key: [o[key] for o in out] for key in out[0]} if out else {}


class _RowView:
    """What ``higgs_cli.batch.entry`` reads of a row."""

    def __init__(self, row: dict):
        self.id, self.line = str(row["id"]), int(row["line"])


def run_ray(
    address: str,
    items: list[dict],
    voices: dict,
    outdir: str,
    *,
    model: str,
    codec: str,
    workers: int,
    num_cpus: float,
    num_gpus: float,
    max_batch: int,
):
    """Yield each row's result line as the cluster finishes it."""
    import logging

    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if address in ("", "local"):
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * workers)))
        # No restarts: Ray Data passes an actor's arguments through the object store,
        # where restarts are not reliable (ray-project/ray#53727), and with restarts on
        # Ray logs that as an error line for every actor (ray-project/ray#57733). A run
        # that fails is finished by running it again. max_restarts has no named
        # parameter yet: Ray 2.60 deprecates ray_remote_args without a replacement.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            spoken = ds.map_batches(
                RowSpeaker,
                fn_constructor_kwargs=dict(
                    model=model,
                    codec=codec,
                    outdir=outdir,
                    voices=voices,
                    max_batch=max_batch,
                    threads=int(num_cpus) if num_cpus >= 1 else 1,
                ),
                batch_size=max_batch,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                max_restarts=0,
            )
        for row in spoken.iter_rows():
            yield {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    finally:
        if started:
            ray.shutdown()
