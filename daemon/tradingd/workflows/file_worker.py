"""A helper process for the work that parses whole result files: aggregation and reports.

A container result with tracked equity is megabytes of JSON, and CPython's
JSON decoder holds the GIL for the whole of one ``json.loads`` (0.2 s for a
10 MB file on a loaded machine). In a worker *thread* that still stalls the
event loop, since the loop needs the GIL to run at all. So the phase
aggregation (which reads every container file of a phase) and report
rendering (which reads them again, then draws with matplotlib) run in one
long-lived helper process; only their small answers (the aggregate document,
a few counters) come back.

If the helper cannot start or dies, the call is retried once in a fresh
process and then, as a last resort, in a thread: slower for the loop, but
the run still finishes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

__all__ = ["FileWorker"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Recycle the helper now and then, so whatever matplotlib or a large parse leaves behind is returned.
MAX_TASKS_PER_CHILD = 200


class FileWorker:
    """One helper process, started on first use; see the module docstring."""

    def __init__(self, *, use_process: bool = True) -> None:
        self.use_process = use_process
        self.calls = 0
        self.fallbacks = 0
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._pool is not None else "idle")
        return f"<FileWorker {state} {self.calls} calls, {self.fallbacks} in a thread>"

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the daemon has threads, and forking a threaded process is unsafe.
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             max_tasks_per_child=MAX_TASKS_PER_CHILD)
        return self._pool

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the helper process (``fn`` and its arguments must pickle)."""
        self.calls += 1
        job = functools.partial(fn, *args, **kwargs)
        if self.use_process and not self._closed:
            loop = asyncio.get_running_loop()
            for attempt in (1, 2):
                try:
                    future = loop.run_in_executor(self._executor(), job)  # OSError: cannot start a process
                except (BrokenProcessPool, OSError) as exc:
                    problem: BaseException = exc
                else:
                    try:
                        return await future  # the function's own errors propagate as they are
                    except BrokenProcessPool as exc:
                        problem = exc
                log.warning("the file worker process failed (%s); %s", problem,
                            "starting another" if attempt == 1 else "working in a thread instead")
                self._discard()
        self.fallbacks += 1
        return await asyncio.to_thread(job)

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "in_a_thread": self.fallbacks, "running": self._pool is not None}

    async def close(self, join_timeout: float) -> None:
        """Stop the helper (idempotent); a call still running is waited for up to ``join_timeout``."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        done = asyncio.ensure_future(asyncio.to_thread(pool.shutdown, True, cancel_futures=True))
        finished, _ = await asyncio.wait({done}, timeout=join_timeout)
        if not finished:
            log.warning("the file worker process did not stop within %.1f s", join_timeout)
