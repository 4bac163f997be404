"""Admission: the gate new containers pass before they start.

The cleanup ladder closes it under critical memory pressure (clearing caches
is pointless if new containers refill them at once) and the cleanup loop
reopens it once the level is below ``pressure``. Low free disk space closes it
too (``source="disk"``, the workflows' retention loop); it reopens only once
every source that closed it has released it. The ladder runs in a worker
thread, so pausing and resuming are thread-safe; containers wait on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

__all__ = ["Admission"]

log = logging.getLogger(__name__)


class Admission:
    """Whether new containers may start; paused under critical memory pressure.

    Thread-safe. Containers ``await admission.wait()`` before starting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._holds: dict[str, str] = {}  # source -> reason, in the order they closed the gate
        self.reason: str | None = None
        self.paused_since: float | None = None
        self.pauses = 0
        self.paused_seconds_total = 0.0

    def __repr__(self) -> str:
        state = f"paused ({self.reason})" if self.paused else "open"
        return f"<Admission {state} waiting={len(self._waiters)}>"

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def pause(self, reason: str, *, source: str = "memory") -> None:
        """Stop admitting new work on behalf of ``source`` (idempotent per source)."""
        with self._lock:
            if self._holds.get(source) == reason:
                return
            self._holds[source] = reason
            self.reason = "; ".join(self._holds.values())
            if not self._open.is_set():
                return
            self._open.clear()
            self.paused_since = time.time()
            self.pauses += 1
        log.warning("admission paused: %s", reason)

    def resume(self, *, source: str = "memory") -> None:
        """Release ``source``'s hold; once none is left, admit again and wake every waiter (idempotent)."""
        with self._lock:
            self._holds.pop(source, None)
            if self._holds:
                self.reason = "; ".join(self._holds.values())
                return
            if not self.paused:
                return
            self._open.set()
            if self.paused_since is not None:
                self.paused_seconds_total += time.time() - self.paused_since
            self.reason, self.paused_since = None, None
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that loop is closed; nobody is waiting any more
                pass
        log.info("admission resumed")

    def held_by(self, source: str) -> bool:
        """Whether ``source`` is one of the reasons admission is paused."""
        with self._lock:
            return source in self._holds

    async def wait(self) -> None:
        """Return at once when admitting, else when admission resumes."""
        with self._lock:
            if not self.paused:
                return
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        try:
            await future
        finally:
            with self._lock:
                self._waiters = [(lp, f) for lp, f in self._waiters if f is not future]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "paused": self.paused,
                "reason": self.reason,
                "paused_since": self.paused_since,
                "pauses": self.pauses,
                "paused_seconds_total": round(self.paused_seconds_total, 3),
                "waiting": len(self._waiters),
            }


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
