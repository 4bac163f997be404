"""The sequencer: runs a workflow's phases (:mod:`tradingd.workflows.phases`) in order.

A phase expands into containers (symbol x parameter chunk), runs them on the
executor with at most ``max_workers`` in flight (a phase's
:class:`~tradingd.tasks.TaskScheduler` owns their tasks), then aggregates
their files. A testing phase tests the parameter indices its training phase
selected; for a trainable strategy the training phase also fits one model per
selection, and the testing phase leases each model it tests from the model
registry while its containers run, so the cleanup ladder never demotes one in
use. Containers with a completed result file of the same spec are skipped, which is
all resuming takes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from tradingd.reports import publish_phase_report
from tradingd.storage.atomic import atomic_write_json
from tradingd.tasks import TaskScheduler
from tradingd.trading.data import MarketData
from tradingd.trading.strategies import get_strategy
from tradingd.workflows.aggregate import PhaseFacts, aggregate_phase
from tradingd.workflows.compute import data_range, train_model
from tradingd.workflows.container import Container, ModelStore, RunServices, load_completed
from tradingd.workflows.footprint import REPORT_BYTES
from tradingd.workflows.layout import PhaseLayout, RunLayout
from tradingd.workflows.phases import PhasePlan, plan_phases
from tradingd.workflows.progress import Progress
from tradingd.workflows.spec import WorkflowSpec

__all__ = ["RunInterrupted", "Sequencer"]

log = logging.getLogger(__name__)


class RunInterrupted(Exception):
    """The daemon is stopping: in-flight containers finished, the rest did not start."""


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
        if resumed:
            log.info("run %s phase %s: %d of %d containers already completed", self.run_id, plan.name,
                     resumed, len(containers))
        with ExitStack() as leases:  # models tested here stay leased until the phase's containers end
            if self._trainable and plan.kind == "testing":
                assert plan.source_phase is not None
                for container in todo:
                    container.attach_models([await self._model(plan.source_phase, container.symbol, i, leases)
                                             for i in container.indices])
            await self._run_containers(plan, todo)
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
        await self._publish_report(plan, phase_layout)

    async def _publish_report(self, plan: PhasePlan, layout: PhaseLayout) -> None:
        # Drawing a report is working memory too: it waits for a grant like a container.
        work = self.services.work
        grant = None
        if work is not None:
            try:
                grant = await work.acquire(f"{self.run_id}/{plan.name}/report", estimate=REPORT_BYTES,
                                           minimum=REPORT_BYTES // 2)
            except MemoryError as exc:  # GrantRefused: a limit that small still gets its report, ungranted
                log.warning("phase %s: drawing the report without a memory grant: %s", plan.name, exc)
        try:
            await publish_phase_report(layout.root)
        finally:
            if grant is not None:
                grant.release()

    def _already_completed(self, containers: Sequence[Container]) -> set[str]:
        return {
            c.id for c in containers
            if load_completed(c.path, container_id=c.id, fingerprint=self.fingerprint) is not None
        }

    async def _run_containers(self, plan: PhasePlan, containers: Sequence[Container]) -> None:
        # max_workers is read here, on the loop, once per phase (a Dask cluster may resize meanwhile).
        scheduler = TaskScheduler(f"run {self.run_id} phase {plan.name}", limit=self.services.executor.max_workers)
        for container in containers:
            scheduler.spawn(self._run_container(container), name=f"container {container.id}")
        await scheduler.join()

    async def _run_container(self, container: Container) -> None:
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
                await self._model(plan.name, symbol, index, None)
                keys.setdefault(symbol, {})[str(index)] = self._model_key(plan.name, symbol, index)
        self.model_keys[plan.name] = keys

    async def _model(self, phase: str, symbol: str, index: int, leases: ExitStack | None) -> Any:
        """The model trained in ``phase`` for (symbol, index): from the registry, or trained now.

        With ``leases``, the model is leased from the registry until the stack
        closes. Training is seeded, so a model retrained after a restart (or
        after the registry lost it) is the same model.
        """
        key = self._model_key(phase, symbol, index)
        registry = self.services.models
        if key in self.services.local_models:
            return self.services.local_models[key]
        if registry is not None:
            try:
                model = await asyncio.to_thread(_find_model, registry, key)
            except KeyError as exc:  # ModelUnavailable: the file is gone or failed its check
                log.warning("model %s unavailable (%s); retraining", key, exc)
                model = None
            if model is not None:
                return _leased(registry, key, leases, model)
        plan = next(p for p in self.plans if p.name == phase)
        model = await self.services.executor.submit(train_model, self._slice(plan, symbol),
                                                    self.spec.strategy.name, self.grid[index])
        if registry is None:
            self.services.local_models[key] = model
            return model
        await asyncio.to_thread(registry.register, key, model)
        return _leased(registry, key, leases, model)

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



def _find_model(registry: ModelStore, key: str) -> Any:
    """The registry's model for ``key`` (reloaded from disk if need be), or None if it has none."""
    return registry.get(key) if key in registry else None


def _leased(registry: ModelStore, key: str, leases: ExitStack | None, model: Any) -> Any:
    """``model``, leased from ``registry`` until ``leases`` closes.

    Cheap on the loop: we hold ``model``, so the registry finds it live and
    only counts the lease (no reload).
    """
    if leases is None:
        return model
    return leases.enter_context(registry.use(key))
