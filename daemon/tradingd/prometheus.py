"""Prometheus exposition of the stats snapshot.

Each app gets its own registry with the standard process, gc and platform
collectors plus :class:`SnapshotCollector`, which translates the latest
snapshot (never live objects, so a scrape never takes a cache lock) into
metric families with stable names: the daemon, memory and loop sections, the
memory manager's caches, models, cleanup, admission and work budget, and the runs. Names
and labels are stable API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["FAMILIES", "SnapshotCollector", "build_registry"]

Snapshot = Mapping[str, Any]
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
    yield from _gauge(
        "tradingd_memory_used_bytes", "Memory the pressure level is computed from.", mem.get("used_bytes")
    )
    marks = mem.get("marks_bytes") or {}
    if marks:
        yield _gauge_rows("tradingd_memory_mark_bytes", "Where each pressure level starts.", ["level"],
                          [([level], value) for level, value in marks.items()])
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
    yield from _gauge("tradingd_event_loop_lag_threshold_seconds", "Lag over which /health answers 503.",
                      loop.get("lag_threshold_seconds"))
    if "healthy" in loop:
        yield from _gauge("tradingd_healthy", "1 while /health answers 200 (loop lag under the threshold).",
                          float(bool(loop["healthy"])))


def _counter_rows(name: str, doc: str, labels: list[str], rows: list[tuple[list[str], float]]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def _gauge_rows(name: str, doc: str, labels: list[str], rows: list[tuple[list[str], float]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def _cache_families(section: dict[str, Any]) -> Iterator[Metric]:
    caches: dict[str, dict[str, Any]] = section.get("caches") or {}
    yield _gauge_rows("tradingd_cache_budget_bytes", "Global cache byte budget.", [], [([], section["budget_bytes"])])
    yield _gauge_rows("tradingd_cache_used_bytes", "Bytes held by all caches.", [], [([], section["used_bytes"])])
    yield _gauge_rows(
        "tradingd_cache_bytes", "Bytes held by a cache.", ["cache"], [([n], c["bytes"]) for n, c in caches.items()]
    )
    yield _gauge_rows(
        "tradingd_cache_entries", "Entries in a cache.", ["cache"], [([n], c["entries"]) for n, c in caches.items()]
    )
    yield _counter_rows(
        "tradingd_cache_hits_total", "Cache lookups that hit.", ["cache"], [([n], c["hits"]) for n, c in caches.items()]
    )
    yield _counter_rows(
        "tradingd_cache_misses_total",
        "Cache lookups that missed (one per computation, however many callers waited on it).",
        ["cache"],
        [([n], c["misses"]) for n, c in caches.items()],
    )
    yield _counter_rows(
        "tradingd_cache_evictions_total",
        "Entries evicted, by reason (ttl, lru, size, pressure).",
        ["cache", "reason"],
        [([n, r], v) for n, c in caches.items() for r, v in c["evictions"].items()],
    )
    yield _counter_rows(
        "tradingd_cache_evicted_bytes_total",
        "Bytes evicted, by reason.",
        ["cache", "reason"],
        [([n, r], v) for n, c in caches.items() for r, v in c["evicted_bytes"].items()],
    )


def _model_families(models: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge_rows("tradingd_models_known", "Models registered (on disk).", [], [([], models["known"])])
    yield _gauge_rows("tradingd_models_resident", "Models in memory.", [], [([], models["resident"])])
    yield _gauge_rows(
        "tradingd_models_resident_bytes", "Estimated bytes of models in memory.", [], [([], models["resident_bytes"])]
    )
    for name, doc in (
        ("demotions", "Idle models demoted to a weak reference."),
        ("collections", "Demoted models collected."),
        ("reloads", "Models reloaded from disk."),
    ):
        yield _counter_rows(f"tradingd_model_{name}_total", doc, [], [([], models[name])])


def _cleanup_families(cleanup: dict[str, Any], admission: dict[str, Any]) -> Iterator[Metric]:
    actions: dict[str, dict[str, Any]] = cleanup.get("actions") or {}
    yield _counter_rows(
        "tradingd_cleanup_actions_total",
        "Cleanup steps taken, by action.",
        ["action"],
        [([a], v["count"]) for a, v in actions.items()],
    )
    yield _counter_rows(
        "tradingd_cleanup_freed_bytes_total",
        "Bytes freed by cleanup steps, by action.",
        ["action"],
        [([a], v["freed_bytes"]) for a, v in actions.items()],
    )
    yield _counter_rows(
        "tradingd_cleanup_seconds_total",
        "Time spent in cleanup steps, by action.",
        ["action"],
        [([a], v["seconds"]) for a, v in actions.items()],
    )
    yield _counter_rows(
        "tradingd_cleanup_runs_total",
        "Cleanup ladder runs, by level.",
        ["level"],
        [([lvl], n) for lvl, n in (cleanup.get("runs") or {}).items()],
    )
    if admission:
        yield _gauge_rows(
            "tradingd_admission_paused", "1 while new containers are held back.", [], [([], float(admission["paused"]))]
        )
        yield _counter_rows(
            "tradingd_admission_pauses_total", "Times admission was paused.", [], [([], admission["pauses"])]
        )


def memory_manager_families(snap: Snapshot) -> Iterator[Metric]:
    """Metric families for the memory manager's sections of ``snap`` (absent sections are skipped)."""
    caches = snap.get("caches")
    if isinstance(caches, dict) and "budget_bytes" in caches:
        yield from _cache_families(caches)
    models = snap.get("models")
    if isinstance(models, dict) and "resident" in models:
        yield from _model_families(models)
    cleanup = snap.get("cleanup")
    if isinstance(cleanup, dict) and "actions" in cleanup:
        admission = snap.get("admission")
        yield from _cleanup_families(
            cleanup, admission if isinstance(admission, dict) and "paused" in admission else {}
        )


