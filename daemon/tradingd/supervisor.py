"""The daemon's lifecycle: ordered start, owned background tasks, ordered stop.

``main(config, stop=...)`` is the coroutine both the CLI and the tests drive;
the CLI adds signal handlers that only set ``stop``. Every background task is
created through :meth:`Supervisor.spawn` and is cancelled and awaited on stop.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import gc
import logging
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from tradingd import __version__
from tradingd.api import build_app
from tradingd.auth import resolve_api_token
from tradingd.config import Config
from tradingd.health import LoopLagMeter
from tradingd.memory.manager import MemoryManager
from tradingd.memory.monitor import Monitor, discover_limit
from tradingd.notify import Notifier, run_watchdog, status_line
from tradingd.stats import StatsBoard
from tradingd.storage.outcomes import JOURNAL_FILE, OutcomeJournal
from tradingd.workflows.journal import journal_sink
from tradingd.workflows.service import WorkflowService

__all__ = ["Lifecycle", "StateDirLocked", "Supervisor", "main"]

log = logging.getLogger(__name__)


class Lifecycle(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class StateDirLocked(Exception):
    """Another daemon already owns the state dir."""


class StateDirLock:
    """An exclusive ``flock`` on ``<state_dir>/tradingd.lock`` holding our pid.

    The kernel drops the lock when the process dies, so a crash never leaves a
    stale lock; a clean stop also removes the file.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "tradingd.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirLocked(
                f"state dir {self.path.parent} is in use by another tradingd (pid {holder}); "
                "stop it or choose another paths.state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock so no other daemon can grab the old inode.
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None


