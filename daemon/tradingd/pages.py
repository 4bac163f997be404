"""What ``GET /`` and ``GET /runs`` answer, apart from HTTP: a page of runs, the dashboard with its state."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tradingd.api_input import finite_json
from tradingd.workflows.workflow_run import WorkflowRun

__all__ = ["DASHBOARD_RUNS", "INITIAL_STATE_MARK", "dashboard_page", "runs_page"]

INITIAL_STATE_MARK = "/*INITIAL_STATE*/null"  # in web/index.html: replaced by the state of the first paint
DASHBOARD_RUNS = 20  # runs embedded in the first paint: the page's first page of runs


def runs_page(every: list[WorkflowRun], *, wanted: set[str] | None = None, limit: int | None = None,
              offset: int = 0) -> dict[str, Any]:
    """The body of ``GET /runs``: one page of the runs whose status is ``wanted``, with counts."""
    counts: dict[str, int] = {}
    for run in every:
        counts[run.status] = counts.get(run.status, 0) + 1
    runs = [r for r in every if wanted is None or r.status in wanted]
    page = runs[offset:offset + limit if limit is not None else None]
    return {"runs": [r.describe() for r in page], "total": len(runs), "offset": offset, "limit": limit,
            "counts": counts}


def dashboard_page(template: str, snapshot: Mapping[str, Any], runs: list[WorkflowRun]) -> str:
    """The dashboard with the current snapshot and first page of runs embedded, so the first paint has data."""
    initial = {"stats": snapshot, "runs": runs_page(runs, limit=DASHBOARD_RUNS)}
    # "</script>" or "<!--" in a run's error would end or derail the <script>: escape every "<".
    # NaN or infinity (a metric) would not parse in the page: JSON null, as the API answers them.
    embedded = json.dumps(finite_json(initial), allow_nan=False, default=str).replace("<", "\\u003c")
    return template.replace(INITIAL_STATE_MARK, embedded, 1)
