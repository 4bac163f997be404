"""What every executor is: compute submitted off the event loop, counted, and closed once.

An executor runs module-level functions of plain, picklable data (see
:mod:`tradingd.workflows.compute`) away from the event loop:
``submit(fn, *args)`` returns an awaitable of ``fn(*args)``;
``await close(join_timeout)`` refuses new work, then stops and joins the workers.
``shares_memory`` tells the caller whether live objects (the indicator cache)
may be passed by reference; for a process or remote executor they may not.

The kinds live in their own modules (:mod:`~tradingd.workflows.thread_executor`,
:mod:`~tradingd.workflows.process_executor`,
:mod:`~tradingd.workflows.dask_executor`); :mod:`tradingd.workflows.executor_kinds`
builds the one the config names. This module is what they share: the
interface, its errors, the job counters and the close bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, ClassVar, Literal, TypeVar

__all__ = [
    "Executor",
    "ExecutorClosed",
    "ExecutorUnavailable",
    "JobCounts",
    "JobOutcome",
    "available_cores",
    "wait_in_thread",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
JobOutcome = Literal["completed", "failed", "cancelled"]


class ExecutorClosed(RuntimeError):
    """Work was submitted after ``close()``, or the executor closed under it."""


class ExecutorUnavailable(ValueError):
    """The configured executor kind is not available in this build."""


def available_cores() -> int:
    """CPUs this process may run on (affinity-aware, at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class JobCounts:
    """One executor's job counters; thread-safe (worker threads update them, ``stats`` reads them).

    A job is *admitted* by ``submit``, *active* while a worker runs it, and
    *settled* once with its outcome. Settling happens before the submitter's
    awaitable resolves, so whoever awaits a job sees the counters updated.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.submitted = 0
        self.pending = 0  # admitted and not settled
        self.active = 0
        self.settled_by: dict[JobOutcome, int] = {"completed": 0, "failed": 0, "cancelled": 0}

    def __repr__(self) -> str:
        return f"<JobCounts active={self.active} pending={self.pending} {self.settled_by}>"

    def admitted(self) -> None:
        with self._lock:
            self.submitted += 1
            self.pending += 1

    def started(self) -> None:
        with self._lock:
            self.active += 1

    def stopped(self) -> None:
        with self._lock:
            self.active -= 1

    def settled(self, outcome: JobOutcome) -> None:
        with self._lock:
            self.pending -= 1
            self.settled_by[outcome] += 1

    def future_settled(self, future: Future[Any]) -> None:
        """A done-callback: settle with the outcome of ``future``."""
        if future.cancelled():
            self.settled("cancelled")
        else:
            self.settled("failed" if future.exception() is not None else "completed")

    def as_dict(self) -> dict[str, int]:
        """``active`` (running), ``queued`` (admitted, not running yet) and the totals."""
        with self._lock:
            counts = {"active": self.active, "queued": max(0, self.pending - self.active), "submitted": self.submitted}
            for outcome, count in self.settled_by.items():
                counts[outcome] = count
            return counts


async def wait_in_thread(blocking: Callable[[], object], seconds: float, *, name: str) -> bool:
    """Run ``blocking`` (a join) in a daemon thread; ``True`` if it returned within ``seconds``.

    Not ``asyncio.to_thread``: a join that never returns would then hold the
    loop's default executor, and ``asyncio.run`` waits for that at exit.
    """
    loop = asyncio.get_running_loop()
    returned: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not returned.done():
            returned.set_result(None)

    def run() -> None:
        try:
            blocking()
        except Exception:
            log.exception("%s failed", name)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(finish)

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(returned), max(0.0, seconds))
    except TimeoutError:
        return False
    return True


class Executor(ABC):
    """Runs compute functions away from the event loop; see the module docstring.

    ``submit`` and ``close`` are called on the event loop; ``max_workers``
    (how many jobs run at once, which the sequencer sizes its semaphore by)
    only ever changes there.
    """

    kind: ClassVar[str]
    shares_memory: ClassVar[bool]

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self.jobs = JobCounts()
        self._closed = False
        self._closing: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        """Schedule ``fn(*args)``; await the result. Raises :class:`ExecutorClosed` after close."""
        if self._closed:
            raise ExecutorClosed("the executor is closed")
        self.jobs.admitted()
        try:
            return self._dispatch(fn, args)
        except BaseException:
            self.jobs.settled("failed")
            raise

    async def close(self, join_timeout: float) -> None:
        """Refuse new work, drop queued work, stop and join the workers.

        Workers still busy after ``join_timeout`` seconds are stopped by force.
        Idempotent; concurrent callers await the same closing, which goes on
        even if a caller is cancelled.
        """
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._release(join_timeout))
        await asyncio.shield(self._closing)

    def prune_data(self) -> int:
        """Delete data imported for the workers that no admitted job can still use; the count removed.

        Blocking (disk): call from a worker thread. Executors that import nothing remove nothing.
        """
        return 0

    def stats(self) -> dict[str, Any]:
        """A JSON-safe snapshot: kind, max_workers, the job counters, closed, and the kind's own figures."""
        return {
            "kind": self.kind,
            "max_workers": self.max_workers,
            **self.jobs.as_dict(),
            **self._details(),
            "closed": self._closed,
        }

    @abstractmethod
    def _dispatch(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Awaitable[T]:
        """Hand an admitted job to the workers; settle it in ``self.jobs`` when it ends."""

    @abstractmethod
    async def _release(self, join_timeout: float) -> None:
        """Stop and join the workers (new work is already refused); force them after ``join_timeout`` seconds."""

    def _details(self) -> dict[str, Any]:
        """The kind's own figures for :meth:`stats`."""
        return {}