class Supervisor:
    """Owns every long-lived piece of the daemon; an async context manager."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = Lifecycle.STARTING
        self.started_at = time.time()
        self.state_dir = config.state_dir
        self.results_dir = config.results_dir
        self.stats = StatsBoard()
        self.lag = LoopLagMeter()
        self.monitor = Monitor(
            discover_limit(config.memory.limit_mb),
            thresholds=(
                config.memory.thresholds.gc,
                config.memory.thresholds.pressure,
                config.memory.thresholds.critical,
            ),
            hysteresis=config.memory.hysteresis,
            history_size=config.memory.history_size,
        )
        self.memory = MemoryManager(config, self.monitor)
        self.api_token: str | None = None
        self.addresses: list[tuple[str, int]] = []
        self.stop_event = asyncio.Event()
        self.notifier = Notifier.from_environ()
        self._lock = StateDirLock(self.state_dir)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats.register("daemon", self._daemon_stats)
        self.stats.register("memory", self._memory_stats)
        self.stats.register("loop", self._loop_stats)
        self.stats.register("gc", _gc_stats)
        self.memory.register_stats(self.stats)
        self.outcomes: OutcomeJournal | None = None
        # Loads the startup workflow specs now, so a bad one fails before the state dir is locked.
        self.workflows = WorkflowService(config, memory=self.memory)
        self.stats.register("runs", self.workflows.stats)
        self.stats.register("outcomes", self._outcome_stats)

    def __repr__(self) -> str:
        return f"<Supervisor {self.state} pid={os.getpid()} tasks={len(self._tasks)} {self.monitor!r}>"

    # --- public state --------------------------------------------------------

    @property
    def port(self) -> int:
        """The first bound port (useful with ``http.port: 0``)."""
        return self.addresses[0][1]

    def healthy(self) -> bool:
        return self.lag.healthy(self.config.http.loop_lag_threshold)

    def readiness(self) -> tuple[bool, str]:
        """Whether we accept work, and why not."""
        if self.state is not Lifecycle.RUNNING:
            return False, self.state.value
        if self.memory.admission.paused:
            return False, f"admission paused: {self.memory.admission.reason}"
        return True, "ready"

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start an owned background task; it is cancelled and awaited on stop."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task %s failed", task.get_name(), exc_info=exc)

    # --- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Lock the state dir, start HTTP and background tasks, then become ready."""
        self._lock.acquire()
        try:
            self.results_dir.mkdir(parents=True, exist_ok=True)
            self.api_token = resolve_api_token(self.config, self.state_dir)
            await asyncio.to_thread(self.memory.load_persisted)
            if self.config.outcomes.enabled:
                self.outcomes = await asyncio.to_thread(
                    OutcomeJournal, self.state_dir / JOURNAL_FILE, max_outcomes=self.config.outcomes.max_outcomes
                )
                self.workflows.services.on_trades = journal_sink(self.outcomes)
            self.monitor.sample()
            self.stats.refresh()
            await self._start_http()
            self.lag.reset()
            self.spawn(self.lag.run(self.stop_event), name="loop-lag")
            self.spawn(self._monitor_loop(), name="monitor")
            self.spawn(self.memory.run(self.stop_event), name="cleanup")
        except BaseException:
            await self.shutdown()
            raise
        self.state = Lifecycle.RUNNING
        self.stats.refresh()
        # READY=1 only now: HTTP listens and state is loaded. The watchdog starts after it so
        # systemd sees READY first; it pings from this loop, only while the loop is healthy.
        self.notifier.ready(status_line(self.stats.snapshot))
        self.spawn(
            run_watchdog(
                self.notifier,
                stop=self.stop_event,
                healthy=self.healthy,
                status=lambda: status_line(self.stats.snapshot),
            ),
            name="sd-watchdog",
        )
        # Work starts only once we are ready: resumed runs first, then startup workflows.
        self.workflows.start()
        log.info(
            "tradingd %s ready on %s (state %s, memory limit %.0f MB from %s)",
            __version__,
            ", ".join(f"http://{host}:{port}" for host, port in self.addresses),
            self.state_dir,
            self.monitor.limit.bytes / 2**20,
            self.monitor.limit.source,
        )

    async def _start_http(self) -> None:
        app = build_app(self)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.config.http.shutdown_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
        await site.start()
        self.addresses = [(str(address[0]), int(address[1])) for address in self._runner.addresses]

    async def shutdown(self) -> None:
        """Stop in order, each step bounded; idempotent."""
        if self.state in (Lifecycle.STOPPING, Lifecycle.STOPPED):
            return
        self.state = Lifecycle.STOPPING
        self.notifier.stopping()
        log.info("stopping")
        self.stop_event.set()
        # 1. Runs: no new containers; in-flight ones get graceful_timeout, the rest are cancelled
        #    (their teardown still writes a result, with status cancelled).
        await self.workflows.close(self.config.graceful_timeout)
        # 2. Background tasks got the stop event; give them a moment, then cancel.
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.graceful_timeout)
            for task in pending:
                task.cancel("tradingd is stopping")
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        # 3. Persist caches once nothing fills them any more (a no-op if they were never loaded).
        try:
            await asyncio.wait_for(asyncio.to_thread(self.memory.persist), self.config.graceful_timeout + 2.0)
        except TimeoutError:
            log.warning("persisting caches did not finish within its timeout")
        # 4. HTTP last, so /ready answers 503 while we drain.
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner.cleanup(), self.config.http.shutdown_timeout + 1.0)
            except TimeoutError:
                log.warning("HTTP server did not close within its timeout")
            self._runner = None
        # 5. Files: the journal, then the lock.
        if self.outcomes is not None:
            self.outcomes.close()
        self._lock.release()
        self.notifier.close()
        self.state = Lifecycle.STOPPED
        log.info("stopped")

    async def _monitor_loop(self) -> None:
        interval = self.config.memory.monitor_interval
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), interval)
            except TimeoutError:
                pass
            try:
                self.monitor.sample()
                self.stats.refresh()
            except Exception:
                log.exception("memory sampling failed")

    # --- stats sections ------------------------------------------------------

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

    def _memory_stats(self) -> dict[str, Any]:
        latest = self.monitor.latest
        history = list(self.monitor.history)[-300:]
        return {
            "limit_bytes": self.monitor.limit.bytes,
            "limit_source": self.monitor.limit.source,
            "limit_candidates": self.monitor.limit.candidates,
            "rss_bytes": latest.rss_bytes if latest else None,
            "anon_rss_bytes": latest.anon_rss_bytes if latest else None,
            "cgroup_bytes": latest.cgroup_bytes if latest else None,
            "used_bytes": latest.used_bytes if latest else None,
            "level": self.monitor.level.label,
            "marks_bytes": self.monitor.marks_bytes(),
            "history": {
                "time": [round(s.time, 3) for s in history],
                "used_bytes": [s.used_bytes for s in history],
                "rss_bytes": [s.rss_bytes for s in history],
            },
        }

    def _outcome_stats(self) -> dict[str, Any]:
        journal = self.outcomes
        return {
            "enabled": journal is not None,
            "outcomes": journal.count() if journal is not None else 0,
            "max_outcomes": self.config.outcomes.max_outcomes,
        }

    def _loop_stats(self) -> dict[str, Any]:
        return {
            "lag_seconds": round(self.lag.current_lag(), 6),
            "max_lag_seconds": round(self.lag.max_lag, 6),
            "lag_threshold_seconds": self.config.http.loop_lag_threshold,
            "healthy": self.healthy(),
        }


def _gc_stats() -> dict[str, Any]:
    generations = gc.get_stats()
    return {
        "counts": list(gc.get_count()),
        "collections": [g["collections"] for g in generations],
        "collected": [g["collected"] for g in generations],
    }


async def main(config: Config, *, stop: asyncio.Event | None = None, handle_signals: bool = False) -> int:
    """Run the daemon until ``stop`` is set (or SIGTERM/SIGINT with ``handle_signals``)."""
    async with Supervisor(config) as supervisor:
        stop_event = stop or supervisor.stop_event
        if handle_signals:
            _install_signal_handlers(stop_event)
        waiters = {asyncio.ensure_future(stop_event.wait()), asyncio.ensure_future(supervisor.stop_event.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    return 0


def _install_signal_handlers(stop: asyncio.Event) -> None:
    """First SIGTERM/SIGINT asks for a graceful stop; a second one forces exit."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            log.info("received %s; stopping gracefully (send again to force)", signal.Signals(signum).name)
            stop.set()
            return
        log.warning("received %s again; forcing exit", signal.Signals(signum).name)
        logging.shutdown()
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
