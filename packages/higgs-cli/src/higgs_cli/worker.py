"""The model's thread for ``higgs serve``: every request's work as a job on one batch
(continuous batching), a bounded queue in front of it, deadlines, cancellation; and
what a batch of rows may take in memory, said at start-up."""

import asyncio
import logging
import math
import os
import queue
import threading
import time

from higgs_cli.api import Cancelled, ShuttingDown, busy
from higgs_cli.pipeline import JOIN_CHUNK
from higgs_cli.settings import Settings

log = logging.getLogger("higgs.serve")

# How much each finished request moves the mean time a request takes.
SMOOTHING = 0.2


def device_memory() -> int | None:
    """Bytes of memory the model's device has: the GPU's (Metal, CUDA), else the
    machine's (the CPU backend); None where neither is known."""
    import mlx.core as mx

    size = mx.device_info().get("memory_size")
    if isinstance(size, int) and size > 0:
        return size
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def capacity(tts, max_batch: int, memory: int | None) -> list[str]:
    """What ``max_batch`` rows may hold in KV cache at most, as start-up lines: one
    that says it, and a warning where that and the weights outgrow ``memory``."""
    from higgs_core.loading import named_arrays

    per_position = tts.model.kv_bytes_per_position
    positions = tts.max_row_positions(Settings())
    kv = max_batch * positions * per_position
    lines = [
        f"KV cache: {per_position / 1024:,.1f} KB a position per request; "
        f"{max_batch} at once of the longest (~{positions:,} positions each) "
        f"take up to {kv / 1e9:.2f} GB"
    ]
    weights = sum(v.nbytes for _, v in named_arrays(tts.model))
    if memory and weights + kv > memory:
        lines.append(
            f"warning: the model ({weights / 1e9:.1f} GB) and that KV cache outgrow this "
            f"device's {memory / 1e9:.1f} GB: long requests at a full batch may run out of "
            "memory; lower --max-batch"
        )
    return lines


DONE = object()


class Job:
    """One request's model work. ``make(batch)`` gives the work (a generator for
    :class:`higgs_cli.engine.Engine`, see ``Higgs.job``), which may ``emit``
    items; its result is emitted too, then ``DONE``."""

    def __init__(self, make, timeout: float):
        self.make = make
        self.loop = asyncio.get_running_loop()
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.timeout = timeout
        self.started: float | None = None

    def emit(self, item):
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the event loop is gone, and with it whoever was waiting
            self.cancel.set()

    def overdue(self, now: float) -> BaseException | None:
        """Why the job must stop at ``now`` (the worker's clock), if it must."""
        if self.cancel.is_set():
            return Cancelled("the client disconnected")
        if self.started is not None and now - self.started > self.timeout:
            return TimeoutError(f"generation took longer than {self.timeout:g} s")
        return None

    async def next(self):
        item = await self.items.get()
        if isinstance(item, BaseException):
            raise item
        return item


class Worker:
    """The model's thread: every request's work as a job on one batch, so up to
    ``max_batch`` requests are decoded together, one frame each per model step
    (continuous batching: they join and leave at frame boundaries). With
    ``max_batch`` 1 they take turns in arrival order."""

    def __init__(self, tts, max_queue: int, max_batch: int = 8, clock=time.monotonic):
        self.tts = tts
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.pending = 0  # accepted and not yet finished: waiting or running
        self.running = 0  # rows decoding in the batch now (at most max_batch)
        self.clock = clock
        self.mean_seconds: float | None = None  # a request's time in the worker, smoothed
        self._running: dict[Job, bool] = {}  # the jobs in the worker, in order
        self._lock = threading.RLock()  # pending and the jobs running, across threads
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="higgs-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job):
        with self._lock:
            if self.pending >= self.max_queue:
                raise busy(
                    f"the server is busy ({self.pending} requests queued); retry shortly",
                    "queue_full",
                    self.retry_after(),
                )
            self.pending += 1
        self._jobs.put(job)

    def retry_after(self) -> int:
        """Whole seconds until a request is likely to finish and free a place: with
        ``running`` rows taking ``mean_seconds`` each, one ends every
        ``mean_seconds / running`` on average. Before any has finished, the oldest
        running request's age is the best lower bound there is."""
        mean = self.mean_seconds
        if mean is None:
            now = self.clock()
            with self._lock:
                mean = max((now - (j.started or now) for j in self._running), default=1.0)
        return max(1, math.ceil(mean / max(1, self.running)))

    def _run(self):
        import mlx.core as mx

        from higgs_cli.engine import Audio, Done, Engine

        # MLX streams belong to the thread that made them: this thread needs its own.
        mx.set_default_stream(mx.new_stream(mx.default_device()))
        # Newcomers' prompts go in a short chunk a step, so that streams already
        # playing stall less (in 16-bit weights a stream may then round apart from
        # its lone run: see higgs_core.Batch).
        engine = Engine(self.tts.new_batch(self.max_batch, join_chunk=JOIN_CHUNK))

        def work(job: Job):
            return lambda _: job.make(engine.batch)  # a served job emits to its client itself

        running = self._running
        while True:
            try:  # wait for work only when there is none
                job = self._jobs.get(block=not running)
                while True:
                    if job is None:  # closing: whoever still waits hears why
                        stop = ShuttingDown("the server is shutting down")
                        for waiting in list(running):
                            engine.cancel(waiting)
                            waiting.emit(stop)
                        while (left := self._next_queued()) is not None:
                            left.emit(stop)
                        return
                    job.started = self.clock()
                    with self._lock:
                        running[job] = True
                    engine.add(job, work(job))
                    job = self._jobs.get_nowait()
            except queue.Empty:
                pass
            now = self.clock()
            for job in running:
                if (why := job.overdue(now)) is not None:
                    engine.cancel(job, why)
            events = engine.tick()
            self.running = engine.batch.running  # the rest wait for a row, or between chunks
            for event in events:
                if isinstance(event, Audio):
                    continue
                job = event.key
                # Counted out before the client hears it is done: a client that reads
                # /health right after its answer must not see itself still queued.
                took = self.clock() - (job.started or 0.0)
                mean = self.mean_seconds
                self.mean_seconds = took if mean is None else mean + SMOOTHING * (took - mean)
                with self._lock:
                    del running[job]
                    self.pending -= 1
                if isinstance(event, Done):
                    if event.result is not None:
                        job.emit(event.result)
                    job.emit(DONE)
                else:
                    job.emit(event.error)
                mx.clear_cache()  # keep memory flat: what the request used goes back

    def _next_queued(self) -> Job | None:
        try:
            return self._jobs.get_nowait()
        except queue.Empty:
            return None

    def close(self, timeout: float = 10.0):
        """Stop taking work, end the jobs in flight and wait for the thread, which
        owns MLX's stream: exiting while it runs can abort the process. Idempotent."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout)


# request parsing -------------------------------------------------------------------
