"""The daemon's lifecycle: the one composition root.

``Supervisor(config)`` only records what it will build; :meth:`Supervisor.start`
acquires everything in the order of DESIGN §3 — validate (startup specs) →
lock the state dir → memory (limit, caches) → outcome journal, executor and
run queue → HTTP → background tasks → ``READY=1`` → resumed and startup runs —
and :meth:`Supervisor.shutdown` releases it in an ordered sequence of nested
``finally`` steps, each under its own timeout. ``tradingd run`` drives
:func:`main`; ``tradingd run-workflow`` drives the same supervisor with
``serve=False`` (no HTTP, no sd_notify, no startup or resumed runs) and submits
its one run itself. Every background task belongs to ``Supervisor.tasks``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from tradingd import __version__
from tradingd.api import build_app
from tradingd.auth import resolve_api_token
from tradingd.config import Config
from tradingd.health import LoopLagMeter
from tradingd.listen import bind_listeners
from tradingd.memory.manager import MemoryManager
from tradingd.memory.monitor import Monitor, PressureLevel, discover_limit
from tradingd.notify import Notifier, run_watchdog, status_line
from tradingd.ops import OperatorStats
from tradingd.periodic import poll
from tradingd.stats import StatsBoard, gc_stats
from tradingd.storage.outcomes import OutcomeJournal
from tradingd.storage.statedir import StateDirLock, StateDirLocked, secure_state_files
from tradingd.tasks import Step, TaskScheduler, run_steps, wait_any
from tradingd.workflows.data_roots import allowed_data_roots
from tradingd.workflows.recovery import open_journal, recover_files
from tradingd.workflows.runs import RunQueue
from tradingd.workflows.service import WRITES_FLUSH_TIMEOUT, WorkflowService, load_startup_specs
from tradingd.workflows.spec import WorkflowSpec

__all__ = ["Lifecycle", "StateDirLocked", "Supervisor", "main"]

log = logging.getLogger(__name__)

EXECUTOR_CLOSE_TIMEOUT = 5.0  # workers still busy after this are left to finish on their own
RUN_CANCEL_TIMEOUT = 5.0  # cancelled runs' teardown writes are quick; this guards against the unexpected

T = TypeVar("T")


class Lifecycle(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Supervisor:
    """Owns every long-lived piece of the daemon; an async context manager."""

    def __init__(self, config: Config, *, serve: bool = True, force: asyncio.Event | None = None) -> None:
        self.config = config
        self.serve = serve
        self.state = Lifecycle.STARTING
        self.started_at = time.time()
        self.state_dir = config.state_dir
        self.results_dir = config.results_dir
        self.stats = StatsBoard()
        self.lag = LoopLagMeter()
        self.tasks = TaskScheduler("supervisor")
        self.stop_event = asyncio.Event()
        self.force_event = force or asyncio.Event()  # the second signal: skip the remaining waits
        self.notifier = Notifier.from_environ() if serve else Notifier({})
        self.api_token: str | None = None
        self.addresses: list[tuple[str, int]] = []
        self.outcomes: OutcomeJournal | None = None
        self.startup_specs: list[WorkflowSpec] = []
        self._lock = StateDirLock(self.state_dir)
        self._monitor: Monitor | None = None
        self._memory: MemoryManager | None = None
        self._workflows: WorkflowService | None = None
        self._runner: web.AppRunner | None = None
        self._listeners: list[socket.socket] = []
        self._ops: OperatorStats | None = None
        self._outcome_count = 0
        self._stopped: asyncio.Future[None] | None = None
        self.stats.register("daemon", self._daemon_stats)
        self.stats.register("loop", lambda: self.lag.stats(self.config.http.loop_lag_threshold))
        self.stats.register("gc", gc_stats)

    def __repr__(self) -> str:
        return f"<Supervisor {self.state} pid={os.getpid()} {self.tasks!r} {self._monitor!r}>"

    # --- what start() built ----------------------------------------------------------

    @property
    def monitor(self) -> Monitor:
        return _built(self._monitor, "monitor")

    @property
    def memory(self) -> MemoryManager:
        return _built(self._memory, "memory manager")

    @property
    def workflows(self) -> WorkflowService:
        return _built(self._workflows, "workflow service")

    @property
    def port(self) -> int:
        """The first bound port (useful with ``http.port: 0``)."""
        return self.addresses[0][1]

    # --- what the HTTP API needs (api_base.Daemon) ------------------------------------

    @property
    def runs(self) -> RunQueue:
        return self.workflows.queue

    def healthy(self) -> bool:
        return self.lag.healthy(self.config.http.loop_lag_threshold)

    def loop_lag(self) -> float:
        return self.lag.current_lag()

    def readiness(self) -> tuple[bool, str]:
        """Whether we accept work, and why not."""
        if self.state is not Lifecycle.RUNNING:
            return False, self.state.value
        if self.memory.admission.paused:
            return False, f"admission paused: {self.memory.admission.reason}"
        return True, "ready"

    def stats_snapshot(self) -> Mapping[str, Any]:
        return self.stats.snapshot

    async def cleanup(self, level: PressureLevel) -> dict[str, Any]:
        """Run the cleanup ladder now (off the loop: gc and malloc_trim take a while on a large heap)."""
        report = await asyncio.to_thread(self.memory.run_ladder, level)
        self.monitor.sample()
        self.stats.refresh()
        return report

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start an owned background task; it is drained on stop."""
        return self.tasks.spawn(coro, name=name)

    # --- start -----------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Acquire everything in lifecycle order and become ready; on failure, release what was acquired."""
        try:
            await self._start()
        except BaseException:
            await self.shutdown()
            raise

    async def _start(self) -> None:
        config = self.config
        # 1. Validate: a bad startup spec is a config error, found before any state exists; so is
        #    an address we cannot bind (bound now, served from step 5).
        if self.serve:
            self.startup_specs = await asyncio.to_thread(load_startup_specs, config)
            self._listeners = await bind_listeners(config.http, source=config.source)
        # 2. One daemon per state dir.
        self._lock.acquire()
        # 3. Memory: the limit (cgroup files), the monitor, caches and models, the persisted caches.
        limit = await asyncio.to_thread(discover_limit, config.memory.limit_mb)
        thresholds = config.memory.thresholds
        self._monitor = Monitor(limit, thresholds=(thresholds.gc, thresholds.pressure, thresholds.critical),
                                hysteresis=config.memory.hysteresis, history_size=config.memory.history_size)
        self._memory = MemoryManager(config, self._monitor)
        self.stats.register("memory", self._monitor.stats)
        self._memory.register_stats(self.stats)
        await asyncio.to_thread(self._memory.load_persisted)
        # 4. Results: recovery (temp files; the journal checked, rebuilt if damaged), the journal, the run queue.
        await asyncio.to_thread(self.results_dir.mkdir, parents=True, exist_ok=True)
        state, results = self.state_dir, self.results_dir
        found = await asyncio.to_thread(recover_files, state, results)
        if config.outcomes.enabled:
            self.outcomes = await asyncio.to_thread(open_journal, state, results, config.outcomes.max_outcomes)
            self._outcome_count = await asyncio.to_thread(self.outcomes.count)
            await asyncio.to_thread(secure_state_files, self.state_dir)  # SQLite created it with the umask's mode
        self.stats.register("outcomes", self._outcome_stats)
        self._workflows = WorkflowService(config, memory=self._memory, journal=self.outcomes,
                                          journal_markers=found.journal_markers)
        self._workflows.open()
        self.stats.register("runs", self._workflows.stats)
        self._ops = OperatorStats(self._monitor, self.runs.list)
        self._ops.register(self.stats)
        # Before any run: what the built daemon holds is the baseline the work budget leaves out.
        await asyncio.to_thread(self._memory.measure_baseline)
        self.stats.register("disk", self._workflows.disk_stats)
        self._monitor.sample()
        self.stats.refresh()
        # 5. HTTP.
        if self.serve:
            self.api_token = await asyncio.to_thread(resolve_api_token, config, self.state_dir)
            await self._start_http()
        # 6. Background tasks.
        self.lag.reset()
        self.tasks.spawn(self.lag.run(self.stop_event), name="loop-lag")
        self.tasks.spawn(self._monitor_loop(), name="monitor")
        self.tasks.spawn(self._memory.run(self.stop_event), name="cleanup")
        self.tasks.spawn(self._workflows.retry_writes(self.stop_event), name="retry-writes")
        # 7. READY=1 only now: HTTP listens and state is loaded. The watchdog starts after it so
        #    systemd sees READY first; it pings from this loop, only while the loop is healthy.
        self.state = Lifecycle.RUNNING
        self.stats.refresh()
        self.notifier.ready(status_line(self.stats.snapshot))
        self.tasks.spawn(
            run_watchdog(self.notifier, stop=self.stop_event, healthy=self.healthy,
                         status=lambda: status_line(self.stats.snapshot)),
            name="sd-watchdog",
        )
        # 8. Work: resumed runs first, then the startup workflows.
        where = ", ".join(f"http://{host}:{port}" for host, port in self.addresses) or "no HTTP"
        if self.serve:
            await self._workflows.start(self.startup_specs)
            self.stats.refresh()  # the runs found on disk are in the first scrape, not one interval later
            self.tasks.spawn(self._workflows.keep_bounded(self.stop_event), name="retention")  # and free disk
        log.info("tradingd %s ready on %s (state %s, memory limit %.0f MB from %s)", __version__, where,
                 self.state_dir, limit.bytes / 2**20, limit.source)

    async def _start_http(self) -> None:
        app = build_app(self, max_body_bytes=self.config.http.max_body_bytes,
                        data_roots=allowed_data_roots(self.config))
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.config.http.shutdown_timeout,
                                     keepalive_timeout=self.config.http.header_timeout)
        await self._runner.setup()
        for sock in self._listeners:
            await web.SockSite(self._runner, sock).start()
        self.addresses = [(str(address[0]), int(address[1])) for address in self._runner.addresses]

    # --- stop ------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop in order, each step bounded. Idempotent: every caller awaits the same completion.

        Each step runs in the ``finally`` of the one before, so an exception or
        a cancellation in any step still releases the lock and closes the
        files. With ``force_event`` set (a second signal) the waits are skipped.
        """
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            await self._stop()
        finally:
            self._stopped.set_result(None)

    async def _stop(self) -> None:
        self.state = Lifecycle.STOPPING
        self.stop_event.set()
        started = self._lock.held  # else start() failed before it took anything: nothing to say
        if started:
            log.info("stopping")
        self.notifier.stopping()
        graceful = self.config.graceful_timeout
        steps: list[Step] = [
            # 1. Runs: no new ones; in-flight containers get graceful_timeout, the rest are
            #    cancelled (their teardown still writes a result, with status cancelled).
            ("runs", self._drain_runs, graceful + RUN_CANCEL_TIMEOUT + WRITES_FLUSH_TIMEOUT + 1.0),
            # 2. Background tasks saw the stop event; the drain cancels any that did not end.
            ("background tasks", self._drain_tasks, graceful + 3.0),
            # 3. Caches, once nothing fills them any more (a no-op if they were never loaded).
            ("caches", self._persist_caches, graceful + 2.0),
            # 4. The executor, once no container uses it.
            ("executor", self._close_executor, EXECUTOR_CLOSE_TIMEOUT + 1.0),
            # 5. HTTP last, so /ready answers 503 while we drain.
            ("http", self._stop_http, self.config.http.shutdown_timeout + 1.0),
        ]
        # 6. Files (journal, lock, notify socket) after every step, whatever happened in them.
        try:
            await run_steps(steps, owner="stop")
        finally:
            try:
                self._close_files()
            finally:
                self.state = Lifecycle.STOPPED
        if started:
            log.info("stopped")

    async def _drain_runs(self) -> None:
        if self._workflows is not None:
            await self._workflows.drain(self.config.graceful_timeout, hurry=self.force_event)

    async def _drain_tasks(self) -> None:
        await self.tasks.close(self.config.graceful_timeout, hurry=self.force_event)

    async def _persist_caches(self) -> None:
        if self._memory is None:
            return
        if self.force_event.is_set():
            log.warning("forced stop: caches not persisted (they are rebuilt as they are used)")
            return
        await asyncio.to_thread(self._memory.persist)

    async def _close_executor(self) -> None:
        if self._workflows is not None:
            await self._workflows.close_executor(0.0 if self.force_event.is_set() else EXECUTOR_CLOSE_TIMEOUT)

    async def _stop_http(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        for sock in self._listeners:  # bound but never served when start() failed before HTTP
            sock.close()

    def _close_files(self) -> None:
        """The journal, the lock, the notify socket: each closed even if the one before fails."""
        try:
            if self._ops is not None:
                self._ops.close()  # detaches the log tail
            if self.outcomes is not None:
                _close("the outcome journal", self.outcomes.close)
        finally:
            try:
                _close("the state-dir lock", self._lock.release)
            finally:
                _close("the notify socket", self.notifier.close)

    # --- the monitor task ----------------------------------------------------------------

    async def _monitor_loop(self) -> None:
        async for _ in poll(self.stop_event, self.config.memory.monitor_interval):
            if self.outcomes is not None:
                try:
                    # SQLite, so off the loop; the stats section reads the cached figure.
                    self._outcome_count = await asyncio.to_thread(self.outcomes.count)
                except Exception:
                    log.exception("counting the outcome journal failed")
            try:
                self.monitor.sample()
                self.stats.refresh()
            except Exception:
                log.exception("memory sampling failed")

    # --- stats sections ------------------------------------------------------------------

    def _daemon_stats(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": self.state.value,
            "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "addresses": [f"{host}:{port}" for host, port in self.addresses],
            "state_dir": str(self.state_dir),
            "results_dir": str(self.results_dir),
        }

    def _outcome_stats(self) -> dict[str, Any]:
        return {
            "enabled": self.outcomes is not None,
            "outcomes": self._outcome_count,
            "max_outcomes": self.config.outcomes.max_outcomes,
            **(self._workflows.journal_stats() if self._workflows is not None else {}),
        }


def _close(what: str, close: Callable[[], None]) -> None:
    try:
        close()
    except Exception:
        log.exception("closing %s failed", what)


def _built(part: T | None, what: str) -> T:
    if part is None:
        raise RuntimeError(f"the supervisor's {what} exists once start() has run")
    return part


async def main(config: Config, *, stop: asyncio.Event | None = None, force: asyncio.Event | None = None) -> None:
    """Run the daemon until ``stop`` is set; ``force`` (a second signal) skips the stop's waits."""
    supervisor = Supervisor(config, force=force)
    async with supervisor:
        await wait_any(supervisor.stop_event, *([stop] if stop is not None else []))
