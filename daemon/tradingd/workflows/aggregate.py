"""Phase aggregation: rank the containers' results and select what the next phase tests.

Aggregates are computed from the container files on disk, never from memory,
and contain nothing that depends on timing or on how often the run was
interrupted, so a resumed run writes byte-identical ``aggregate_results.json``
to an uninterrupted one. Timings and other per-attempt facts go to
``phase_summary.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tradingd.trading.metrics import HIGHER_IS_BETTER
from tradingd.workflows.layout import PhaseLayout, read_json
from tradingd.workflows.out_of_sample import method_result
from tradingd.workflows.spec import SelectionSpec

__all__ = ["AGGREGATE_FORMAT", "PhaseFacts", "aggregate_phase"]

AGGREGATE_FORMAT = "tradingd-aggregate/1"


@dataclass
class PhaseFacts:
    """What the container files say beyond the ranking (for phase_summary.json)."""

    statuses: dict[str, str] = field(default_factory=dict)  # container id -> status ("missing" if no file)
    compute_seconds: float = 0.0
    wall_seconds: float = 0.0
    peak_rss_bytes: int = 0
    event_counts: dict[str, int] = field(default_factory=dict)
    event_bytes: int = 0

    def count(self, status: str) -> int:
        return sum(1 for s in self.statuses.values() if s == status)


def aggregate_phase(
    *,
    layout: PhaseLayout,
    phase: str,
    kind: str,
    strategy: str,
    container_ids: Sequence[str],
    fingerprint: str,
    objective: str,
    selection: SelectionSpec,
    report_top: int,
    handed: Mapping[str, Sequence[int]] | None = None,
) -> tuple[dict[str, Any], PhaseFacts]:
    """Read the phase's container files; return the aggregate document and the facts.

    ``handed`` is the selection a testing phase was given by its training
    phase: it is kept as the phase's ``selection`` in the order given (never
    re-ranked by test results) and the ``out_of_sample`` section reports
    what it achieved (:func:`~tradingd.workflows.out_of_sample.method_result`).
    """
    facts = PhaseFacts()
    rows: list[dict[str, Any]] = []
    for container_id in sorted(container_ids):
        doc = read_json(layout.container(container_id))
        if doc is None:
            facts.statuses[container_id] = "missing"
            continue
        status = str(doc.get("status"))
        if doc.get("spec_fingerprint") != fingerprint:
            status = "stale"
        facts.statuses[container_id] = status
        _collect_facts(facts, doc)
        if status != "completed":
            continue
        symbol = str(doc["symbol"])
        for row in doc["metrics"]:
            rows.append({"symbol": symbol, "index": int(row["index"]), "params": row["params"],
                         "metrics": row["metrics"]})
    higher = HIGHER_IS_BETTER.get(objective, True)
    ranked = sorted(rows, key=lambda r: (_order(r["metrics"].get(objective), higher), r["symbol"], r["index"]))
    by_symbol: dict[str, list[dict[str, Any]]] = {}
    for row in ranked:
        by_symbol.setdefault(row["symbol"], []).append(row)
    by_params = _by_params(rows, objective, higher)
    aggregate: dict[str, Any] = {
        "format": AGGREGATE_FORMAT,
        "phase": phase,
        "kind": kind,
        "strategy": strategy,
        "objective": objective,
        "higher_is_better": higher,
        "containers": {
            "total": len(container_ids),
            "completed": facts.count("completed"),
            "failed": facts.count("failed"),
            "cancelled": facts.count("cancelled"),
        },
        "rows": len(rows),
        "ranking": [_ranked(i, row, objective) for i, row in enumerate(ranked[:report_top], start=1)],
        "best_by_symbol": {symbol: _ranked(1, found[0], objective) for symbol, found in sorted(by_symbol.items())},
        "by_params": by_params[:report_top],
        "selection": _select(by_symbol, by_params, selection) if handed is None
        else _as_handed(handed, rows, selection),
    }
    if handed is not None:
        aggregate["out_of_sample"] = method_result(rows, handed, objective, ranked[0] if ranked else None)
    return aggregate, facts


def _order(value: Any, higher: bool) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.inf  # missing or non-finite values rank last
    return -float(value) if higher else float(value)


def _ranked(rank: int, row: dict[str, Any], objective: str) -> dict[str, Any]:
    return {
        "rank": rank,
        "symbol": row["symbol"],
        "index": row["index"],
        "params": row["params"],
        "objective": row["metrics"].get(objective),
        "metrics": row["metrics"],
    }


def _by_params(rows: list[dict[str, Any]], objective: str, higher: bool) -> list[dict[str, Any]]:
    """The objective per parameter set, averaged over symbols, best first."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["index"], []).append(row)
    out = []
    for index, members in grouped.items():
        values = [float(m["metrics"][objective]) for m in members
                  if isinstance(m["metrics"].get(objective), (int, float)) and math.isfinite(m["metrics"][objective])]
        mean = math.fsum(values) / len(values) if values else None
        out.append({
            "index": index,
            "params": members[0]["params"],
            "symbols": len(members),
            "mean_objective": mean,
        })
    # More symbols first (a set tried everywhere beats one tried once), then the mean, then the index.
    out.sort(key=lambda r: (-r["symbols"], _order(r["mean_objective"], higher), r["index"]))
    for rank, row in enumerate(out, start=1):
        row["rank"] = rank
    return out


def _select(by_symbol: dict[str, list[dict[str, Any]]], by_params: list[dict[str, Any]],
            selection: SelectionSpec) -> dict[str, Any]:
    """Which parameter indices the next phase tests, per symbol."""
    chosen: dict[str, list[int]]
    if selection.scope == "per_symbol":
        chosen = {symbol: [r["index"] for r in rows[: selection.top]] for symbol, rows in sorted(by_symbol.items())}
    else:
        best = [r["index"] for r in by_params[: selection.top]]
        chosen = {symbol: list(best) for symbol in sorted(by_symbol)}
    params = {r["index"]: r["params"] for rows in by_symbol.values() for r in rows}
    return {
        "scope": selection.scope,
        "top": selection.top,
        "by_symbol": chosen,
        "params": {str(i): params[i] for i in sorted({i for ids in chosen.values() for i in ids})},
    }


def _as_handed(handed: Mapping[str, Sequence[int]], rows: list[dict[str, Any]],
               selection: SelectionSpec) -> dict[str, Any]:
    """The selection a testing phase was handed, in the order training ranked it."""
    chosen = {symbol: [int(i) for i in indices] for symbol, indices in sorted(handed.items())}
    params = {r["index"]: r["params"] for r in rows}
    wanted = sorted({i for ids in chosen.values() for i in ids})
    return {
        "scope": selection.scope,
        "top": selection.top,
        "by_symbol": chosen,
        "params": {str(i): params[i] for i in wanted if i in params},
        "as_handed_by": "training",
    }


def _collect_facts(facts: PhaseFacts, doc: dict[str, Any]) -> None:
    timings = doc.get("timings") or {}
    facts.compute_seconds += float(timings.get("compute_seconds") or 0.0)
    facts.wall_seconds += float(timings.get("wall_seconds") or 0.0)
    facts.peak_rss_bytes = max(facts.peak_rss_bytes, int((doc.get("memory") or {}).get("peak_rss_bytes") or 0))
    events = doc.get("events") or {}
    for kind, count in (events.get("counts") or {}).items():
        facts.event_counts[kind] = facts.event_counts.get(kind, 0) + int(count)
    facts.event_bytes += int(events.get("bytes") or 0)
