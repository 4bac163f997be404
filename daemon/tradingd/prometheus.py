"""Prometheus exposition of the stats snapshot.

Each app gets its own registry with the standard process, gc and platform
collectors plus :class:`SnapshotCollector`, which translates the latest
snapshot (never live objects) into metric families with stable names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from tradingd.memory.metrics import memory_manager_families
from tradingd.stats import StatsBoard
from tradingd.workflows.metrics import runs_families

__all__ = ["FAMILIES", "SnapshotCollector", "build_registry"]

Snapshot = dict[str, Any]
FamilyBuilder = Callable[[Snapshot], Iterable[Metric]]


def _gauge(name: str, doc: str, value: float | int | None, labels: dict[str, str] | None = None) -> Iterator[Metric]:
    if value is None:
        return
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), float(value))
    yield family


def daemon_families(snap: Snapshot) -> Iterator[Metric]:
    daemon = snap.get("daemon", {})
    info = InfoMetricFamily("tradingd_build", "tradingd version")
    info.add_metric([], {"version": str(daemon.get("version", "unknown"))})
    yield info
    yield from _gauge("tradingd_uptime_seconds", "Seconds since the daemon started.", daemon.get("uptime_seconds"))
    ready = GaugeMetricFamily("tradingd_ready", "1 when the daemon accepts work.")
    ready.add_metric([], 1.0 if daemon.get("state") == "running" else 0.0)
    yield ready


def memory_families(snap: Snapshot) -> Iterator[Metric]:
    mem = snap.get("memory", {})
    yield from _gauge(
        "tradingd_memory_limit_bytes",
        "Effective memory limit; the label says which source won.",
        mem.get("limit_bytes"),
        {"source": str(mem.get("limit_source", "unknown"))},
    )
    yield from _gauge("tradingd_memory_rss_bytes", "Resident set size of the daemon.", mem.get("rss_bytes"))
    yield from _gauge(
        "tradingd_memory_anon_rss_bytes", "Anonymous RSS (what pressure is computed from).", mem.get("anon_rss_bytes")
    )
    yield from _gauge(
        "tradingd_memory_cgroup_bytes", "Cgroup working set, when in a cgroup v2.", mem.get("cgroup_bytes")
    )
    levels = {"normal": 0, "gc": 1, "pressure": 2, "critical": 3}
    yield from _gauge(
        "tradingd_memory_pressure_level",
        "Pressure level: 0 normal, 1 gc, 2 pressure, 3 critical.",
        levels.get(str(mem.get("level"))),
    )


def loop_families(snap: Snapshot) -> Iterator[Metric]:
    loop = snap.get("loop", {})
    yield from _gauge("tradingd_event_loop_lag_seconds", "Current event-loop lag.", loop.get("lag_seconds"))
    yield from _gauge(
        "tradingd_event_loop_max_lag_seconds", "Largest recent event-loop lag.", loop.get("max_lag_seconds")
    )


# Other rooms append their builders here (memory caches, runs, outcomes, ...).
FAMILIES: list[FamilyBuilder] = [
    daemon_families, memory_families, loop_families, memory_manager_families, runs_families,
]


class SnapshotCollector(Collector):
    """Yields metric families from the latest stats snapshot."""

    def __init__(self, stats: StatsBoard) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        snap = self._stats.snapshot
        for build in FAMILIES:
            yield from build(snap)


def build_registry(stats: StatsBoard) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(SnapshotCollector(stats))
    return registry
