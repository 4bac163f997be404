"""How far a run is: containers done of total, and an ETA.

The ETA is weighted by work units (bars x combinations) because a training
container sweeping 100 combinations takes far longer than a testing container
with one; containers skipped on resume shrink the work left without counting
as speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Counters the sequencer updates and ``GET /runs/{id}`` reads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.total = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.skipped = 0  # completed in an earlier attempt (resume) or nothing to test
        self.running = 0
        self.units_total = 0
        self.units_done = 0
        self.units_skipped = 0
        self.search: dict[str, Any] | None = None  # the running search's status (spec.search)
        self._started: float | None = None
        self._active_seconds = 0.0

    def __repr__(self) -> str:
        return f"<Progress {self.done}/{self.total} running={self.running}>"

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.cancelled + self.skipped

    def plan(self, containers: int, units: int) -> None:
        """Add planned work (phases are planned before they run)."""
        self.total += containers
        self.units_total += units

    def resume_timer(self) -> None:
        if self._started is None:
            self._started = self._clock()

    def pause_timer(self) -> None:
        if self._started is not None:
            self._active_seconds += self._clock() - self._started
            self._started = None

    def skip(self, units: int, count: int = 1) -> None:
        self.skipped += count
        self.units_skipped += units

    def finish(self, status: str, units: int) -> None:
        if status == "completed":
            self.completed += 1
        elif status == "failed":
            self.failed += 1
        elif status == "cancelled":
            self.cancelled += 1
        self.units_done += units

    def elapsed(self) -> float:
        running = self._clock() - self._started if self._started is not None else 0.0
        return self._active_seconds + running

    def eta_seconds(self) -> float | None:
        """Seconds left at the speed so far; ``None`` until something has been computed."""
        left = self.units_total - self.units_done - self.units_skipped
        if left <= 0:
            return 0.0 if self.total and self.done >= self.total else None
        if self.units_done <= 0:
            return None
        rate = self.units_done / max(self.elapsed(), 1e-6)
        return round(left / rate, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "skipped": self.skipped,
            "running": self.running,
            "percent": round(100.0 * self.done / self.total, 1) if self.total else 0.0,
            "elapsed_seconds": round(self.elapsed(), 3),
            "eta_seconds": self.eta_seconds(),
            **({"search": self.search} if self.search is not None else {}),
        }
