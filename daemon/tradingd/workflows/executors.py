"""Where containers' compute runs: off the event loop, in a bounded pool.

The interface is deliberately small so process and Dask executors fit behind
it: ``submit(fn, *args)`` returns an awaitable of ``fn(*args)``; ``close()``
refuses new work and releases the workers. Compute functions are module-level
functions of plain, picklable data (see :mod:`tradingd.workflows.compute`).
``shares_memory`` tells the caller whether live objects (the indicator cache)
may be passed by reference; for a process or remote executor they may not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tradingd.config import ExecutorConfig

__all__ = [
    "EXECUTOR_KINDS",
    "Executor",
    "ExecutorClosed",
    "ExecutorUnavailable",
    "ThreadExecutor",
    "available_cores",
    "create_executor",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ExecutorClosed(RuntimeError):
    """Work was submitted after ``close()``."""


class ExecutorUnavailable(ValueError):
    """The configured executor kind is not available in this build."""


def available_cores() -> int:
    """CPUs this process may run on (affinity-aware, at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Executor(ABC):
    """Runs compute functions away from the event loop."""

    kind: ClassVar[str]
    shares_memory: ClassVar[bool]
    max_workers: int

    @abstractmethod
    def submit(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        """Schedule ``fn(*args)``; await the result. Raises :class:`ExecutorClosed` after close."""

    @abstractmethod
    def close(self, *, wait: bool = False) -> None:
        """Refuse new work, drop queued work, release workers. Idempotent."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """A JSON-safe snapshot: kind, workers, active, queued, completed, failed."""


class ThreadExecutor(Executor):
    """A bounded thread pool; numpy releases the GIL in its heavy loops."""

    kind = "thread"
    shares_memory = True

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or available_cores()
        self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="tradingd-compute")
        self._lock = threading.Lock()
        self._closed = False
        self.submitted = 0
        self.pending = 0  # submitted and not yet finished or cancelled
        self.active = 0
        self.completed = 0
        self.failed = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.active}/{self.max_workers} busy"
        return f"<ThreadExecutor {state} queued={self._queued()} done={self.completed}>"

    def submit(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        with self._lock:
            if self._closed:
                raise ExecutorClosed("the executor is closed")
            self.submitted += 1
            self.pending += 1
        future: Future[T] = self._pool.submit(self._call, fn, *args)
        future.add_done_callback(self._settled)
        # wrap_future cancels a still-queued job when the awaiting task is cancelled;
        # a job already running finishes in its thread (threads cannot be interrupted).
        return asyncio.wrap_future(future)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            self.active += 1
        ok = False
        try:
            result = fn(*args)
            ok = True
            return result
        finally:
            with self._lock:
                self.active -= 1
                if ok:
                    self.completed += 1
                else:
                    self.failed += 1

    def _settled(self, _future: Future[Any]) -> None:
        with self._lock:
            self.pending -= 1

    def _queued(self) -> int:
        with self._lock:
            return max(0, self.pending - self.active)

    def close(self, *, wait: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=True)
        log.debug("thread executor closed (%d jobs completed)", self.completed)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        with self._lock:
            active, completed, failed, pending = self.active, self.completed, self.failed, self.pending
        return {
            "kind": self.kind,
            "max_workers": self.max_workers,
            "active": active,
            "queued": max(0, pending - active),
            "completed": completed,
            "failed": failed,
            "closed": self._closed,
        }


def _thread(config: ExecutorConfig, data_dir: Path | None) -> Executor:
    return ThreadExecutor(config.max_workers)


def _process(config: ExecutorConfig, data_dir: Path | None) -> Executor:
    from tradingd.workflows.process_executor import ProcessExecutor

    return ProcessExecutor(config.max_workers, max_tasks_per_child=config.process.max_tasks_per_child,
                           max_worker_rss_mb=config.process.max_worker_rss_mb, data_dir=data_dir)


def _dask(config: ExecutorConfig, data_dir: Path | None) -> Executor:
    # Imported lazily: dask is an optional extra; DaskExecutor names the extra when it is missing.
    from tradingd.workflows.dask_executor import create_dask_executor

    return create_dask_executor(config)


EXECUTOR_KINDS: dict[str, Callable[[ExecutorConfig, Path | None], Executor]] = {
    "thread": _thread,
    "process": _process,
    "dask": _dask,
}


def create_executor(config: ExecutorConfig, *, data_dir: Path | None = None) -> Executor:
    """The executor ``config.kind`` names.

    ``data_dir``: where an executor that cannot share memory (process) imports
    market data into a memory-mapped store; the daemon passes a directory in its
    state dir so the data sits on disk, not in a tmpfs.
    """
    factory = EXECUTOR_KINDS.get(config.kind)
    if factory is None:
        raise ExecutorUnavailable(
            f"executor.kind {config.kind!r} is not available (available: {', '.join(sorted(EXECUTOR_KINDS))})"
        )
    return factory(config, data_dir)
