"""The one loop every way in runs: requests' jobs on one batch, and what came of them.

A request is added under a key with a function that makes its work (a job, see
:mod:`higgs_cli.runner`) from an ``emit`` for its audio. Each :meth:`Engine.tick`
advances every job to its next wait, steps the batch once, and returns what
happened, in order: :class:`Audio` pieces a job emitted, then :class:`Done` (its
result) or :class:`Failed` (its exception) once it ends. ``say``, ``say_many``,
``higgs batch`` (locally and in each Ray actor) and the server's worker consume
these; they keep only what is theirs (admission, files, queues, deadlines, HTTP).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from higgs_cli.runner import Job, Runner, Work
from higgs_core import Batch


@dataclass(frozen=True)
class Audio:
    key: Any
    pcm: np.ndarray


@dataclass(frozen=True)
class Done:
    key: Any
    result: Any


@dataclass(frozen=True)
class Failed:
    key: Any
    error: Exception


EngineEvent = Audio | Done | Failed
Emit = Callable[[np.ndarray], None]


class Engine:
    """Jobs on one batch, by key."""

    def __init__(self, batch: Batch):
        self.runner = Runner(batch)
        self._jobs: dict[Any, Job] = {}
        self._out: list[EngineEvent] = []

    @property
    def batch(self) -> Batch:
        return self.runner.batch

    @property
    def pending(self) -> int:
        """Requests added and not yet done or failed."""
        return len(self._jobs)

    def add(self, key: Any, make: Callable[[Emit], Work]):
        """Start a request: ``make(emit)`` gives its work; what it emits comes out as
        :class:`Audio` under ``key``."""
        if key in self._jobs:
            raise ValueError(f"a request {key!r} is already running")
        self._jobs[key] = self.runner.add(make(lambda pcm: self._out.append(Audio(key, pcm))))

    def cancel(self, key: Any, error: Exception | None = None):
        """Stop a request where it waits (its stream leaves the batch); it fails with
        ``error`` at the next tick, or is forgotten when there is none."""
        job = self._jobs.get(key)
        if job is not None:
            job.cancel(error)
            if error is None:
                del self._jobs[key]

    def tick(self) -> list[EngineEvent]:
        """One round of every job and one batch step; what came of them."""
        self.runner.tick()
        out, self._out = self._out, []
        for key, job in list(self._jobs.items()):
            if job.done:
                del self._jobs[key]
                out.append(
                    Failed(key, job.error) if job.error is not None else Done(key, job.result)
                )
        return out

    def close(self):
        """Cancel every request still running (their streams leave the batch)."""
        for key in list(self._jobs):
            self.cancel(key)
