"""Many requests on one model: cooperative jobs around one batch.

A request's work (voices, then each chunk's prompt, frames, audio) is a
generator, a *job*, that yields whenever it waits for its streams in the
:class:`higgs_core.Batch`. The runner advances every job in turn and steps the
batch once per round, so the model makes one frame for every waiting stream per
step while each job keeps its own order of work. Everything runs on the
runner's thread, the one that owns MLX's stream.
"""

from collections.abc import Generator
from typing import Any

from higgs_core import Batch

Work = Generator[None, None, Any]


class Job:
    """One request's work. ``result`` (what the generator returned) or ``error``
    once ``done``."""

    def __init__(self, work: Work):
        self.work = work
        self.done = False
        self.result: Any = None
        self.error: Exception | None = None

    def advance(self):
        """Run the job until it waits on the batch again, or ends."""
        try:
            next(self.work)
        except StopIteration as end:
            self.done, self.result = True, end.value
        except Exception as e:  # the job's own failure, for whoever waits on it
            self.done, self.error = True, e

    def cancel(self, error: Exception | None = None):
        """Stop the job where it waits (its streams leave the batch)."""
        if not self.done:
            self.work.close()
            self.done, self.error = True, error


class Runner:
    """Advances jobs and steps their batch."""

    def __init__(self, batch: Batch):
        self.batch = batch
        self.jobs: list[Job] = []

    def add(self, work: Work) -> Job:
        job = Job(work)
        self.jobs.append(job)
        return job

    def tick(self):
        """One round: every job runs to its next wait, then the batch steps once."""
        for job in list(self.jobs):
            if not job.done:
                job.advance()
            if job.done:
                self.jobs.remove(job)
        if self.batch.busy:
            self.batch.step()

    def run(self):
        """Until every job has ended."""
        while self.jobs:
            self.tick()
