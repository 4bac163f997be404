"""Prometheus families for runs, built from the ``runs`` stats section."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

__all__ = ["runs_families"]

RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")


def runs_families(snap: dict[str, Any]) -> Iterator[Metric]:
    """``tradingd_runs{status}``, ``tradingd_containers_running`` and the executor's load."""
    runs = snap.get("runs")
    if not isinstance(runs, dict) or "by_status" not in runs:
        return
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
