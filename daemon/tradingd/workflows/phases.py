"""Phase planning: which phases a workflow type has, and which bars each one covers.

- ``backtest``: one phase, ``backtest``.
- ``train_test``: ``training`` then ``testing``; each symbol's bars are split
  (``train_fraction`` or ``split_date``).
- ``walk_forward``: per window ``window-NNN-training`` then
  ``window-NNN-testing``, each pair on its own bars, written separately.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tradingd.trading.data import MarketData
from tradingd.workflows.spec import PhaseKind, PhaseSettings, WorkflowSpec

__all__ = ["PhasePlan", "PlanError", "plan_phases"]


class PlanError(ValueError):
    """The data cannot hold the phases the spec asks for (too few bars...)."""


@dataclass
class PhasePlan:
    """One phase: its bars per symbol, its settings, and how it went."""

    name: str
    kind: PhaseKind
    bounds: dict[str, tuple[int, int]]  # symbol -> [start, stop) bar range
    settings: PhaseSettings
    window: int | None = None
    source_phase: str | None = None  # testing: the training phase whose selection it tests
    status: str = "pending"
    started_at: float | None = None
    finished_at: float | None = None
    container_ids: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # The phase's headline figures once it finished (out_of_sample.phase_headline): manifest and /runs/{id}.
    results: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "window": self.window,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "containers": {"total": len(self.container_ids), **self.counts},
            "container_ids": list(self.container_ids),
            "results": dict(self.results),
        }


def plan_phases(spec: WorkflowSpec, data: Mapping[str, MarketData]) -> list[PhasePlan]:
    """The phases of ``spec`` on ``data`` (raises :class:`PlanError` if the data is too short)."""
    if spec.type == "backtest":
        return [PhasePlan("backtest", "backtest", {s: (0, d.n_bars) for s, d in data.items()},
                          spec.phase_settings("backtest"))]
    if spec.type == "train_test":
        split = {symbol: _split_index(spec, d) for symbol, d in data.items()}
        return [
            PhasePlan("training", "training", {s: (0, split[s]) for s in data}, spec.phase_settings("training")),
            PhasePlan("testing", "testing", {s: (split[s], d.n_bars) for s, d in data.items()},
                      spec.phase_settings("testing"), source_phase="training"),
        ]
    return _walk_forward(spec, data)


def _split_index(spec: WorkflowSpec, data: MarketData) -> int:
    tt = spec.train_test
    if tt is not None and tt.split_date is not None:
        index = int(np.searchsorted(data.timestamps, np.datetime64(tt.split_date, "ns"), side="left"))
    else:
        index = int(data.n_bars * (tt.train_fraction if tt is not None else 0.7))
    if index < 2 or data.n_bars - index < 2:
        raise PlanError(
            f"{data.symbol}: the train/test split leaves {index} training and {data.n_bars - index} testing bars "
            "(each needs at least 2)"
        )
    return index


def _walk_forward(spec: WorkflowSpec, data: Mapping[str, MarketData]) -> list[PhasePlan]:
    wf = spec.walk_forward
    assert wf is not None  # the spec validator guarantees it
    step = wf.step_bars or wf.test_bars
    span = wf.train_bars + wf.test_bars
    shortest = min(data.values(), key=lambda d: d.n_bars)
    windows = (shortest.n_bars - span) // step + 1 if shortest.n_bars >= span else 0
    if wf.max_windows is not None:
        windows = min(windows, wf.max_windows)
    if windows < 1:
        raise PlanError(
            f"{shortest.symbol} has {shortest.n_bars} bars; one walk-forward window needs "
            f"{span} (train_bars + test_bars)"
        )
    plans: list[PhasePlan] = []
    for w in range(windows):
        offset = w * step
        train_start = 0 if wf.anchored else offset
        train_stop = offset + wf.train_bars
        prefix = f"window-{w:03d}"
        plans.append(PhasePlan(f"{prefix}-training", "training", dict.fromkeys(data, (train_start, train_stop)),
                               spec.phase_settings("training", f"{prefix}-training"), window=w))
        plans.append(PhasePlan(f"{prefix}-testing", "testing",
                               dict.fromkeys(data, (train_stop, train_stop + wf.test_bars)),
                               spec.phase_settings("testing", f"{prefix}-testing"), window=w,
                               source_phase=f"{prefix}-training"))
    return plans
