"""The ``process`` executor: compute in worker processes that are recycled.

Why not ``concurrent.futures.ProcessPoolExecutor``: on Python 3.11-3.13 its
``max_tasks_per_child`` deadlocks once a worker retires with a backlog queued
(CPython gh-115634, fixed only in late 3.13/3.14 releases); one worker killed by
the OOM killer breaks the whole pool (``BrokenProcessPool`` fails every queued
task); and it cannot replace *one* worker because of its memory. So each worker
here sits in a :class:`WorkerSlot` driven by one dispatcher thread. After every
task the worker reports its RSS; the slot retires the process after
``max_tasks_per_child`` tasks, when the RSS is over ``max_worker_rss_mb``, or
when it grew past the memory grant passed with its task by more than a margin
(:func:`_grant_margin`), and starts a fresh one — the way Celery and gunicorn bound leaks in code they do
not control. A worker that dies mid-task fails only that task
(:class:`WorkerLost`) and is replaced.

Workers are forked by the executor's own launcher
(:mod:`tradingd.workflows.worker_launcher`), which imports the engine once;
their side is :mod:`tradingd.workflows.process_worker`. Closing the executor
leaves no process behind — no worker, launcher, forkserver or resource
tracker.

Market data crosses as :class:`~tradingd.workflows.dataref.DataRef` (see that
module): workers map it read-only from the mmap store; data that is not in a
store is imported once per ``(symbol, version)`` into ``data_dir``.

A task already running in a worker is not interrupted when its awaiting task
is cancelled (like a thread); it finishes and its result is dropped.
"""

from __future__ import annotations

import asyncio
import logging
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
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import psutil

from tradingd.workflows.dataref import DataPlane
from tradingd.workflows.executor import Executor, ExecutorClosed, available_cores, wait_in_thread
from tradingd.workflows.process_worker import RemoteTraceback
from tradingd.workflows.worker_launcher import WorkerLauncher, WorkerProcess

