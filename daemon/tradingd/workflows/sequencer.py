"""The sequencer: expands a workflow into phases and runs them in order.

- ``backtest``: one phase, ``backtest``.
- ``train_test``: ``training`` then ``testing``; each symbol's bars are split
  (``train_fraction`` or ``split_date``).
- ``walk_forward``: per window ``window-NNN-training`` then
  ``window-NNN-testing``, each pair on its own bars, written separately.

A phase expands into containers (symbol x parameter chunk), runs them on the
executor with at most ``max_workers`` in flight, then aggregates their files.
A testing phase tests the parameter indices its training phase selected; for a
trainable strategy the training phase also fits one model per selection.
Containers with a completed result file of the same spec are skipped, which is
all resuming takes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tradingd.reports import publish_phase_report
from tradingd.storage.atomic import atomic_write_json
from tradingd.trading.data import MarketData
from tradingd.trading.strategies import get_strategy
from tradingd.workflows.aggregate import PhaseFacts, aggregate_phase
from tradingd.workflows.compute import data_range, train_model
from tradingd.workflows.container import Container, RunServices, load_completed
from tradingd.workflows.layout import PhaseLayout, RunLayout
from tradingd.workflows.progress import Progress
from tradingd.workflows.spec import PhaseKind, PhaseSettings, WorkflowSpec

__all__ = ["PhasePlan", "PlanError", "RunInterrupted", "Sequencer", "plan_phases"]

log = logging.getLogger(__name__)


class PlanError(ValueError):
    """The data cannot hold the phases the spec asks for (too few bars...)."""


class RunInterrupted(Exception):
    """The daemon is stopping: in-flight containers finished, the rest did not start."""


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


class Sequencer:
    """Runs the phases of one run in order; see the module docstring."""

    def __init__(
        self,
        *,
        spec: WorkflowSpec,
        run_id: str,
        layout: RunLayout,
        data: Mapping[str, MarketData],
        grid: Sequence[Mapping[str, Any]],
        services: RunServices,
        progress: Progress,
        should_stop: Callable[[], bool],
        on_change: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.run_id = run_id
        self.layout = layout
        self.data = dict(data)
        self.grid = [dict(p) for p in grid]
        self.services = services
        self.progress = progress
        self.fingerprint = spec.fingerprint()
        self.plans = plan_phases(spec, data)
        self.selections: dict[str, dict[str, list[int]]] = {}
        self.model_keys: dict[str, dict[str, dict[str, str]]] = {}
        self._should_stop = should_stop
        self._on_change = on_change
        self._trainable = get_strategy(spec.strategy.name).trainable
        self._planned: dict[str, tuple[int, int]] = {}
        self._slices: dict[tuple[str, str], MarketData] = {}
        for plan in self.plans:
            count, units = self._estimate(plan)
            self._planned[plan.name] = (count, units)
            progress.plan(count, units)

    def __repr__(self) -> str:
        done = sum(1 for p in self.plans if p.status in ("completed", "failed"))
        return f"<Sequencer {self.run_id} {done}/{len(self.plans)} phases>"

    def _estimate(self, plan: PhasePlan) -> tuple[int, int]:
        """Containers and work units before the phase runs (a testing phase's grid is not known yet)."""
        combos = len(self.grid) if plan.kind != "testing" else min(self.spec.selection.top, len(self.grid))
        chunks = math.ceil(combos / self.spec.execution.chunk_size)
        units = sum((stop - start) * combos for start, stop in plan.bounds.values())
        return chunks * len(plan.bounds), units

    def _slice(self, plan: PhasePlan, symbol: str) -> MarketData:
        """``symbol``'s bars in ``plan``: views, made once per phase because slicing hashes the bars."""
        key = (plan.name, symbol)
        found = self._slices.get(key)
        if found is None:
            start, stop = plan.bounds[symbol]
            found = self._slices[key] = self.data[symbol].slice(start, stop)
        return found

    # --- running ---------------------------------------------------------------

    async def run(self) -> None:
        """Run every phase in order; raises :class:`RunInterrupted` when asked to stop."""
        for plan in self.plans:
            if self._should_stop():
                raise RunInterrupted(f"stopped before phase {plan.name}")
            await self._run_phase(plan)

    async def _run_phase(self, plan: PhasePlan) -> None:
        plan.status, plan.started_at = "running", time.time()
        self._on_change()
        phase_layout = self.layout.phase(plan.name)
        containers = self._containers(plan, phase_layout)
        plan.container_ids = [c.id for c in containers]
        planned_count, planned_units = self._planned[plan.name]
        actual_units = sum(c.work_units for c in containers)
        # A testing phase may test fewer combinations than estimated (a symbol with no selection).
        self.progress.skip(max(0, planned_units - actual_units), max(0, planned_count - len(containers)))
        # Reading result files (possibly large, possibly many) is I/O: off the loop.
        done = await asyncio.to_thread(self._already_completed, containers)
        todo = [c for c in containers if c.id not in done]
        resumed = len(containers) - len(todo)
        for container in containers:
            if container.id in done:
                self.progress.skip(container.work_units)
        if self._trainable and plan.kind == "testing":
            assert plan.source_phase is not None
            for container in todo:
                container.attach_models(
                    [await self._model(plan.source_phase, container.symbol, i) for i in container.indices]
                )
        if resumed:
            log.info("run %s phase %s: %d of %d containers already completed", self.run_id, plan.name,
                     resumed, len(containers))
        in_flight = asyncio.Semaphore(self.services.executor.max_workers)
        async with asyncio.TaskGroup() as group:
            for container in todo:
                group.create_task(self._run_container(container, in_flight), name=f"container {container.id}")
        if self._should_stop():
            plan.status = "interrupted"
            self._on_change()
            raise RunInterrupted(f"stopped during phase {plan.name}")
        aggregate, facts = await asyncio.to_thread(
            aggregate_phase,
            layout=phase_layout,
            phase=plan.name,
            kind=plan.kind,
            strategy=self.spec.strategy.name,
            container_ids=plan.container_ids,
            fingerprint=self.fingerprint,
            objective=self.spec.objective,
            selection=self.spec.selection,
            report_top=self.spec.report_top,
        )
        self.selections[plan.name] = aggregate["selection"]["by_symbol"]
        if self._trainable and plan.kind == "training":
            await self._train_selected(plan, self.selections[plan.name])
        plan.counts = {k: facts.count(k) for k in ("completed", "failed", "cancelled")}
        plan.counts["resumed"] = resumed
        plan.status = "completed" if facts.count("completed") == len(containers) else "failed"
        plan.finished_at = time.time()
        await asyncio.to_thread(self._write_phase_files, plan, phase_layout, aggregate, facts)
        self._on_change()
        # Reads the files just written; never raises (a report is not worth failing a run for).
        await publish_phase_report(phase_layout.root)

    def _already_completed(self, containers: Sequence[Container]) -> set[str]:
        return {
            c.id for c in containers
            if load_completed(c.path, container_id=c.id, fingerprint=self.fingerprint) is not None
        }

    async def _run_container(self, container: Container, in_flight: asyncio.Semaphore) -> None:
        async with in_flight:
            if self._should_stop():
                return  # not started: it runs on resume
            if self.services.admission is not None:
                await self.services.admission.wait()
                if self._should_stop():
                    return
            self.progress.running += 1
            try:
                async with container:
                    await container.run()
            except Exception as exc:
                # Recorded in the container's file; the phase goes on with the others.
                log.warning("container %s/%s failed: %s: %s", container.phase, container.id,
                            type(exc).__name__, exc)
            finally:
                self.progress.running -= 1
                if container.status in ("completed", "failed", "cancelled"):
                    self.progress.finish(container.status, container.work_units)

    def _containers(self, plan: PhasePlan, layout: PhaseLayout) -> list[Container]:
        chunk = self.spec.execution.chunk_size
        backtest = self.spec.backtest.model_dump(mode="json")
        out: list[Container] = []
        for symbol in self.data:
            if plan.kind == "testing":
                assert plan.source_phase is not None
                indices = self.selections.get(plan.source_phase, {}).get(symbol, [])
            else:
                indices = list(range(len(self.grid)))
            data = self._slice(plan, symbol)
            for number, start in enumerate(range(0, len(indices), chunk)):
                part = indices[start:start + chunk]
                out.append(Container(
                    container_id=f"{symbol}-{number:04d}",
                    run_id=self.run_id,
                    phase=plan.name,
                    layout=layout,
                    data=data,
                    strategy=self.spec.strategy.name,
                    indices=part,
                    params=[self.grid[i] for i in part],
                    backtest=backtest,
                    settings=plan.settings,
                    fingerprint=self.fingerprint,
                    services=self.services,
                    batch_size=self.spec.execution.batch_size,
                ))
        return out

    # --- models (trainable strategies) ----------------------------------------------

    def _model_key(self, phase: str, symbol: str, index: int) -> str:
        return f"{self.run_id}:{phase}:{symbol}:{index}:{self.fingerprint}"

    async def _train_selected(self, plan: PhasePlan, selection: Mapping[str, list[int]]) -> None:
        keys: dict[str, dict[str, str]] = {}
        for symbol, indices in selection.items():
            for index in indices:
                await self._model(plan.name, symbol, index)
                keys.setdefault(symbol, {})[str(index)] = self._model_key(plan.name, symbol, index)
        self.model_keys[plan.name] = keys

    async def _model(self, phase: str, symbol: str, index: int) -> Any:
        """The model trained in ``phase`` for (symbol, index): from the registry, or trained now.

        Training is seeded, so a model retrained after a restart (or after the
        registry lost it) is the same model.
        """
        key = self._model_key(phase, symbol, index)
        registry = self.services.models
        if key in self.services.local_models:
            return self.services.local_models[key]
        if registry is not None and key in registry:
            try:
                return await asyncio.to_thread(registry.get, key)
            except KeyError as exc:  # ModelUnavailable: the file is gone or failed its check
                log.warning("model %s unavailable (%s); retraining", key, exc)
        plan = next(p for p in self.plans if p.name == phase)
        model = await self.services.executor.submit(train_model, self._slice(plan, symbol),
                                                    self.spec.strategy.name, self.grid[index])
        if registry is not None:
            await asyncio.to_thread(registry.register, key, model)
        else:
            self.services.local_models[key] = model
        return model

    # --- files -------------------------------------------------------------------

    def _write_phase_files(self, plan: PhasePlan, layout: PhaseLayout, aggregate: dict[str, Any],
                           facts: PhaseFacts) -> None:
        atomic_write_json(layout.aggregate, aggregate)
        started = plan.started_at or 0.0
        finished = plan.finished_at or started
        summary: dict[str, Any] = {
            "format": "tradingd-phase/1",
            "run_id": self.run_id,
            "phase": plan.name,
            "kind": plan.kind,
            "window": plan.window,
            "status": plan.status,
            "source_phase": plan.source_phase,
            "strategy": self.spec.strategy.name,
            "objective": self.spec.objective,
            "settings": plan.settings.as_dict(),
            "data": {symbol: data_range(self._slice(plan, symbol)) for symbol in self.data},
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
        }
        if plan.name in self.model_keys:
            summary["models"] = self.model_keys[plan.name]
        atomic_write_json(layout.summary, summary)

