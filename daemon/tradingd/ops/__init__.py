"""What an operator watches beside memory: CPU, throughput, hours of history, recent warnings.

:class:`OperatorStats` registers the ``cpu``, ``throughput``, ``history`` and
``log`` sections on the stats board (``disk`` is the workflow service's, with
retention). Each is refreshed with
the board (on the monitor interval), so a request only reads the snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from tradingd.memory.monitor import Monitor
from tradingd.ops.history import DownsampledHistory
from tradingd.ops.host import CpuMeter
from tradingd.ops.logtail import LogTail
from tradingd.ops.throughput import ThroughputMeter
from tradingd.stats import StatsBoard
from tradingd.workflows.workflow_run import WorkflowRun

__all__ = ["HISTORY_RESOLUTION", "HISTORY_SPAN", "OperatorStats"]

HISTORY_RESOLUTION = 30.0  # seconds per bucket of the long history
HISTORY_SPAN = 6 * 3600.0  # 720 buckets: about 40 kB in /stats
HISTORY_SERIES = ("used_bytes", "rss_bytes", "cpu_percent", "containers_per_second")


class OperatorStats:
    """The operator's sections of ``/stats``; :meth:`close` detaches the log tail."""

    def __init__(self, monitor: Monitor, runs: Callable[[], Iterable[WorkflowRun]]) -> None:
        self.monitor = monitor
        self.cpu = CpuMeter()
        self.throughput = ThroughputMeter(runs)
        self.history = DownsampledHistory(HISTORY_SERIES, peak=frozenset({"used_bytes", "rss_bytes"}),
                                          resolution=HISTORY_RESOLUTION, span=HISTORY_SPAN)
        self.log = LogTail()
        self._cpu_section: dict[str, Any] = {}
        self._throughput_section: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<OperatorStats {self.history!r} {self.throughput!r} {self.log!r}>"

    def register(self, board: StatsBoard) -> None:
        """Add the sections to ``board`` and start keeping the log tail."""
        self.log.attach()
        board.register("cpu", self._cpu)
        board.register("throughput", self._throughput)
        board.register("history", self._history)  # after cpu and throughput: it records their latest
        board.register("log", self.log.section)

    def close(self) -> None:
        self.log.detach()

    def _cpu(self) -> dict[str, Any]:
        self._cpu_section = self.cpu.section()
        return self._cpu_section

    def _throughput(self) -> dict[str, Any]:
        self._throughput_section = self.throughput.section()
        return self._throughput_section

    def _history(self) -> dict[str, Any]:
        latest = self.monitor.latest
        self.history.add(latest.time if latest else time.time(), {
            "used_bytes": latest.used_bytes if latest else None,
            "rss_bytes": latest.rss_bytes if latest else None,
            "cpu_percent": self._cpu_section.get("process_percent"),
            "containers_per_second": self._throughput_section.get("containers_per_second"),
        })
        return self.history.as_dict()
