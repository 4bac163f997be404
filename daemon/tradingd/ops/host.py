"""CPU figures for the stats board (psutil)."""

from __future__ import annotations

import os
from typing import Any

import psutil

__all__ = ["CpuMeter"]


class CpuMeter:
    """The daemon's CPU use since the previous reading (psutil's ``cpu_percent`` with ``interval=None``).

    100 % is one core busy; ``cores`` says how many there are. The first
    reading after construction is 0 by psutil's definition.
    """

    def __init__(self) -> None:
        self._process: psutil.Process | None = None  # opened at the first reading, not in __init__ (no I/O)
        self.last_percent: float | None = None

    def __repr__(self) -> str:
        return f"<CpuMeter {self.last_percent}%>"

    def section(self) -> dict[str, Any]:
        if self._process is None:
            self._process = psutil.Process(os.getpid())
        times = self._process.cpu_times()
        self.last_percent = round(self._process.cpu_percent(None), 1)
        return {
            "process_percent": self.last_percent,
            "system_percent": round(psutil.cpu_percent(None), 1),
            "cores": psutil.cpu_count() or 1,
            "process_seconds_total": round(times.user + times.system, 3),
        }
