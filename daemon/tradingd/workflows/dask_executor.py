"""The ``dask`` executor: containers' compute as tasks on a Dask distributed cluster.

- ``executor.dask.scheduler_address`` set: an asynchronous
  ``distributed.Client`` connects to that (existing) scheduler. Unset: the
  executor starts a ``LocalCluster`` (``n_workers`` worker processes x
  ``threads_per_worker``) that it owns and closes with itself.
- Client and cluster run on the daemon's event loop (``asynchronous=True``):
  each ``submit(fn, *args)`` is one Dask task (``client.submit(...,
  pure=False)``, keyed ``<function>-<uuid>``) whose future the job awaits. The
  result comes back to the daemon, which writes the results tree itself —
  workers never need the results directory.
- Cancelling the awaiting task cancels the Dask future (``client.cancel``);
  closing the executor cancels every future still in flight.
- A worker lost mid-task: the scheduler reruns its tasks elsewhere
  (``distributed.scheduler.allowed-failures``, default 3), so the run
  completes; only a task that kills that many workers fails (``KilledWorker``).
- ``stats()`` is a snapshot refreshed every ``stats_interval`` seconds by a
  task on the loop from ``scheduler.identity()``: per-worker memory (RSS),
  managed bytes, memory limit, threads, pid, and the peaks seen. Unless
  configured, ``max_workers`` follows the cluster's thread count, changed
  only there, on the loop.

Market data already mapped from an mmap store travels as a
:class:`~tradingd.workflows.dataref.DataRef` (the store must be at the same path
on every worker — a shared filesystem); other data travels by value (a
batch's slice of bars, not the data set).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import CancelledError as FutureCancelled
from typing import Any, TypeVar

import distributed

from tradingd.config import ExecutorConfig
from tradingd.periodic import poll
from tradingd.workflows.dataref import DataPlane, call_with_refs
from tradingd.workflows.executor import Executor, ExecutorClosed, JobOutcome

__all__ = ["DaskExecutor", "create_dask_executor"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_CONNECT_TIMEOUT = 30.0

# distributed's client API is only partly annotated; the client, cluster and futures are handled as Any.
_dask: Any = distributed


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
        super().__init__(max_workers or n_workers * threads_per_worker)
        self.scheduler_address = scheduler_address
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self._follows_cluster = max_workers is None
        self.preload = tuple(preload)
        self.stats_interval = stats_interval
        self.connect_timeout = connect_timeout
        self.plane = DataPlane(None)
        self.client: Any = None
        self.cluster: Any = None
        self.error: BaseException | None = None
        self._connecting: asyncio.Task[Any] | None = None
        self._watching: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._in_flight: set[Any] = set()  # distributed futures, for close to cancel
        self._snapshot: dict[str, Any] = {"workers": [], "n_workers": 0, "total_threads": 0, "updated_at": None}
        self._peaks: dict[str, int] = {}
        self._pids: dict[str, int] = {}
        self.peak_worker_memory_bytes = 0

    def __repr__(self) -> str:
        where = self.scheduler_address or f"LocalCluster({self.n_workers}x{self.threads_per_worker})"
        state = "closed" if self.closed else ("connected" if self.client is not None else "not connected")
        return f"<DaskExecutor {where} {state} in_flight={len(self._in_flight)}>"

    # --- connection and monitoring ---------------------------------------------------------

    async def start(self) -> Any:
        """Connect (or start the LocalCluster) now; idempotent. Returns the client; raises the connection error.

        The first ``submit`` calls it too; its job waits for the connection.
        """
        if self._connecting is None:
            if self.closed:
                raise ExecutorClosed("the executor is closed")
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Any:
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.scheduler_address:
                    client = await _dask.Client(self.scheduler_address, asynchronous=True, set_as_default=False,
                                                timeout=self.connect_timeout)
                else:
                    self.cluster = await _dask.LocalCluster(
                        asynchronous=True, n_workers=self.n_workers, threads_per_worker=self.threads_per_worker,
                        processes=True, dashboard_address=":0", silence_logs=logging.WARNING)
                    client = await _dask.Client(self.cluster, asynchronous=True, set_as_default=False)
        except BaseException as exc:
            self.error = exc
            log.error("dask executor: cannot reach %s: %s", self.scheduler_address or "a LocalCluster", exc)
            if self.cluster is not None:
                await self.cluster.close()
            raise
        self.client = client
        log.info("dask executor: connected to %s", client.scheduler.address)
        await self.refresh_stats()
        self._watching = asyncio.ensure_future(self._watch())
        return client

    async def _watch(self) -> None:
        async for _ in poll(self._stop, self.stats_interval):
            try:
                await self.refresh_stats()
            except Exception as exc:  # the scheduler may be restarting; keep the last snapshot
                log.debug("dask executor: scheduler identity failed: %s", exc)

    async def refresh_stats(self) -> None:
        """Fetch the cluster's worker stats now (the monitoring task does it every ``stats_interval``)."""
        client = self.client
        if client is None:
            return
        info = await client.scheduler.identity(n_workers=-1)
        workers_info: dict[str, Any] = info.get("workers", {})
        if set(workers_info) - set(self._pids):
            try:
                self._pids.update(await client.run(os.getpid, on_error="ignore"))
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
        self.peak_worker_memory_bytes = max([self.peak_worker_memory_bytes, *self._peaks.values()])
        self._snapshot = {"workers": workers, "n_workers": len(workers), "total_threads": threads,
                          "updated_at": time.time()}
        if self._follows_cluster and threads:
            self.max_workers = threads

    # --- jobs -------------------------------------------------------------------------------

    def _dispatch(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Awaitable[T]:
        return self._compute(fn, args)

    async def _compute(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        outcome: JobOutcome = "failed"
        try:
            client = await self.start()
            if self.closed:
                raise ExecutorClosed("the executor is closed")
            key = f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}"
            future = client.submit(call_with_refs, fn, self.plane.outbound(args), None, self.preload, key=key,
                                   pure=False)
            value = await self._await_task(client, future)
            result: T = await asyncio.to_thread(self.plane.inbound, value)  # may map a store: off the loop
            outcome = "completed"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.jobs.settled(outcome)

    async def _await_task(self, client: Any, future: Any) -> Any:
        self._in_flight.add(future)
        self.jobs.started()
        try:
            return await future
        except asyncio.CancelledError:
            await client.cancel([future], reason="cancelled by tradingd")
            raise
        except FutureCancelled:  # cancelled on the cluster's side (close, or another client)
            if self.closed:
                raise ExecutorClosed("the executor closed while the task ran") from None
            raise
        finally:
            self.jobs.stopped()
            self._in_flight.discard(future)

    # --- closing ----------------------------------------------------------------------------

    async def _release(self, join_timeout: float) -> None:
        self._stop.set()
        connecting = self._connecting
        if connecting is None:
            return
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
        try:
            async with asyncio.timeout(join_timeout):
                client = await asyncio.shield(connecting)  # a connect in progress finishes first
                if self._in_flight:
                    await client.cancel(list(self._in_flight), reason="tradingd executor closed")
                await client.close()
                if self.cluster is not None:
                    await self.cluster.close()
        except TimeoutError:
            connecting.cancel()  # a LocalCluster still starting must not come up after close
            log.warning("dask executor: closing the client/cluster did not finish in %.1f s", join_timeout)
        except Exception as exc:  # the connection failed (already logged) or the scheduler went away
            log.debug("dask executor: close: %s: %s", type(exc).__name__, exc)
        log.debug("dask executor closed (%d tasks completed)", self.jobs.settled_by["completed"])

    def _details(self) -> dict[str, Any]:
        snapshot = self._snapshot
        client = self.client
        return {
            "scheduler_address": client.scheduler.address if client is not None else self.scheduler_address,
            "local_cluster": self.scheduler_address is None,
            "connected": client is not None and not self.closed,
            "error": f"{type(self.error).__name__}: {self.error}" if self.error is not None else None,
            **snapshot,
            "workers_memory_bytes": sum(w["memory_bytes"] for w in snapshot["workers"]),
            "peak_worker_memory_bytes": self.peak_worker_memory_bytes,
        }


def create_dask_executor(config: ExecutorConfig) -> DaskExecutor:
    """The executor for ``executor.kind: dask``."""
    dask = config.dask
    return DaskExecutor(scheduler_address=dask.scheduler_address, n_workers=dask.n_workers,
                        threads_per_worker=dask.threads_per_worker, max_workers=config.max_workers)
