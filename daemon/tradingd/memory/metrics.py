"""Prometheus families for caches, models, cleanup and admission.

Built from the stats snapshot (the ``caches``, ``models``, ``cleanup`` and
``admission`` sections the memory manager registers), never from live objects,
so a scrape never takes a cache lock. Names and labels are stable API.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["memory_manager_families"]


def _counter(name: str, doc: str, labels: list[str], rows: list[tuple[list[str], float]]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def _gauge(name: str, doc: str, labels: list[str], rows: list[tuple[list[str], float]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def _cache_families(section: dict[str, Any]) -> Iterator[Metric]:
    caches: dict[str, dict[str, Any]] = section.get("caches") or {}
    yield _gauge("tradingd_cache_budget_bytes", "Global cache byte budget.", [], [([], section["budget_bytes"])])
    yield _gauge("tradingd_cache_used_bytes", "Bytes held by all caches.", [], [([], section["used_bytes"])])
    yield _gauge(
        "tradingd_cache_bytes", "Bytes held by a cache.", ["cache"], [([n], c["bytes"]) for n, c in caches.items()]
    )
    yield _gauge(
        "tradingd_cache_entries", "Entries in a cache.", ["cache"], [([n], c["entries"]) for n, c in caches.items()]
    )
    yield _counter(
        "tradingd_cache_hits_total", "Cache lookups that hit.", ["cache"], [([n], c["hits"]) for n, c in caches.items()]
    )
    yield _counter(
        "tradingd_cache_misses_total",
        "Cache lookups that missed (one per computation, however many callers waited on it).",
        ["cache"],
        [([n], c["misses"]) for n, c in caches.items()],
    )
    yield _counter(
        "tradingd_cache_evictions_total",
        "Entries evicted, by reason (ttl, lru, size, pressure).",
        ["cache", "reason"],
        [([n, r], v) for n, c in caches.items() for r, v in c["evictions"].items()],
    )
    yield _counter(
        "tradingd_cache_evicted_bytes_total",
        "Bytes evicted, by reason.",
        ["cache", "reason"],
        [([n, r], v) for n, c in caches.items() for r, v in c["evicted_bytes"].items()],
    )


def _model_families(models: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge("tradingd_models_known", "Models registered (on disk).", [], [([], models["known"])])
    yield _gauge("tradingd_models_resident", "Models in memory.", [], [([], models["resident"])])
    yield _gauge(
        "tradingd_models_resident_bytes", "Estimated bytes of models in memory.", [], [([], models["resident_bytes"])]
    )
    for name, doc in (
        ("demotions", "Idle models demoted to a weak reference."),
        ("collections", "Demoted models collected."),
        ("reloads", "Models reloaded from disk."),
    ):
        yield _counter(f"tradingd_model_{name}_total", doc, [], [([], models[name])])


def _cleanup_families(cleanup: dict[str, Any], admission: dict[str, Any]) -> Iterator[Metric]:
    actions: dict[str, dict[str, Any]] = cleanup.get("actions") or {}
    yield _counter(
        "tradingd_cleanup_actions_total",
        "Cleanup steps taken, by action.",
        ["action"],
        [([a], v["count"]) for a, v in actions.items()],
    )
    yield _counter(
        "tradingd_cleanup_freed_bytes_total",
        "Bytes freed by cleanup steps, by action.",
        ["action"],
        [([a], v["freed_bytes"]) for a, v in actions.items()],
    )
    yield _counter(
        "tradingd_cleanup_seconds_total",
        "Time spent in cleanup steps, by action.",
        ["action"],
        [([a], v["seconds"]) for a, v in actions.items()],
    )
    yield _counter(
        "tradingd_cleanup_runs_total",
        "Cleanup ladder runs, by level.",
        ["level"],
        [([lvl], n) for lvl, n in (cleanup.get("runs") or {}).items()],
    )
    if admission:
        yield _gauge(
            "tradingd_admission_paused", "1 while new containers are held back.", [], [([], float(admission["paused"]))]
        )
        yield _counter(
            "tradingd_admission_pauses_total", "Times admission was paused.", [], [([], admission["pauses"])]
        )


def memory_manager_families(snap: dict[str, Any]) -> Iterator[Metric]:
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
