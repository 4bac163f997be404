"""CPU and disk figures for the stats board (psutil and ``shutil.disk_usage``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

__all__ = ["CpuMeter", "disk_section"]


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


def disk_section(paths: Mapping[str, Path]) -> dict[str, Any]:
    """Total, used and free bytes of the filesystem holding each named path (one ``statvfs`` each)."""
    out: dict[str, Any] = {}
    for name, path in paths.items():
        try:
            usage = shutil.disk_usage(path)
        except OSError as exc:
            out[name] = {"path": str(path), "error": f"{type(exc).__name__}: {exc.strerror or exc}"}
            continue
        free_fraction = round(usage.free / usage.total, 4) if usage.total else None
        out[name] = {"path": str(path), "total_bytes": usage.total, "used_bytes": usage.used,
                     "free_bytes": usage.free, "free_fraction": free_fraction}
    return out
