"""Fair serving: tiles never wait behind maps, each visitor's share of heavy work, and abandoned work stops.

Gradio runs tiles (/predict, /gradcam, the page's tile events) in the "light" concurrency group and
scenes and batches in the "heavy" one. Both share the CPUs, so a heavy job also steps aside between
its batches while a tile is being answered (`HeavyLane.step`). Which visitor a job belongs to, and
whether its client is still there, are read from Gradio's queue: the only place that knows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import gradio as gr

from ..budget import client_id
from ..errors import UserError

log = logging.getLogger(__name__)

LIGHT, HEAVY = "light", "heavy"
# The longest a heavy job steps aside for tiles in one go: a steady stream of tiles must not starve it.
MAX_PAUSE_S = 2.0
# What a heavy job counts for in a visitor's share, by endpoint: a change maps two dates, the work of two scenes.
WEIGHTS = {"change": 2}


class Stopped(UserError):
    """A heavy job whose client pressed Stop, closed the page or disconnected: it ends at its next batch."""


@dataclass
class Job:
    """One heavy job while it runs: whose, what, and how far it is."""

    visitor: str
    kind: str  # "scene map", "batch", ...
    total: int  # cells or files, once known
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def seconds_left(self) -> float | None:
        """The time left at the pace so far, or None before the first batch."""
        if self.done <= 0:
            return None
        return (time.monotonic() - self.started) / self.done * (self.total - self.done)


class HeavyLane:
    """The heavy lane's bookkeeping: the jobs running, tiles in flight, and each visitor's share.

    A visitor has at most `share` heavy jobs running or waiting in the queue (with one heavy job at a
    time, the default 2 is one running and one waiting; a change counts as two, `WEIGHTS`); a further
    one is refused when it is submitted (`refusal`, from the event's validator), so nothing of it is queued.
    """

    def __init__(self, *, share: int = 2, trusted_proxies: int = 0):
        self.share = share
        self.trusted_proxies = trusted_proxies
        self._jobs: list[Job] = []
        self._tiles = 0
        self._changed = threading.Condition()

    # --- visitors ---------------------------------------------------------------------------------------------

    def visitor(self, request: gr.Request | None) -> str:
        """Who a request comes from: its address, or a trusted proxy's X-Forwarded-For entry (as the GPT-4o limits)."""
        if request is None:
            return "unknown"
        host = request.client.host if request.client else None
        return client_id(host, request.headers.get("x-forwarded-for"), self.trusted_proxies)

    def refusal(self, visitor: str, queued: int, weight: int = 1) -> str | None:
        """Why a new heavy job of `weight` from `visitor`, who has `queued` heavy jobs (by weight) running or
        waiting, is refused; None when it may join the queue."""
        if queued + weight <= self.share:
            return None
        with self._changed:
            mine = [job for job in self._jobs if job.visitor == visitor]
        if not mine:
            return (f"You already have {queued} heavy jobs starting or waiting in the queue, this server's limit "
                    "per visitor: wait for one to finish, then send the next.")
        job = mine[0]
        left = job.seconds_left()
        done = f"{job.done:,} of {job.total:,} done; " if job.total else ""
        when = "soon" if left is None else f"in about {max(1, round(left))} s"
        return (f"You already have a {job.kind} running ({done}it will finish {when}) "
                f"and {queued - 1} more waiting, this server's limit per visitor: wait for it to finish, then send "
                "the next.")

    # --- jobs ---------------------------------------------------------------------------------------------------

    @contextmanager
    def job(self, visitor: str, kind: str) -> Iterator[Job]:
        """A heavy job of `visitor` while it runs (its size is learnt at its first `step`)."""
        job = Job(visitor, kind, 0)
        with self._changed:
            self._jobs.append(job)
        try:
            yield job
        finally:
            with self._changed:
                self._jobs.remove(job)

    @contextmanager
    def tile(self) -> Iterator[None]:
        """Around the model work of a tile: heavy jobs wait at their next batch until it is done."""
        with self._changed:
            self._tiles += 1
        try:
            yield
        finally:
            with self._changed:
                self._tiles -= 1
                self._changed.notify_all()

    def step(self, job: Job, done: int, total: int, alive: Callable[[], bool] = lambda: True) -> None:
        """Between two batches of `job`: note its progress, stop it if its client is gone, let tiles go first."""
        job.done, job.total = done, total
        if not alive():
            log.info("%s of %s stopped after %d of %d: its client cancelled or went away", job.kind, job.visitor,
                     done, job.total)
            raise Stopped(f"The {job.kind} was stopped after {done:,} of {job.total:,}.")
        with self._changed:
            self._changed.wait_for(lambda: self._tiles == 0, timeout=MAX_PAUSE_S)


# --- what only Gradio's queue knows -------------------------------------------------------------------------------

def current_event_alive() -> bool:
    """Whether the queued event this thread works for is still wanted: not cancelled, its client still there.

    Outside a queued event (a direct call, a test) there is nothing to ask, and the work goes on.
    """
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:
        return True
    for events in queue.active_jobs:
        for event in events or ():
            if event._id == event_id:
                return bool(event.alive)
    return False  # no longer among the running jobs: /cancel ended it


def queued_heavy_jobs(blocks: gr.Blocks | None, lane: HeavyLane, visitor: str) -> int:
    """How many heavy events of `visitor` the queue of `blocks` holds, running or waiting, each by its weight.

    Gradio's queue knows from the moment an event is accepted until it ends, so nothing is missed
    while a job's upload is still being decoded.
    """
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        return 0
    waiting = queue.event_queue_per_concurrency_id.get(HEAVY)
    events = [*(waiting.queue if waiting is not None else ()),
              *(event for events in queue.active_jobs for event in events or ())]
    count = 0
    for event in events:
        if event.concurrency_id != HEAVY or not event.alive:
            continue
        request = event.request
        host = request.client.host if request is not None and request.client else None
        forwarded = request.headers.get("x-forwarded-for") if request is not None else None
        if client_id(host, forwarded, lane.trusted_proxies) == visitor:
            count += WEIGHTS.get(event.fn.api_name, 1)
    return count
