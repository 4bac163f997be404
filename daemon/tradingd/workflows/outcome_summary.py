"""The outcome filter's effect on a testing phase: filtered and unfiltered results side by side.

Read from the container files (primary data), so a resumed run writes the
same figures. Each tested row carries ``metrics`` (filtered: what the method
does), ``unfiltered_metrics`` (the same targets on the same warm history,
without the filter) and ``outcome_filter`` (entries, skipped, scaled).
Whichever wins is reported as it is.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from tradingd.workflows.layout import PhaseLayout, read_json

__all__ = ["COMPARED_METRICS", "outcome_filter_summary"]

COMPARED_METRICS = ("total_return", "sharpe", "max_drawdown", "n_trades", "win_rate")


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    found = [v for v in values if v is not None]
    if not found:
        return {"mean": None, "median": None, "share_positive": None, "n": 0}
    return {"mean": math.fsum(found) / len(found), "median": statistics.median(found),
            "share_positive": sum(1 for v in found if v > 0) / len(found), "n": len(found)}


def outcome_filter_summary(layout: PhaseLayout, container_ids: Sequence[str], objective: str,
                           settings: dict[str, Any]) -> dict[str, Any] | None:
    """The ``outcome_filter`` section of a testing phase's summary (None if no row was filtered)."""
    rows: list[dict[str, Any]] = []
    for container_id in sorted(container_ids):
        doc = read_json(layout.container(container_id))
        if doc is None or doc.get("status") != "completed":
            continue
        for row in doc.get("metrics") or []:
            if "unfiltered_metrics" in row:
                rows.append({"symbol": doc["symbol"], "index": row["index"], "params": row["params"],
                             "filtered": row["metrics"], "unfiltered": row["unfiltered_metrics"],
                             **row.get("outcome_filter", {})})
    if not rows:
        return None
    names = (objective, *[m for m in COMPARED_METRICS if m != objective])
    side_by_side = {
        name: {"filtered": _spread([_finite(r["filtered"].get(name)) for r in rows]),
               "unfiltered": _spread([_finite(r["unfiltered"].get(name)) for r in rows])}
        for name in names
    }
    filtered_mean = side_by_side[objective]["filtered"]["mean"]
    unfiltered_mean = side_by_side[objective]["unfiltered"]["mean"]
    return {
        "settings": settings,
        "objective": objective,
        "tested": len(rows),
        "entries": sum(int(r.get("entries", 0)) for r in rows),
        "skipped": sum(int(r.get("skipped", 0)) for r in rows),
        "scaled": sum(int(r.get("scaled", 0)) for r in rows),
        "across_symbols": side_by_side,
        "objective_change": (None if filtered_mean is None or unfiltered_mean is None
                             else filtered_mean - unfiltered_mean),
        "by_symbol": [
            {"symbol": r["symbol"], "index": r["index"], "params": r["params"],
             "entries": r.get("entries", 0), "skipped": r.get("skipped", 0), "scaled": r.get("scaled", 0),
             "filtered": {m: r["filtered"].get(m) for m in names},
             "unfiltered": {m: r["unfiltered"].get(m) for m in names}}
            for r in sorted(rows, key=lambda r: (r["symbol"], r["index"]))
        ],
    }
