"""The ``dask`` executor: containers' compute as tasks on a Dask distributed cluster.

- ``executor.dask.scheduler_address`` set: a ``distributed.Client`` connects to
  that (existing) scheduler. Unset: the executor starts a ``LocalCluster``
  (``n_workers`` worker processes x ``threads_per_worker``) that it owns and
  closes with itself.
- Each ``submit(fn, *args)`` is one Dask task (``client.submit(..., pure=False)``,
  keyed ``<function>-<uuid>``); the result comes back to the daemon, which
  writes the results tree itself — workers never need the results directory.
- The client is a *synchronous* client on its own event-loop thread, so the
  daemon's loop never runs Dask's machinery; a done-callback hands each
  finished future to a small fetch pool, which resolves the awaiting asyncio
  future with ``call_soon_threadsafe``. Nothing blocks the loop.
- Cancelling the awaiting task cancels the Dask future (``client.cancel``).
- A worker lost mid-task: the scheduler reruns its tasks elsewhere
  (``distributed.scheduler.allowed-failures``, default 3), so the run
  completes; only a task that kills that many workers fails (``KilledWorker``).
- ``stats()`` is a snapshot refreshed every ``stats_interval`` seconds from
  ``client.scheduler_info()`` by a monitor thread: per-worker memory (RSS),
  managed bytes, memory limit, threads, pid, and the peaks seen.

Market data already mapped from an mmap store travels as a
:class:`~tradingd.workflows.dataref.DataRef` (the store must be at the same path
on every worker — a shared filesystem); other data travels by value (a
batch's slice of bars, not the data set).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tradingd.config import ExecutorConfig
from tradingd.workflows.dataref import DataPlane, call_with_refs
from tradingd.workflows.executors import Executor, ExecutorClosed, ExecutorUnavailable

__all__ = ["MISSING_EXTRA", "DaskExecutor", "create_dask_executor"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MISSING_EXTRA = "dask needs the optional extra: pip install 'tradingd[dask]'"
_CONNECT_TIMEOUT = 30.0
_CLOSE_TIMEOUT = 20.0


@dataclass(eq=False)  # identity: jobs live in a set
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    waiter: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    key: str
    future: Any = None  # the distributed.Future, once submitted
    cancelled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class DaskExecutor(Executor):
    """Compute on a Dask distributed cluster; see the module docstring."""

    kind = "dask"
    shares_memory = False

    def __init__(
        self,
        *,
        scheduler_address: str | None = None,
        n_workers: int = 2,
        threads_per_worker: int = 1,
        max_workers: int | None = None,
        preload: Sequence[str] = (),
        stats_interval: float = 2.0,
        connect_timeout: float = _CONNECT_TIMEOUT,
    ) -> None:
        """Nothing connects until :meth:`start` or the first ``submit``.

        ``max_workers`` bounds the containers in flight; unset, it follows the
        cluster's thread count. ``preload``: modules each task imports first
        (e.g. ones that register strategies; also on workers started later).
        """
        try:
            import distributed  # noqa: F401  (optional extra)
        except ImportError as exc:
            raise ExecutorUnavailable(f"{MISSING_EXTRA} ({exc})") from None
        self.scheduler_address = scheduler_address
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self._fixed_max_workers = max_workers
        self.max_workers = max_workers or n_workers * threads_per_worker
        self.preload = tuple(preload)
        self.stats_interval = stats_interval
        self.connect_timeout = connect_timeout
        self.plane = DataPlane(None)
        self.client: Any = None
        self.cluster: Any = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._jobs: set[_Job] = set()
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self._snapshot: dict[str, Any] = {"workers": [], "n_workers": 0, "total_threads": 0, "updated_at": None}
        self._peaks: dict[str, int] = {}
        self.peak_worker_memory_bytes = 0
        self._pids: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tradingd-dask")
        self._closer: threading.Thread | None = None
        self._monitor = threading.Thread(target=self._connect_and_watch, name="tradingd-dask-monitor", daemon=True)
        self._started = False

    def __repr__(self) -> str:
        where = self.scheduler_address or f"LocalCluster({self.n_workers}x{self.threads_per_worker})"
        state = "closed" if self._closed else ("connected" if self.client is not None else "connecting")
        return f"<DaskExecutor {where} {state} in_flight={len(self._jobs)} done={self.completed}>"

    # --- connection and monitoring ---------------------------------------------------------

    def start(self) -> None:
        """Start connecting (or starting the LocalCluster) in the background; idempotent.

        The first ``submit`` calls it too; the first task then waits for the connection.
        """
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            self._monitor.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Start if needed and block until connected; raise the connection error (call from a thread)."""
        self.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"no Dask cluster after {timeout} s")
        if self._error is not None:
            raise self._error

    def _connect_and_watch(self) -> None:
        try:
            self._connect()
        except BaseException as exc:
            self._error = exc
            if self._closed:
                return
            log.error("dask executor: cannot reach %s: %s", self.scheduler_address or "a LocalCluster", exc)
            return
        finally:
            self._ready.set()
        while not self._stop.wait(self.stats_interval):
            try:
                self.refresh_stats()
            except Exception as exc:  # the scheduler may be restarting; keep the last snapshot
                log.debug("dask executor: scheduler_info failed: %s", exc)

    def _connect(self) -> None:
        import distributed

        # distributed is partly untyped; the client and cluster are handled as Any.
        dist: Any = distributed
        client: Any
        if self.scheduler_address:
            client = dist.Client(self.scheduler_address, timeout=self.connect_timeout, set_as_default=False)
        else:
            cluster = dist.LocalCluster(n_workers=self.n_workers, threads_per_worker=self.threads_per_worker,
                                   processes=True, dashboard_address=":0", silence_logs=logging.WARNING)
            self.cluster = cluster
            try:
                client = dist.Client(cluster, set_as_default=False)
            except BaseException:
                cluster.close()
                raise
        if self._closed:  # closed while connecting
            client.close()
            if self.cluster is not None:
                self.cluster.close()
            raise ExecutorClosed("the executor was closed while connecting")
        self.client = client
        log.info("dask executor: connected to %s", client.scheduler.address)
        self.refresh_stats()

    def refresh_stats(self) -> None:
        """Fetch the cluster's worker stats now (blocking; the monitor thread calls it periodically)."""
        client = self.client
        if client is None:
            return
        info = client.scheduler_info()
        workers_info: dict[str, Any] = info.get("workers", {})
        if set(workers_info) - set(self._pids):
            try:
                self._pids.update(client.run(os.getpid, on_error="ignore"))
            except Exception as exc:
                log.debug("dask executor: cannot read worker pids: %s", exc)
        workers = []
        for address, worker in sorted(workers_info.items()):
            metrics = worker.get("metrics", {})
            memory = int(metrics.get("memory") or 0)
            peak = max(self._peaks.get(address, 0), memory)
            self._peaks[address] = peak
            workers.append({
                "address": address,
                "name": str(worker.get("name")),
                "pid": self._pids.get(address),
                "nthreads": int(worker.get("nthreads") or 0),
                "memory_bytes": memory,
                "peak_memory_bytes": peak,
                "managed_bytes": int(metrics.get("managed_bytes") or 0),
                "spilled_bytes": int((metrics.get("spilled_bytes") or {}).get("disk") or 0),
                "memory_limit_bytes": worker.get("memory_limit"),
                "executing": int((metrics.get("task_counts") or {}).get("executing") or 0),
            })
        threads = sum(w["nthreads"] for w in workers)
        with self._lock:
            self.peak_worker_memory_bytes = max([self.peak_worker_memory_bytes, *self._peaks.values()])
            self._snapshot = {"workers": workers, "n_workers": len(workers), "total_threads": threads,
                              "updated_at": time.time()}
            if self._fixed_max_workers is None and threads:
                self.max_workers = threads

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> pid, fetched now (blocking; for operators and tests)."""
        self.wait_ready(self.connect_timeout)
        pids: dict[str, int] = self.client.run(os.getpid, on_error="ignore")
        self._pids.update(pids)
        return dict(pids)

    # --- the Executor interface ----------------------------------------------------------

    def submit(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        loop = asyncio.get_running_loop()
        name = getattr(fn, "__name__", "task")
        job = _Job(fn, args, loop.create_future(), loop, key=f"{name}-{uuid.uuid4().hex}")
        with self._lock:
            if self._closed:
                raise ExecutorClosed("the executor is closed")
            self._jobs.add(job)
            self.submitted += 1
        self.start()
        job.waiter.add_done_callback(lambda _w: self._on_waiter_done(job))
        self._pool.submit(self._dispatch, job)
        return job.waiter

    def _dispatch(self, job: _Job) -> None:
        """Pool thread: wait for the cluster, submit the task, arrange for its result."""
        try:
            self.wait_ready(self.connect_timeout)
            if self._closed:
                raise ExecutorClosed("the executor is closed")
            args = self.plane.outbound(job.args)
            future = self.client.submit(call_with_refs, job.fn, args, None, self.preload, key=job.key, pure=False)
        except BaseException as exc:
            self._settle(job, error=exc)
            return
        with job.lock:
            job.future = future
            cancelled = job.cancelled
        if cancelled:
            self._cancel_future(future)
            return
        future.add_done_callback(lambda f: self._pool.submit(self._fetch, job, f))

    def _fetch(self, job: _Job, future: Any) -> None:
        """Pool thread: the task finished (or failed, or was cancelled); hand the outcome to the loop."""
        if job.cancelled:
            return
        try:
            value = self.plane.inbound(future.result())
        except BaseException as exc:
            self._settle(job, error=exc)
            return
        self._settle(job, value=value)

    def _settle(self, job: _Job, *, value: Any = None, error: BaseException | None = None) -> None:
        def apply() -> None:
            if job.waiter.done():
                return
            if error is None:
                job.waiter.set_result(value)
            elif isinstance(error, asyncio.CancelledError | FutureCancelled):
                job.waiter.cancel()
            else:
                job.waiter.set_exception(error)

        try:
            job.loop.call_soon_threadsafe(apply)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            self._forget(job)

    def _on_waiter_done(self, job: _Job) -> None:
        """Loop thread: count the outcome; a cancelled waiter cancels its Dask future."""
        waiter = job.waiter
        if waiter.cancelled():
            with job.lock:
                job.cancelled = True
                future = job.future
            if future is not None:
                try:
                    self._pool.submit(self._cancel_future, future)
                except RuntimeError:  # the pool is shut down; close() cancels what is left
                    pass
            with self._lock:
                self.cancelled += 1
        elif waiter.exception() is not None:
            with self._lock:
                self.failed += 1
        else:
            with self._lock:
                self.completed += 1
        self._forget(job)

    def _forget(self, job: _Job) -> None:
        with self._lock:
            self._jobs.discard(job)

    def _cancel_future(self, future: Any) -> None:
        client = self.client
        if client is None:
            return
        try:
            client.cancel([future], reason="cancelled by tradingd")
        except Exception as exc:
            log.debug("dask executor: cancelling %s failed: %s", getattr(future, "key", future), exc)

    def close(self, *, wait: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            jobs = list(self._jobs)
            started = self._started
        self._stop.set()
        if not started:
            return
        for job in jobs:
            with job.lock:
                job.cancelled = True
            self._settle(job, error=asyncio.CancelledError())
        self._pool.shutdown(wait=False, cancel_futures=True)
        futures = [job.future for job in jobs if job.future is not None]
        # Cluster shutdown takes a second or two; a non-daemon thread finishes it even after the loop stops.
        self._closer = threading.Thread(target=self._shutdown, args=(futures,), name="tradingd-dask-close")
        self._closer.start()
        if wait:
            self._closer.join(_CLOSE_TIMEOUT + self.connect_timeout)

    def _shutdown(self, futures: list[Any]) -> None:
        self._ready.wait(self.connect_timeout)  # a connect in progress finishes (and sees the closed flag)
        client, cluster = self.client, self.cluster
        try:
            if client is not None:
                if futures:
                    client.cancel(futures, reason="tradingd executor closed")
                client.close(timeout=_CLOSE_TIMEOUT)
            if cluster is not None:
                cluster.close(timeout=_CLOSE_TIMEOUT)
        except Exception:
            log.exception("dask executor: closing the client/cluster failed")
        log.debug("dask executor closed (%d tasks completed)", self.completed)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        with self._lock:
            snapshot = dict(self._snapshot)
            counts = {
                "active": len(self._jobs),
                "queued": 0,  # Dask queues on the scheduler; "active" counts every task in flight
                "submitted": self.submitted,
                "completed": self.completed,
                "failed": self.failed,
                "cancelled": self.cancelled,
                "peak_worker_memory_bytes": self.peak_worker_memory_bytes,
            }
        client = self.client
        return {
            "kind": self.kind,
            "scheduler_address": client.scheduler.address if client is not None else self.scheduler_address,
            "local_cluster": self.scheduler_address is None,
            "connected": client is not None and self._error is None,
            "error": f"{type(self._error).__name__}: {self._error}" if self._error is not None else None,
            "max_workers": self.max_workers,
            **counts,
            **snapshot,
            "workers_memory_bytes": sum(w["memory_bytes"] for w in snapshot["workers"]),
            "closed": self._closed,
        }


def create_dask_executor(config: ExecutorConfig) -> DaskExecutor:
    """The executor for ``executor.kind: dask``."""
    dask = config.dask
    return DaskExecutor(scheduler_address=dask.scheduler_address, n_workers=dask.n_workers,
                        threads_per_worker=dask.threads_per_worker, max_workers=config.max_workers)
