"""Many requests on one model: cooperative jobs around one batch.

A request's work (voices, then each chunk's prompt, frames, audio) is a
generator, a *job*, that yields the :class:`higgs_core.Ticket` of the stream it
waits for, and is sent that stream's events (:class:`higgs_core.Frames`,
:class:`~higgs_core.PrefixReady`, :class:`~higgs_core.Finished`) of each batch
step. The runner advances every job in turn and steps the batch once per round,
so the model makes one frame for every waiting stream per step while each job
keeps its own order of work. Everything runs on the runner's thread, the one
that owns MLX's stream.
"""

from collections.abc import Generator
from typing import Any

from higgs_core import Batch, Event, Ticket

Work = Generator[Ticket | None, list[Event], Any]


class Job:
    """One request's work. ``result`` (what the generator returned) or ``error``
    once ``done``."""

    def __init__(self, work: Work):
        self.work = work
        self.done = False
        self.result: Any = None
        self.error: Exception | None = None
        self.waits_on: Ticket | None = None  # the stream it waits for
        self.events: list[Event] = []  # that stream's events since it last ran
        self._started = False

    def advance(self):
        """Run the job, with its stream's news, until it waits on the batch again, or ends."""
        events, self.events = self.events, []
        try:
            self.waits_on = self.work.send(events) if self._started else next(self.work)
            self._started = True
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
    """Advances jobs, steps their batch and hands each job its stream's events."""

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
        if not self.batch.busy:
            return
        waiting = {job.waits_on: job for job in self.jobs if job.waits_on is not None}
        for event in self.batch.step():
            if (job := waiting.get(event.ticket)) is not None:
                job.events.append(event)

    def run(self):
        """Until every job has ended."""
        while self.jobs:
            self.tick()
