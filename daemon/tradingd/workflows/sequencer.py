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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tradingd.reports import write_phase_report
from tradingd.storage.atomic import atomic_write_json
from tradingd.tasks import TaskScheduler
from tradingd.trading.data import MarketData
from tradingd.trading.metrics import HIGHER_IS_BETTER
from tradingd.trading.strategies import get_strategy
from tradingd.workflows.aggregate import PhaseFacts, aggregate_phase
from tradingd.workflows.compute import data_range
from tradingd.workflows.container import Container, RunServices, load_completed
from tradingd.workflows.file_work import granted
from tradingd.workflows.footprint import REPORT_BYTES, ROW_BYTES
from tradingd.workflows.layout import PhaseLayout, RunLayout
from tradingd.workflows.out_of_sample import buy_and_hold_document, phase_headline, write_stitched
from tradingd.workflows.overfitting import phase_overfitting
from tradingd.workflows.phase_models import PhaseModels
from tradingd.workflows.phase_summary import phase_summary, research_sections
from tradingd.workflows.phases import PhasePlan, plan_phases
from tradingd.workflows.progress import Progress
from tradingd.workflows.search import PhaseSearch, SearchStudy
from tradingd.workflows.search_batches import ContainerBatches
from tradingd.workflows.search_space import ParameterSpace
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
        on_change: Callable[[], Awaitable[None]],
        cancelled_as: Callable[[], str] = lambda: "cancelled",
    ) -> None:
        self.spec = spec
        self.run_id = run_id
        self.layout = layout
        self.data = dict(data)
        # A search space is indexed, never expanded (it may be far larger than any grid).
        self.grid: Sequence[Mapping[str, Any]] = grid if isinstance(grid, ParameterSpace) else [dict(p) for p in grid]
        self.services = services
        self.progress = progress
        self.fingerprint = spec.fingerprint()
        self.plans = plan_phases(spec, data)
        self.selections: dict[str, dict[str, list[int]]] = {}
        # Walk-forward: the stitched out-of-sample summary once every window ran (out_of_sample.json).
        self.out_of_sample: dict[str, Any] | None = None
        self._should_stop = should_stop
        self._on_change = on_change
        self._cancelled_as = cancelled_as
        self._trainable = get_strategy(spec.strategy.name).trainable
        self._planned: dict[str, tuple[int, int]] = {}
        self._slices: dict[tuple[str, str], MarketData] = {}
        self.searches: dict[str, PhaseSearch] = {}  # phase -> its finished (or stopped) search
        self.models = PhaseModels(run_id=run_id, fingerprint=self.fingerprint, services=services,
                                  strategy=spec.strategy.name, grid=self.grid,
                                  bars=lambda phase, symbol: self._slice(self._plan(phase), symbol))
        for plan in self.plans:
            count, units = self._estimate(plan)
            self._planned[plan.name] = (count, units)
            progress.plan(count, units)

    def __repr__(self) -> str:
        done = sum(1 for p in self.plans if p.status in ("completed", "failed"))
        return f"<Sequencer {self.run_id} {done}/{len(self.plans)} phases>"

    def _estimate(self, plan: PhasePlan) -> tuple[int, int]:
        """Containers and work units before the phase runs (a testing phase's grid is not known yet)."""
        if self._searching(plan):
            assert self.spec.search is not None
            batches = -(-self.spec.search.trials // self.spec.search.batch)
            return batches * len(plan.bounds), sum((b - a) * self.spec.search.trials for a, b in plan.bounds.values())
        combos = len(self.grid) if plan.kind != "testing" else min(self.spec.selection.top, len(self.grid))
        chunks = math.ceil(combos / self.spec.execution.chunk_size)
        units = sum((stop - start) * combos for start, stop in plan.bounds.values())
        return chunks * len(plan.bounds), units

    def _plan(self, name: str) -> PhasePlan:
        return next(p for p in self.plans if p.name == name)

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
        if self.spec.type == "walk_forward":
            self.out_of_sample = await asyncio.to_thread(self._stitch)

    async def _run_phase(self, plan: PhasePlan) -> None:
        plan.status, plan.started_at = "running", time.time()
        await self._on_change()
        phase_layout = self.layout.phase(plan.name)
        try:
            await self._run_phase_in(plan, phase_layout)
        except asyncio.CancelledError:
            await self._end_cancelled(plan, phase_layout)
            raise
        except RunInterrupted:
            raise
        except Exception:
            plan.status, plan.finished_at = "failed", time.time()  # e.g. its files could not be written
            raise

    async def _end_cancelled(self, plan: PhasePlan, phase_layout: PhaseLayout) -> None:
        """A phase whose run was cancelled: ``cancelled`` (with its files and report) or ``interrupted``.

        Runs after the cancellation was delivered; every write is shielded by
        the writer, so only a second cancellation can cut this short, and then
        only the waiting.
        """
        plan.status, plan.finished_at = self._cancelled_as(), time.time()
        if plan.status == "cancelled":
            try:
                aggregate, facts = await self._aggregate(plan, phase_layout)
                plan.counts = {k: facts.count(k) for k in ("completed", "failed", "cancelled")}
                await self.services.writer.call(self._write_phase_files, plan, phase_layout, aggregate, facts, None)
                await self._report(phase_layout, status="cancelled")
            except OSError as exc:
                log.warning("run %s phase %s: cancelled, but its files could not be written: %s", self.run_id,
                            plan.name, exc)
        await self._on_change()

    async def _report(self, phase_layout: PhaseLayout, *, status: str | None = None) -> None:
        """Draw the phase's report (in the file worker); never raises: a report is not worth a run.

        Reading the container files back and drawing is working memory too: it waits for a grant.
        """
        try:
            await granted(self.services.work, f"{self.run_id}/{phase_layout.root.name}/report",
                          phase_layout.containers_dir, REPORT_BYTES,
                          lambda: self.services.files.call(write_phase_report, phase_layout.root, run_id=self.run_id,
                                                           status=status))
        except Exception as exc:
            log.warning("run %s: could not write the report of %s: %s", self.run_id, phase_layout.root.name, exc)

    async def _aggregate(self, plan: PhasePlan, phase_layout: PhaseLayout) -> tuple[dict[str, Any], PhaseFacts]:
        """Rank the phase's container files (in the file worker, granted: it parses every one of them)."""
        rows = ROW_BYTES * len(self.grid) * len(plan.bounds)  # every metrics row of the phase, kept to rank
        return await granted(self.services.work, f"{self.run_id}/{phase_layout.root.name}/aggregate",
                             phase_layout.containers_dir, rows, lambda: self.services.files.call(
            aggregate_phase, layout=phase_layout, phase=plan.name, kind=plan.kind, strategy=self.spec.strategy.name,
            container_ids=plan.container_ids, fingerprint=self.fingerprint, objective=self.spec.objective,
            selection=self.spec.selection, report_top=self.spec.report_top,
            handed=self.selections.get(plan.source_phase) if plan.source_phase else None))

    async def _run_phase_in(self, plan: PhasePlan, phase_layout: PhaseLayout) -> None:
        if self._searching(plan):
            resumed = await self._run_search(plan, phase_layout)
        else:
            resumed = await self._run_grid(plan, phase_layout)
        if self._should_stop():
            plan.status, plan.finished_at = "interrupted", time.time()
            await self._on_change()
            raise RunInterrupted(f"stopped during phase {plan.name}")
        aggregate, facts = await self._aggregate(plan, phase_layout)
        self.selections[plan.name] = aggregate["selection"]["by_symbol"]
        overfitting = await self._overfitting(plan, aggregate["selection"]["by_symbol"])
        plan.results = phase_headline(aggregate, overfitting)
        if self._trainable and plan.kind == "training":
            await self.models.train_selected(plan.name, self.selections[plan.name])
        plan.counts = {k: facts.count(k) for k in ("completed", "failed", "cancelled")}
        plan.counts["resumed"] = resumed
        plan.status = "completed" if facts.count("completed") == len(plan.container_ids) else "failed"
        plan.finished_at = time.time()
        await self.services.writer.call(self._write_phase_files, plan, phase_layout, aggregate, facts, overfitting)
        await self._on_change()
        await self._report(phase_layout)

    async def _run_grid(self, plan: PhasePlan, phase_layout: PhaseLayout) -> int:
        """Run the phase's containers over its whole grid; how many were already completed."""
        containers = self._containers(plan, phase_layout)
        plan.container_ids = [c.id for c in containers]
        planned_count, planned_units = self._planned[plan.name]
        actual_units = sum(c.work_units for c in containers)
        # A testing phase may test fewer combinations than estimated (a symbol with no selection).
        self.progress.skip(max(0, planned_units - actual_units), max(0, planned_count - len(containers)))
        # Reading result files (possibly large, possibly many): in the file worker.
        done = await self.services.files.call(already_completed, [(c.path, c.id) for c in containers],
                                              self.fingerprint)
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
                    container.attach_models([await self.models.get(plan.source_phase, container.symbol, i, leases)
                                             for i in container.indices])
            await self._run_containers(plan, todo)
        return resumed

    # --- search (spec.search: Optuna proposes, batches run as containers) --------------------

    def _searching(self, plan: PhasePlan) -> bool:
        return self.spec.search is not None and plan.kind != "testing"

    async def _run_search(self, plan: PhasePlan, layout: PhaseLayout) -> int:
        """Run the phase's search batch by batch; how many containers were already completed."""
        assert self.spec.search is not None and isinstance(self.grid, ParameterSpace)
        folder = self.services.search_dir or self.layout.root / "search"
        study = SearchStudy(folder / f"{self.run_id}.db", f"{plan.name}@{self.fingerprint}", self.spec.search,
                            self.grid, maximize=HIGHER_IS_BETTER.get(self.spec.objective, True))
        bars = sum(stop - start for start, stop in plan.bounds.values())
        plan.container_ids = []
        batches = ContainerBatches(symbols=list(self.data), fingerprint=self.fingerprint,
                                   objective=self.spec.objective, progress=self.progress,
                                   container_ids=plan.container_ids,
                                   make=lambda symbol, cid, ids: self._container(plan, layout, symbol, cid, ids),
                                   run=lambda containers: self._run_containers(plan, containers))

        async def on_batch(status: dict[str, Any], slots: int, evaluated: int) -> None:
            # Repeats and rejected sets cost nothing: take them off the work left (and the ETA).
            self.progress.skip((slots - evaluated) * bars, 0 if evaluated else len(self.data))
            self.progress.search = status
            await self._on_change()

        self.searches[plan.name] = search = PhaseSearch(study, symbols=list(self.data), evaluate=batches,
                                                        should_stop=self._should_stop, on_batch=on_batch)
        await search.run()
        return batches.resumed

    async def _overfitting(self, plan: PhasePlan, selection: Mapping[str, list[int]]) -> dict[str, Any] | None:
        """PSR, DSR and PBO of a sweep's selection; the trials are the grid, or a search's evaluated sets."""
        settings = self.spec.overfitting
        if plan.kind == "testing" or not settings.enabled:
            return None
        search = self.searches.get(plan.name)
        indices, trials = search.evaluated_sets() if search is not None else (None, list(self.grid))
        if len(trials) < 2:
            return None
        try:
            return await phase_overfitting(
                self.services.executor, {s: self._slice(plan, s) for s in self.data}, self.spec.strategy.name,
                trials, self.spec.backtest.model_dump(mode="json"), selection,
                scope=self.spec.selection.scope, n_blocks=settings.blocks, indices=indices)
        except Exception as exc:  # statistics are never worth failing a phase for
            log.warning("run %s phase %s: no overfitting statistics: %s: %s", self.run_id, plan.name,
                        type(exc).__name__, exc)
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _stitch(self) -> dict[str, Any]:
        """Walk-forward: chain every window's out-of-sample result; writes out_of_sample.json."""
        tests = [p for p in self.plans if p.kind == "testing" and p.source_phase]
        windows = [(self.layout.phase(p.name), self.selections.get(p.source_phase or "", {})) for p in tests]
        closes = {s: [self._slice(p, s).close for p in tests] for s in self.data}
        return write_stitched(self.layout.root, windows, closes, initial_equity=self.spec.backtest.initial_equity,
                              periods_per_year={s: d.periods_per_year for s, d in self.data.items()})

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
        out: list[Container] = []
        for symbol in self.data:
            if plan.kind == "testing":
                assert plan.source_phase is not None
                indices = self.selections.get(plan.source_phase, {}).get(symbol, [])
            else:
                indices = list(range(len(self.grid)))
            for number, start in enumerate(range(0, len(indices), chunk)):
                out.append(self._container(plan, layout, symbol, f"{symbol}-{number:04d}",
                                           indices[start:start + chunk]))
        return out

    def _container(self, plan: PhasePlan, layout: PhaseLayout, symbol: str, container_id: str,
                   indices: Sequence[int]) -> Container:
        return Container(
            container_id=container_id,
            run_id=self.run_id,
            phase=plan.name,
            layout=layout,
            data=self._slice(plan, symbol),
            strategy=self.spec.strategy.name,
            indices=indices,
            params=[self.grid[i] for i in indices],
            backtest=self.spec.backtest.model_dump(mode="json"),
            settings=plan.settings,
            fingerprint=self.fingerprint,
            services=self.services,
            batch_size=self.spec.execution.batch_size,
            **self._outcome_filter(plan, symbol),
        )

    def _outcome_filter(self, plan: PhasePlan, symbol: str) -> dict[str, Any]:
        """Container arguments for spec.outcome_filter: testing phases see the symbol's bars up to theirs."""
        if self.spec.outcome_filter is None or plan.kind != "testing":
            return {}
        key = (f"{plan.name}#history", symbol)
        if key not in self._slices:
            self._slices[key] = self.data[symbol].slice(0, plan.bounds[symbol][1])
        return {"history": self._slices[key], "outcome_filter": self.spec.outcome_filter.model_dump(mode="json")}

    # --- files -------------------------------------------------------------------

    def _write_phase_files(self, plan: PhasePlan, layout: PhaseLayout, aggregate: dict[str, Any],
                           facts: PhaseFacts, overfitting: dict[str, Any] | None) -> None:
        atomic_write_json(layout.aggregate, aggregate)
        summary = phase_summary(plan, facts, aggregate, overfitting, run_id=self.run_id, spec=self.spec,
                                data={symbol: data_range(self._slice(plan, symbol)) for symbol in self.data})
        if plan.settings.track_equity:  # the benchmark the report draws beside the equity curves
            atomic_write_json(layout.root / "buy_and_hold.json",
                              buy_and_hold_document({s: self._slice(plan, s).close for s in self.data}))
        if plan.name in self.models.keys:
            summary["models"] = self.models.keys[plan.name]
        summary.update(research_sections(plan, layout, self.spec, self.searches.get(plan.name)))
        atomic_write_json(layout.summary, summary)


def already_completed(containers: Sequence[tuple[Path, str]], fingerprint: str) -> set[str]:
    """The ids of ``(result path, container id)`` pairs whose file is a completed result of this spec."""
    return {cid for path, cid in containers
            if load_completed(path, container_id=cid, fingerprint=fingerprint) is not None}
