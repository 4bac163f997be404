"""Event-loop lag measurement: the basis of ``/health`` and the systemd watchdog.

A task sleeps for a fixed interval and records how late it wakes up. A blocked
loop shows up twice: as a large lag once it recovers, and, while it is still
blocked, as a growing gap since the last tick (which ``current_lag`` includes, so
a request served right after a stall still sees it).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from typing import Any

from tradingd.periodic import poll

__all__ = ["LoopLagMeter"]

log = logging.getLogger(__name__)


#: Upper bounds (seconds) of the cumulative lag histogram; the last bucket is everything above.
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopLagMeter:
    """Measures how late the event loop runs a periodic wake-up."""

    def __init__(self, *, interval: float = 0.05, window: int = 1200) -> None:
        # 20 wake-ups a second cost ~0.1 % of a core and give a percentile worth the name: a 20 s
        # run has 400 samples, so its p99 is not simply its largest one.
        self.interval = interval
        self.last_lag = 0.0
        self.max_lag_ever = 0.0
        self._recent: deque[float] = deque(maxlen=window)
        self._counts = [0] * (len(LAG_BUCKETS) + 1)  # since start: what benchmarks take percentiles from
        self._last_tick = time.monotonic()

    def __repr__(self) -> str:
        return f"<LoopLagMeter lag={self.current_lag() * 1000:.1f} ms max={self.max_lag * 1000:.1f} ms>"

    @property
    def max_lag(self) -> float:
        """Largest lag over the recent window (about one minute by default)."""
        return max(self._recent, default=0.0)

    def current_lag(self) -> float:
        """Lag as of now, counting a tick that is overdue."""
        overdue = time.monotonic() - self._last_tick - self.interval
        return max(self.last_lag, overdue, 0.0)

    def healthy(self, threshold: float) -> bool:
        return self.current_lag() <= threshold

    def stats(self, threshold: float) -> dict[str, Any]:
        """The ``loop`` stats section, judged against ``threshold`` seconds."""
        return {
            "lag_seconds": round(self.current_lag(), 6),
            "max_lag_seconds": round(self.max_lag, 6),
            "lag_threshold_seconds": threshold,
            "healthy": self.healthy(threshold),
            "max_lag_since_start_seconds": round(self.max_lag_ever, 6),
            "lag_histogram": {"le_seconds": [*LAG_BUCKETS, None], "counts": list(self._counts)},
        }

    def reset(self) -> None:
        """Start measuring from now (call right before scheduling :meth:`run`)."""
        self._last_tick = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set.

        Lag counts from the last :meth:`reset`, not from when this task first
        runs, so a loop blocked before the task got going still shows.
        """
        async for _ in poll(stop, self.interval):
            now = time.monotonic()
            lag = max(now - self._last_tick - self.interval, 0.0)
            self._last_tick = now
            self.last_lag = lag
            self._recent.append(lag)
            self.max_lag_ever = max(self.max_lag_ever, lag)
            self._counts[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
            if lag > 1.0:
                log.warning("event loop was blocked for %.2f s", lag)
