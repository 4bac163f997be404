"""How much work the daemon gets through: containers and bar-combinations, as totals and rates.

The totals are counters for Prometheus: they only grow within a process. They
are folded from the runs' progress by positive deltas per run, so a run that
leaves the list (retention) or restarts its progress (a resume) never makes a
total go down. A run seen for the first time that has not computed in this
process (loaded from disk) counts from where it stands, not from zero.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from tradingd.workflows.workflow_run import WorkflowRun

__all__ = ["ThroughputMeter"]


class ThroughputMeter:
    """Counts containers finished and bar-combinations computed; rates over the last ``window`` seconds."""

    def __init__(self, runs: Callable[[], Iterable[WorkflowRun]], *, window: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._runs = runs
        self._clock = clock
        self.window = window
        self.containers_total = 0
        self.bar_combinations_total = 0
        self._seen: dict[str, tuple[int, int]] = {}
        self._samples: deque[tuple[float, int, int]] = deque()

    def __repr__(self) -> str:
        return f"<ThroughputMeter {self.containers_total} containers {self.bar_combinations_total} bar-combinations>"

    def sample(self) -> None:
        seen: dict[str, tuple[int, int]] = {}
        for run in self._runs():
            progress = run.progress
            now = (progress.completed + progress.failed + progress.cancelled, progress.units_done)
            before = self._seen.get(run.id)
            if before is None:
                # Progress restored from a manifest (elapsed 0) was computed by an earlier process.
                before = now if progress.elapsed() == 0 else (0, 0)
            self.containers_total += max(0, now[0] - before[0])
            self.bar_combinations_total += max(0, now[1] - before[1])
            seen[run.id] = now
        # Only the runs listed now: a run retention removed never comes back, and keeping
        # every id ever seen would grow with history (one entry per run, for weeks).
        self._seen = seen
        stamp = self._clock()
        self._samples.append((stamp, self.containers_total, self.bar_combinations_total))
        while len(self._samples) > 2 and stamp - self._samples[1][0] >= self.window:
            self._samples.popleft()

    @property
    def tracked_runs(self) -> int:
        """How many runs the meter remembers progress for (the runs listed at the last sample)."""
        return len(self._seen)

    def rates(self) -> tuple[float, float]:
        """Containers and bar-combinations per second over the window (0 until two samples exist)."""
        if len(self._samples) < 2:
            return 0.0, 0.0
        (t0, c0, u0), (t1, c1, u1) = self._samples[0], self._samples[-1]
        span = max(t1 - t0, 1e-6)
        return (c1 - c0) / span, (u1 - u0) / span

    def section(self) -> dict[str, Any]:
        self.sample()
        containers, units = self.rates()
        return {
            "containers_total": self.containers_total,
            "bar_combinations_total": self.bar_combinations_total,
            "containers_per_second": round(containers, 3),
            "bar_combinations_per_second": round(units, 1),
            "window_seconds": self.window,
        }
