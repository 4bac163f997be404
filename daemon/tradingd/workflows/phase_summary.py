"""The common part of a phase's ``phase_summary.json``: what ran, how it went, how long it took.

The sequencer adds what only some phases have (out-of-sample results,
overfitting statistics, models, search and outcome-filter sections).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tradingd.storage.atomic import atomic_write_json
from tradingd.workflows.aggregate import PhaseFacts
from tradingd.workflows.layout import PhaseLayout
from tradingd.workflows.outcome_summary import outcome_filter_summary
from tradingd.workflows.phases import PhasePlan
from tradingd.workflows.search import PhaseSearch
from tradingd.workflows.spec import WorkflowSpec

__all__ = ["PHASE_SUMMARY_FORMAT", "phase_summary", "research_sections"]

PHASE_SUMMARY_FORMAT = "tradingd-phase/1"


def phase_summary(plan: PhasePlan, facts: PhaseFacts, aggregate: Mapping[str, Any],
                  overfitting: dict[str, Any] | None, *, run_id: str, spec: WorkflowSpec,
                  data: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's common keys, with the out-of-sample and overfitting sections when the phase has them.

    ``data`` is each symbol's range of bars in the phase.
    """
    started = plan.started_at or 0.0
    finished = plan.finished_at or started
    summary: dict[str, Any] = {
        "format": PHASE_SUMMARY_FORMAT,
        "run_id": run_id,
        "phase": plan.name,
        "kind": plan.kind,
        "window": plan.window,
        "status": plan.status,
        "source_phase": plan.source_phase,
        "strategy": spec.strategy.name,
        "objective": spec.objective,
        "settings": plan.settings.as_dict(),
        "data": dict(data),
        "containers": {
            "total": len(plan.container_ids),
            **plan.counts,
            "by_status": {cid: status for cid, status in sorted(facts.statuses.items())},
        },
        "timings": {
            "started_at": started,
            "finished_at": finished,
            "wall_seconds": round(finished - started, 6),
            "container_compute_seconds": round(facts.compute_seconds, 6),
            "container_wall_seconds": round(facts.wall_seconds, 6),
        },
        "memory": {"peak_rss_bytes": facts.peak_rss_bytes},
        "events": {"counts": facts.event_counts, "bytes": facts.event_bytes},
        "report_top": spec.report_top,
        "results": plan.results,
    }
    if "out_of_sample" in aggregate:
        summary["out_of_sample"] = aggregate["out_of_sample"]
    if overfitting is not None:  # its wall time joins the other timings: the section itself is reproducible
        summary["overfitting"] = {k: v for k, v in overfitting.items() if k != "wall_seconds"}
        summary["timings"]["overfitting_seconds"] = overfitting.get("wall_seconds")
    return summary


def research_sections(plan: PhasePlan, layout: PhaseLayout, spec: WorkflowSpec,
                      search: PhaseSearch | None) -> dict[str, Any]:
    """The ``outcome_filter`` and ``search`` sections a phase has (writes ``search.json`` beside it)."""
    sections: dict[str, Any] = {}
    if spec.outcome_filter is not None and plan.kind == "testing":
        effect = outcome_filter_summary(layout, plan.container_ids, spec.objective,
                                        spec.outcome_filter.model_dump(mode="json"))
        if effect is not None:
            sections["outcome_filter"] = effect
    if search is not None:
        sections["search"] = {**search.status(), "file": "search.json"}
        atomic_write_json(layout.root / "search.json", search.document())
    return sections