__all__ = ["ProcessExecutor", "WorkerLost", "WorkerSlot"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_READY_TIMEOUT = 120.0  # the launcher imports numpy, pandas and the engine; slow on a loaded host
_STOP_TIMEOUT = 5.0  # a retiring worker's time to exit before it is killed
_REAPED_TIMEOUT = 5.0  # after close killed the stragglers: time for their slots to reap them


class WorkerLost(RuntimeError):
    """The worker process died while running a task (killed, out of memory, crashed)."""



def _grant_margin(grant_bytes: int) -> int:
    """How far past its grant a worker may grow (a quarter, at least 32 MiB: heaps keep some of what was freed)."""
    return max(grant_bytes // 4, 32 * 2**20)

@dataclass(eq=False)
class SlotTask:
    """A submitted call, queued until a slot takes it."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future[Any] = field(default_factory=Future)

    @property
    def grant_bytes(self) -> int | None:
        """The memory grant passed with the task (a ``GrantedTask`` argument), if any."""
        return next((a.grant_bytes for a in self.args if isinstance(a, GrantedTask)), None)


@runtime_checkable
class GrantedTask(Protocol):
    """A task argument that carries its container's memory grant (``compute.BatchTask``)."""

    @property
    def grant_bytes(self) -> int | None: ...


@dataclass(eq=False)
class WorkerSlot:
    """One worker position: the live worker and its counters."""

    index: int
    worker: WorkerProcess | None = None
    tasks: int = 0  # run by the current worker
    rss_bytes: int = 0
    peak_rss_bytes: int = 0
    ready_rss_bytes: int = 0  # the worker's RSS when it was ready: what a task's growth is measured from
    started_at: float = 0.0
    busy: bool = False

    @property
    def pid(self) -> int | None:
        """The worker's pid once it is ready."""
        return self.worker.pid if self.worker is not None and self.worker.ready else None


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
        super().__init__(max_workers or available_cores())
        self.max_tasks_per_child = max_tasks_per_child
        self.max_worker_rss_bytes = int(max_worker_rss_mb * 2**20) if max_worker_rss_mb else None
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="tradingd-data-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Covers an exit without close(); close removes the directory itself.
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.data_dir), ignore_errors=True)
        if not self._owns_data_dir:
            self._cleanup.detach()
        self.preload = tuple(preload)
        self.plane = DataPlane(self.data_dir)
        self._queue: queue.SimpleQueue[SlotTask | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the slots and the worker counters below
        self.lost = 0
        self.recycled: dict[str, int] = {"tasks": 0, "rss": 0, "grant": 0}
        self.started_workers = 0
        self.peak_worker_rss_bytes = 0
        self._launcher: WorkerLauncher | None = None
        self._launcher_lock = threading.Lock()
        self._slots = [WorkerSlot(i) for i in range(self.max_workers)]
        self._threads = [
            threading.Thread(target=self._serve, args=(slot,), name=f"tradingd-process-slot-{slot.index}",
                             daemon=True)
            for slot in self._slots
        ]
        self._started = False

    def __repr__(self) -> str:
        counts = self.jobs.as_dict()
        state = "closed" if self.closed else f"{counts['active']}/{self.max_workers} busy"
        return (f"<ProcessExecutor {state} done={counts['completed']} recycled={sum(self.recycled.values())} "
                f"lost={self.lost}>")

    def start(self) -> None:
        """Start the slots and their workers now (idempotent; the first ``submit`` does it too)."""
        with self._lock:
            if self._started or self.closed:
                return
            self._started = True
        for thread in self._threads:
            thread.start()

    def _dispatch(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Awaitable[T]:
        task = SlotTask(fn, args)
        self.start()
        task.future.add_done_callback(self.jobs.future_settled)
        self._queue.put(task)
        # Cancelling the awaiting task cancels a still-queued job; a running one finishes in its worker.
        return asyncio.wrap_future(task.future)

    async def _release(self, join_timeout: float) -> None:
        if self._started:
            # Each slot cancels the queued tasks it meets, then reaches its None and stops its worker.
            for _ in self._slots:
                self._queue.put(None)
            if not await wait_in_thread(self._join_slots, join_timeout, name="tradingd-process-join"):
                log.warning("process executor: workers still busy after %.1f s; killing them", join_timeout)
                await wait_in_thread(self._kill_workers, _REAPED_TIMEOUT, name="tradingd-process-kill")
                if not await wait_in_thread(self._join_slots, _REAPED_TIMEOUT, name="tradingd-process-join"):
                    log.error("process executor: slot threads did not stop after their workers were killed")
            await wait_in_thread(self._close_launcher, 2 * _REAPED_TIMEOUT, name="tradingd-process-launcher")
        self._remove_data_dir()
        log.debug("process executor closed (%d tasks, %d workers started)", self.jobs.settled_by["completed"],
                  self.started_workers)

    def _join_slots(self) -> None:
        for thread in self._threads:
            thread.join()

    def _kill_workers(self) -> None:
        with self._lock:
            workers = [slot.worker for slot in self._slots if slot.worker is not None]
        for worker in workers:
            worker.kill()

    def _close_launcher(self) -> None:
        with self._launcher_lock:
            launcher, self._launcher = self._launcher, None
        if launcher is not None:
            launcher.close(_REAPED_TIMEOUT)

    def _live_launcher(self) -> WorkerLauncher:
        """The launcher, started on first use and again if it died."""
        with self._launcher_lock:
            if self.closed:  # close() ends the launcher; nothing may start another after it
                raise ExecutorClosed("the executor is closed")
            if self._launcher is None or not self._launcher.alive:
                if self._launcher is not None:
                    log.warning("process executor: the worker launcher exited (code %s); starting another",
                                self._launcher.process.returncode)
                    self._launcher.close(_REAPED_TIMEOUT)
                self._launcher = WorkerLauncher.start(str(self.data_dir), self.preload, _READY_TIMEOUT)
            return self._launcher

    def _details(self) -> dict[str, Any]:
        with self._lock:
            slots = [(s.index, s.pid, s.tasks, s.rss_bytes, s.peak_rss_bytes, s.busy, s.started_at)
                     for s in self._slots]
            counts = {
                "lost": self.lost,
                "recycled": dict(self.recycled),
                "workers_started": self.started_workers,
                "peak_worker_rss_bytes": self.peak_worker_rss_bytes,
            }
        workers = []
        for index, pid, tasks, rss, peak, busy, started in slots:
            if pid is not None:
                try:
                    rss = psutil.Process(pid).memory_info().rss  # live, not as of the last task
                except psutil.Error:
                    pass
            workers.append({"slot": index, "pid": pid, "busy": busy, "tasks": tasks, "rss_bytes": rss,
                            "peak_rss_bytes": peak, "uptime_seconds": round(time.time() - started, 1) if pid else 0})
        return {
            "max_tasks_per_child": self.max_tasks_per_child,
            "max_worker_rss_mb": self.max_worker_rss_bytes / 2**20 if self.max_worker_rss_bytes else None,
            "start_method": "launcher",
            **counts,
            "workers_rss_bytes": sum(w["rss_bytes"] for w in workers if w["pid"] is not None),
            "workers": workers,
            "data_dir": str(self.data_dir),
            "data_imported": self.plane.imported,
        }

    # --- slots (each runs in its own thread) -----------------------------------------------

    def _serve(self, slot: WorkerSlot) -> None:
        """A slot's dispatcher thread: run tasks one at a time on the slot's worker."""
        try:
            self._try_spawn(slot)
            while True:
                task = self._queue.get()
                if task is None:
                    return
                if self.closed:
                    task.future.cancel()
                elif task.future.set_running_or_notify_cancel():
                    self._run(slot, task)
        except Exception:  # a bug here must not leave tasks waiting forever
            log.exception("process executor slot %d failed", slot.index)
        finally:
            self._retire(slot, reason=None)

    def _run(self, slot: WorkerSlot, task: SlotTask) -> None:
        self.jobs.started()
        with self._lock:
            slot.busy = True
        try:
            value = self._exchange(slot, task)
        except BaseException as exc:  # the task's own exception (even SystemExit) belongs to its future
            task.future.set_exception(exc)
        else:
            task.future.set_result(value)
        finally:
            self.jobs.stopped()
            with self._lock:
                slot.busy = False
        reason = self._recycle_reason(slot, task.grant_bytes)
        if reason is not None:
            self._retire(slot, reason)
            if not self.closed:
                self._try_spawn(slot)

    def _exchange(self, slot: WorkerSlot, task: SlotTask) -> Any:
        """Run one task on the slot's worker: its result, or raise its (or the transport's) exception."""
        # Unpicklable arguments or a failed data import raise here, before anything is sent.
        payload = pickle.dumps((task.fn, self.plane.outbound(task.args)), protocol=pickle.HIGHEST_PROTOCOL)
        worker = slot.worker
        if worker is None or not worker.alive:
            self._retire(slot, reason=None)
            worker = self._try_spawn(slot)
            if worker is None:
                raise WorkerLost("cannot start a worker process (see the log)")
        name = getattr(task.fn, "__qualname__", repr(task.fn))
        try:
            raw = worker.call(payload)
        except (EOFError, OSError):
            code = worker.exit_code()
            with self._lock:
                self.lost += 1
            if not self.closed:
                log.warning("worker pid %s died (exit code %s) while running %s; starting another", worker.pid,
                            code, name)
            self._retire(slot, reason=None)
            if not self.closed:
                self._try_spawn(slot)
            raise WorkerLost(f"worker process {worker.pid} died (exit code {code}) while running {name}") from None
        del payload
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

    def _recycle_reason(self, slot: WorkerSlot, grant_bytes: int | None = None) -> str | None:
        if slot.worker is None:
            return None
        if grant_bytes is not None and slot.rss_bytes - slot.ready_rss_bytes > grant_bytes + _grant_margin(grant_bytes):
            # It kept more than its task was granted (heap it cannot give back): start afresh.
            return "grant"
        if slot.tasks >= self.max_tasks_per_child:
            return "tasks"
        if self.max_worker_rss_bytes is not None and slot.rss_bytes > self.max_worker_rss_bytes:
            return "rss"
        return None

    def _try_spawn(self, slot: WorkerSlot) -> WorkerProcess | None:
        """Start the slot's worker and wait until it is ready; None (logged) if it cannot start."""
        try:
            worker = self._live_launcher().fork()
        except Exception:
            if not self.closed:
                log.exception("slot %d: cannot start a worker process", slot.index)
            return None
        with self._lock:  # registered before it is ready, so close can kill a worker that hangs starting
            slot.worker = worker
            slot.tasks, slot.rss_bytes, slot.peak_rss_bytes = 0, 0, 0
            self.started_workers += 1
        try:
            rss = worker.wait_ready(_READY_TIMEOUT)
        except (EOFError, OSError) as exc:
            if not self.closed:
                log.error("slot %d: worker pid %s did not start: %s", slot.index, worker.pid, exc)
            self._retire(slot, reason=None)
            return None
        with self._lock:
            slot.rss_bytes = slot.ready_rss_bytes = rss
            slot.started_at = time.time()
        log.debug("slot %d: worker pid %s started", slot.index, worker.pid)
        return worker

    def _retire(self, slot: WorkerSlot, reason: str | None) -> None:
        """Stop the slot's worker: ask, wait, then kill. ``reason`` counts it as recycled."""
        worker = slot.worker
        if worker is None:
            return
        worker.stop(_STOP_TIMEOUT)  # still in the slot meanwhile, so close can kill it if it hangs
        with self._lock:
            slot.worker = None
            if reason is not None:
                self.recycled[reason] += 1
        if reason is not None:
            log.info("worker slot %d recycled after %d tasks (%s; rss %.0f MB)", slot.index, slot.tasks, reason,
                     slot.rss_bytes / 2**20)

    def prune_data(self) -> int:
        """Delete the stores in ``data_dir`` while no job is admitted (they are rewritten on demand)."""
        return self.plane.prune(lambda: self.jobs.pending == 0)

    def _remove_data_dir(self) -> None:
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
