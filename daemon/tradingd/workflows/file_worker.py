"""A helper process for the work that parses whole result files: aggregation and reports.

A container result with tracked equity is megabytes of JSON, and CPython's
JSON decoder holds the GIL for the whole of one ``json.loads`` (0.2 s for a
10 MB file on a loaded machine). In a worker *thread* that still stalls the
event loop, since the loop needs the GIL to run at all. So the phase
aggregation (which reads every container file of a phase) and report
rendering (which reads them again, then draws with matplotlib) run in one
long-lived helper process; only their small answers (the aggregate document,
a few counters) come back. Matplotlib is then never imported by the daemon.

The helper is a worker of the process executor's kind: a plain subprocess
(:class:`~tradingd.workflows.worker_launcher.WorkerLauncher`, never a fork
of the threaded daemon, no multiprocessing resource tracker) that forks one
worker with the report modules already imported. Closing the launcher, or
the daemon dying, ends both.

Calls run one at a time on one dedicated thread, which owns the helper: a
cancelled caller never leaves a half-finished exchange behind. If the helper
cannot start or dies, the call is retried once in a fresh helper and then,
as a last resort, on that thread: slower for the loop, but the run still
finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pickle
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tradingd.workflows.process_worker import RemoteTraceback
from tradingd.workflows.worker_launcher import WorkerLauncher, WorkerProcess

__all__ = ["FileWorker"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Recycle the helper now and then, so whatever matplotlib or a large parse leaves behind is returned.
MAX_TASKS_PER_CHILD = 200
#: Imported once by the launcher, so every forked helper starts with them.
PRELOAD = ("tradingd.workflows.aggregate", "tradingd.reports")
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 5.0


class FileWorker:
    """One helper process, started on first use; see the module docstring."""

    def __init__(self, *, use_process: bool = True) -> None:
        self.use_process = use_process
        self.calls = 0
        self.fallbacks = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-worker")
        self._launcher: WorkerLauncher | None = None
        self._worker: WorkerProcess | None = None
        self._tasks = 0  # on the current helper
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._worker is not None else "idle")
        return f"<FileWorker {state} {self.calls} calls, {self.fallbacks} in a thread>"

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the helper process (``fn`` and its arguments must pickle)."""
        if self._closed:
            raise RuntimeError("the file worker is closed")
        self.calls += 1
        job = functools.partial(fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        result: T = await loop.run_in_executor(self._thread, self._run, job)
        return result

    # --- on the file worker's thread ---------------------------------------------------

    def _run(self, job: Callable[[], T]) -> T:
        if self.use_process and not self._closed:
            payload = pickle.dumps((job, ()), protocol=pickle.HIGHEST_PROTOCOL)
            for attempt in (1, 2):
                try:
                    reply = self._helper().call(payload)
                except (OSError, EOFError) as exc:
                    log.warning("the file worker process failed (%s); %s", exc,
                                "starting another" if attempt == 1 else "working in a thread instead")
                    self._stop_helper()
                    continue
                result: T = self._answer(reply)
                return result
        self.fallbacks += 1
        return job()

    def _helper(self) -> WorkerProcess:
        if self._worker is not None and self._tasks >= MAX_TASKS_PER_CHILD:
            self._worker.stop(_STOP_TIMEOUT)
            self._worker = None
        if self._launcher is None or not self._launcher.alive:
            self._stop_helper()
            self._launcher = WorkerLauncher.start(tempfile.gettempdir(), PRELOAD, _START_TIMEOUT)
        if self._worker is None:
            worker = self._launcher.fork()
            worker.wait_ready(_START_TIMEOUT)
            self._worker, self._tasks = worker, 0
        self._tasks += 1
        return self._worker

    def _answer(self, reply: bytes) -> Any:
        status, value, remote_traceback, _rss, _peak = pickle.loads(reply)
        if status == "ok":
            return value
        raise value from RemoteTraceback(remote_traceback)  # the function's own errors, as they are

    def _stop_helper(self) -> None:
        worker, self._worker = self._worker, None
        launcher, self._launcher = self._launcher, None
        if worker is not None:
            worker.stop(_STOP_TIMEOUT)
        if launcher is not None:
            launcher.close(_STOP_TIMEOUT)

    # --- from the event loop ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "in_a_thread": self.fallbacks, "running": self._worker is not None}

    async def close(self, join_timeout: float) -> None:
        """Stop the helper (idempotent); a call still running is waited for up to ``join_timeout``."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        stopped = loop.run_in_executor(self._thread, self._stop_helper)
        finished, _ = await asyncio.wait({stopped}, timeout=join_timeout)
        if not finished:
            log.warning("the file worker process did not stop within %.1f s; ending it", join_timeout)
            launcher = self._launcher
            if launcher is not None:  # closing its socket ends the helper, which ends the running call
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(launcher.close, 1.0)
        self._thread.shutdown(wait=False)
