"""The ``process`` executor: compute in worker processes that are recycled.

Why not ``concurrent.futures.ProcessPoolExecutor``: on Python 3.11-3.13 its
``max_tasks_per_child`` deadlocks once a worker retires with a backlog queued
(CPython gh-115634, fixed only in late 3.13/3.14 releases); one worker killed by
the OOM killer breaks the whole pool (``BrokenProcessPool`` fails every queued
task); and it cannot replace *one* worker because of its memory. So each worker
here is a *slot*: a ``multiprocessing`` process (``forkserver`` start method —
never ``fork`` from a threaded asyncio process) with its own pipe, driven by
one dispatcher thread. After every task the worker reports its RSS; the slot
retires the process after ``max_tasks_per_child`` tasks or when the RSS is over
``max_worker_rss_mb``, and starts a fresh one — the way Celery and gunicorn
bound leaks in code they do not control. A worker that dies mid-task fails
only that task (:class:`WorkerLost`) and is replaced.

Market data crosses as :class:`~tradingd.workflows.dataref.DataRef` (see that
module): workers map it read-only from the mmap store; data that is not in a
store is imported once per ``(symbol, version)`` into ``data_dir``.

The worker's side (its loop, the pipe protocol, starting and stopping one)
is :mod:`tradingd.workflows.process_worker`; this module is the daemon's side.

A task already running in a worker is not interrupted when its awaiting task
is cancelled (like a thread); it finishes and its result is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import queue
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

import psutil

from tradingd.workflows.dataref import DataPlane
from tradingd.workflows.executors import Executor, ExecutorClosed, available_cores
from tradingd.workflows.process_worker import RemoteTraceback, start_worker, stop_worker

__all__ = ["ProcessExecutor", "RemoteTraceback", "WorkerLost"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Imported once in the forkserver, so every worker forks with numpy, pandas and the engine loaded.
_FORKSERVER_PRELOAD = ["tradingd.workflows.compute", "tradingd.workflows.runs"]


class WorkerLost(RuntimeError):
    """The worker process died while running a task (killed, out of memory, crashed)."""


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future[Any] = field(default_factory=Future)


@dataclass
class _Slot:
    """One worker position: the live process, its pipe and its counters."""

    index: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    tasks: int = 0  # run by the current process
    rss_bytes: int = 0
    peak_rss_bytes: int = 0
    started_at: float = 0.0
    busy: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class ProcessExecutor(Executor):
    """Compute in recycled worker processes; see the module docstring."""

    kind = "process"
    shares_memory = False

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        max_tasks_per_child: int = 50,
        max_worker_rss_mb: float | None = None,
        data_dir: Path | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        """Nothing starts until :meth:`start` or the first ``submit``.

        ``preload``: modules every worker imports first (e.g. ones that register strategies).

        ``data_dir``: where data that is not in a store is imported for the
        workers (a private temporary directory, removed at close, if None).
        """
        self.max_workers = max_workers or available_cores()
        self.max_tasks_per_child = max_tasks_per_child
        self.max_worker_rss_bytes = int(max_worker_rss_mb * 2**20) if max_worker_rss_mb else None
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="tradingd-data-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # close(wait=False) leaves removal to the last slot thread; this covers an exit before it is done.
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.data_dir), ignore_errors=True)
        if not self._owns_data_dir:
            self._cleanup.detach()
        self.preload = tuple(preload)
        self.plane = DataPlane(self.data_dir)
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_FORKSERVER_PRELOAD)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self.pending = 0
        self.active = 0
        self.completed = 0
        self.failed = 0
        self.lost = 0
        self.recycled: dict[str, int] = {"tasks": 0, "rss": 0}
        self.started_workers = 0
        self.peak_worker_rss_bytes = 0
        self._slots = [_Slot(i) for i in range(self.max_workers)]
        self._serving = len(self._slots)
        self._threads = [
            threading.Thread(target=self._serve, args=(slot,), name=f"tradingd-process-slot-{slot.index}",
                             daemon=True)
            for slot in self._slots
        ]
        self._started = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.active}/{self.max_workers} busy"
        return (f"<ProcessExecutor {state} done={self.completed} recycled={sum(self.recycled.values())} "
                f"lost={self.lost}>")

    def start(self) -> None:
        """Start the slots and their workers now (idempotent; the first ``submit`` does it too)."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            for thread in self._threads:
                thread.start()

    # --- the Executor interface ----------------------------------------------------------

    def submit(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        job = _Job(fn, args)
        with self._lock:
            if self._closed:
                raise ExecutorClosed("the executor is closed")
            self.pending += 1
        self.start()
        job.future.add_done_callback(self._settled)
        self._jobs.put(job)
        # Cancelling the awaiting task cancels a still-queued job; a running one finishes in its worker.
        return asyncio.wrap_future(job.future)

    def close(self, *, wait: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._started
        if not started:
            self._remove_data_dir()
            return
        # Queued jobs are cancelled by the slots as they reach them; then each slot stops its worker.
        for _ in self._slots:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
            self._remove_data_dir()
        log.debug("process executor closed (%d tasks, %d workers started)", self.completed, self.started_workers)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        workers = []
        with self._lock:
            slots = [(s.index, s.pid, s.tasks, s.rss_bytes, s.peak_rss_bytes, s.busy, s.started_at)
                     for s in self._slots]
            counts = {
                "active": self.active,
                "queued": max(0, self.pending - self.active),
                "completed": self.completed,
                "failed": self.failed,
                "lost": self.lost,
                "recycled": dict(self.recycled),
                "workers_started": self.started_workers,
                "peak_worker_rss_bytes": self.peak_worker_rss_bytes,
            }
        for index, pid, tasks, rss, peak, busy, started in slots:
            if pid is not None:
                try:
                    rss = psutil.Process(pid).memory_info().rss  # live, not as of the last task
                except psutil.Error:
                    pass
            workers.append({"slot": index, "pid": pid, "busy": busy, "tasks": tasks, "rss_bytes": rss,
                            "peak_rss_bytes": peak, "uptime_seconds": round(time.time() - started, 1) if pid else 0})
        return {
            "kind": self.kind,
            "max_workers": self.max_workers,
            "max_tasks_per_child": self.max_tasks_per_child,
            "max_worker_rss_mb": self.max_worker_rss_bytes / 2**20 if self.max_worker_rss_bytes else None,
            "start_method": "forkserver",
            **counts,
            "workers_rss_bytes": sum(w["rss_bytes"] for w in workers if w["pid"] is not None),
            "workers": workers,
            "data_dir": str(self.data_dir),
            "data_imported": self.plane.imported,
            "closed": self._closed,
        }

    # --- slots ---------------------------------------------------------------------------

    def _settled(self, _future: Future[Any]) -> None:
        with self._lock:
            self.pending -= 1

    def _serve(self, slot: _Slot) -> None:
        """A slot's dispatcher thread: run jobs one at a time on the slot's worker."""
        try:
            self._try_spawn(slot)
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                if self._closed:
                    job.future.cancel()
                    continue
                if job.future.set_running_or_notify_cancel():
                    self._run(slot, job)
        except Exception:  # a bug here must not leave jobs waiting forever
            log.exception("process executor slot %d failed", slot.index)
        finally:
            self._retire(slot, reason=None)
            with self._lock:
                self._serving -= 1
                last = self._serving == 0
            if last:
                self._remove_data_dir()

    def _run(self, slot: _Slot, job: _Job) -> None:
        with self._lock:
            self.active += 1
            slot.busy = True
        value: Any = None
        error: BaseException | None = None
        try:
            value = self._exchange(slot, job)
        except BaseException as exc:  # the task's own exception (even SystemExit) belongs to its future
            error = exc
        finally:
            # Counted before the future settles, so whoever awaits it sees the counters updated.
            with self._lock:
                self.active -= 1
                slot.busy = False
                if error is None:
                    self.completed += 1
                else:
                    self.failed += 1
        if error is None:
            job.future.set_result(value)
        else:
            job.future.set_exception(error)
        reason = self._recycle_reason(slot)
        if reason is not None:
            self._retire(slot, reason)
            if not self._closed:
                self._try_spawn(slot)

    def _exchange(self, slot: _Slot, job: _Job) -> Any:
        """Run one job on the slot's worker: its result, or raise its (or the transport's) exception."""
        # Unpicklable arguments or a failed data import raise here, before anything is sent.
        payload = pickle.dumps((job.fn, self.plane.outbound(job.args)), protocol=pickle.HIGHEST_PROTOCOL)
        if slot.process is None or not slot.process.is_alive():
            self._retire(slot, reason=None)
            if not self._try_spawn(slot):
                raise WorkerLost("cannot start a worker process (see the log)")
        assert slot.conn is not None and slot.process is not None
        name = getattr(job.fn, "__qualname__", repr(job.fn))
        try:
            slot.conn.send_bytes(payload)
            del payload
            wait([slot.conn, slot.process.sentinel])
            raw = slot.conn.recv_bytes()
        except (EOFError, OSError):
            slot.process.join(1.0)
            code, pid = slot.process.exitcode, slot.pid
            with self._lock:
                self.lost += 1
            log.warning("worker pid %s died (exit code %s) while running %s; starting another", pid, code, name)
            self._retire(slot, reason=None)
            if not self._closed:
                self._try_spawn(slot)
            raise WorkerLost(f"worker process {pid} died (exit code {code}) while running {name}") from None
        try:
            status, value, remote_tb, rss, peak = pickle.loads(raw)
        except Exception as exc:  # e.g. a result class the daemon cannot import
            raise RuntimeError(f"cannot read the worker's reply: {type(exc).__name__}: {exc}") from exc
        del raw
        with self._lock:
            slot.tasks += 1
            slot.rss_bytes = rss
            slot.peak_rss_bytes = max(slot.peak_rss_bytes, peak)
            self.peak_worker_rss_bytes = max(self.peak_worker_rss_bytes, peak)
        if status == "ok":
            return self.plane.inbound(value)
        if isinstance(value, BaseException):
            value.__cause__ = RemoteTraceback(remote_tb)
            raise value
        raise RuntimeError(f"{name} failed in its worker: {value!r}")

    def _recycle_reason(self, slot: _Slot) -> str | None:
        if slot.process is None:
            return None
        if slot.tasks >= self.max_tasks_per_child:
            return "tasks"
        if self.max_worker_rss_bytes is not None and slot.rss_bytes > self.max_worker_rss_bytes:
            return "rss"
        return None

    def _try_spawn(self, slot: _Slot) -> bool:
        try:
            self._spawn(slot)
        except Exception:
            log.exception("slot %d: cannot start a worker process", slot.index)
            return False
        return True

    def _spawn(self, slot: _Slot) -> None:
        process, parent = start_worker(self._context, f"tradingd-worker-{slot.index}", str(self.data_dir),
                                       self.preload)
        with self._lock:
            slot.process, slot.conn = process, parent
            slot.tasks, slot.rss_bytes, slot.peak_rss_bytes = 0, 0, 0
            slot.started_at = time.time()
            self.started_workers += 1
        log.debug("slot %d: worker pid %s started", slot.index, process.pid)

    def _retire(self, slot: _Slot, reason: str | None) -> None:
        """Stop the slot's worker: ask, wait, then kill. ``reason`` counts it as recycled."""
        process, conn = slot.process, slot.conn
        if process is None:
            return
        stop_worker(process, conn)
        with self._lock:
            slot.process, slot.conn = None, None
            if reason is not None:
                self.recycled[reason] += 1
        if reason is not None:
            log.info("worker slot %d recycled after %d tasks (%s; rss %.0f MB)", slot.index, slot.tasks, reason,
                     slot.rss_bytes / 2**20)

    def _remove_data_dir(self) -> None:
        if self._owns_data_dir:
            # The finalizer stays armed: at exit it finishes a removal interrupted with this daemon thread.
            shutil.rmtree(self.data_dir, ignore_errors=True)