def work_families(snap: Snapshot) -> Iterator[Metric]:
    """The work budget: capacity, granted bytes, waiting containers, grant waits, estimate errors."""
    work = snap.get("work")
    if not isinstance(work, dict) or "capacity_bytes" not in work:
        return
    yield from _gauge("tradingd_work_budget_bytes", "What the limit allows for container work.",
                      work["capacity_bytes"])
    yield from _gauge("tradingd_work_granted_bytes", "Working memory granted to running containers.",
                      work["granted_bytes"])
    yield from _gauge("tradingd_work_waiting", "Containers waiting for a memory grant.", len(work["waiting"]))
    yield from _gauge("tradingd_work_waiting_estimate_bytes", "Sum of the estimates of waiting containers.",
                      sum(w["estimate_bytes"] for w in work["waiting"]))
    yield CounterMetricFamily("tradingd_work_grants_total", "Memory grants given.", value=work["granted_total"])
    yield CounterMetricFamily("tradingd_work_refused_total", "Containers refused: minimum above the budget.",
                              value=work["refused_total"])
    yield CounterMetricFamily("tradingd_work_shrinks_total", "Grants shrunk under critical pressure.",
                              value=work["shrinks_total"])
    yield CounterMetricFamily("tradingd_work_wait_seconds_total", "Time containers spent waiting for grants.",
                              value=work["wait_seconds_total"])
    errors = GaugeMetricFamily("tradingd_work_estimate_error_ratio",
                               "Largest (peak - estimate) / estimate seen, by container kind.", labels=["kind"])
    for kind, seen in sorted(work["estimate_errors"].items()):
        errors.add_metric([kind], float(seen["largest_error"]))
    yield errors


RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")


def runs_families(snap: Snapshot) -> Iterator[Metric]:
    """``tradingd_runs{status}``, ``tradingd_containers_running`` and the executor's load."""
    runs = snap.get("runs")
    if not isinstance(runs, dict) or "by_status" not in runs:
        return
    if snap.get("daemon", {}).get("state") == "starting":
        return  # the runs on disk are not loaded yet: no series beats a wrong 0
    by_status = runs["by_status"]
    family = GaugeMetricFamily("tradingd_runs", "Runs known to the daemon, by status.", labels=["status"])
    for status in sorted(set(RUN_STATUSES) | set(by_status)):
        family.add_metric([status], float(by_status.get(status, 0)))
    yield family
    yield GaugeMetricFamily(
        "tradingd_containers_running", "Containers computing right now.", value=float(runs["containers_running"])
    )
    executor = runs.get("executor") or {}
    for key, doc in (("max_workers", "Executor worker slots."), ("active", "Executor jobs running."),
                     ("queued", "Executor jobs waiting for a worker.")):
        if key in executor:
            yield GaugeMetricFamily(f"tradingd_executor_{key}", doc, value=float(executor[key]))


def operator_families(snap: Snapshot) -> Iterator[Metric]:
    """Throughput, disk and the log counters (the ``throughput``, ``disk`` and ``log`` sections)."""
    work = snap.get("throughput")
    if isinstance(work, dict) and "containers_total" in work:
        yield _counter_rows("tradingd_containers_finished_total", "Containers finished (any status) by this process.",
                            [], [([], work["containers_total"])])
        yield _counter_rows("tradingd_bar_combinations_total",
                            "Bars x parameter combinations computed by this process.", [],
                            [([], work["bar_combinations_total"])])
    disk = snap.get("disk")
    if isinstance(disk, dict):
        for key, name, doc in (
            ("total_bytes", "tradingd_disk_total_bytes", "Size of the state or results filesystem with less room."),
            ("free_bytes", "tradingd_disk_free_bytes", "Free bytes on the state or results filesystem with less room."),
            ("min_free_bytes", "tradingd_disk_min_free_bytes", "disk.min_free_mb: admission pauses below it."),
            ("results_bytes", "tradingd_results_bytes", "Bytes of the results tradingd keeps."),
            ("state_bytes", "tradingd_state_bytes", "Bytes of tradingd's state directory."),
        ):
            yield from _gauge(name, doc, disk.get(key))
    log = snap.get("log")
    if isinstance(log, dict) and isinstance(log.get("counts"), dict):
        yield _counter_rows("tradingd_log_messages_total", "Warnings and errors logged, by level.", ["level"],
                            [([level.lower()], n) for level, n in log["counts"].items()])


FAMILIES: list[FamilyBuilder] = [
    daemon_families, memory_families, loop_families, memory_manager_families, work_families, runs_families,
    operator_families,
]


class SnapshotCollector(Collector):
    """Yields metric families from the latest stats snapshot."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        for build in FAMILIES:
            yield from build(snap)


def build_registry(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry with the standard collectors and one reading ``snapshot()`` on every scrape."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(SnapshotCollector(snapshot))
    return registry
