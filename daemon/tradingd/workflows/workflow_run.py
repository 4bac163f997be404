"""One run of a workflow spec: execute it, keep its manifest, describe it.

A :class:`WorkflowRun` loads the data and expands the grid on the executor,
hands both to a :class:`Sequencer` and keeps ``manifest.json`` current, so a
later daemon can resume it (:meth:`WorkflowRun.from_manifest`). The
:class:`~tradingd.workflows.runs.RunQueue` decides when it runs.

Run statuses: ``queued`` → ``running`` → ``completed`` | ``failed`` |
``cancelled`` (by a user) | ``interrupted`` (by a shutdown; resumed at the
next start, like ``queued`` and ``running`` left behind by a crash).

A run is ``completed`` only once its report is on disk (the phases wrote
their aggregates before): a crash before that leaves the manifest
``running``, so the next start resumes it and writes the report. The manifest
goes through the run's :class:`~tradingd.workflows.writer.DurableWriter`; a
write that fails (a full disk) is kept in ``manifest_error`` — shown by the
API — and retried by :meth:`WorkflowRun.save_manifest` until it lands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tradingd import __version__
from tradingd.reports import write_run_report
from tradingd.storage.atomic import atomic_write_json
from tradingd.trading.data import DataError
from tradingd.trading.strategies import expand_valid_grid
from tradingd.trading.strategy import StrategyError
from tradingd.workflows.compute import BatchTask, TraceConfig, load_data, run_batch
from tradingd.workflows.container import RunServices
from tradingd.workflows.layout import RunLayout
from tradingd.workflows.out_of_sample import run_headline
from tradingd.workflows.phases import PhasePlan, PlanError
from tradingd.workflows.progress import Progress
from tradingd.workflows.run_summary import add_equity, run_summary
from tradingd.workflows.search_space import ParameterSpace
from tradingd.workflows.sequencer import RunInterrupted, Sequencer
from tradingd.workflows.spec import SpecError, WorkflowSpec, check_safe_name, parse_spec
from tradingd.workflows.writer import DurableWriter

__all__ = ["FINISHED", "MANIFEST_FORMAT", "RESUMABLE", "WorkflowRun"]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "tradingd-run/1"
RESUMABLE = frozenset({"queued", "running", "interrupted"})
FINISHED = frozenset({"completed", "failed", "cancelled"})


class WorkflowRun:
    """One run of a spec; see the module docstring."""

    def __init__(self, spec: WorkflowSpec, run_id: str, results_dir: Path, *, source: str = "api",
                 writer: DurableWriter | None = None) -> None:
        self.spec = spec
        self.writer = writer or DurableWriter()
        self.id = run_id
        self.layout = RunLayout(results_dir, run_id)
        self.source = source
        self.status = "queued"
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.error: str | None = None
        self.attempts = 0
        self.progress = Progress()
        self.phases: list[PhasePlan] = []
        self.symbols: list[str] = []
        self.grid_size = 0
        self.grid_dropped = 0
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None
        self.out_of_sample: dict[str, Any] | None = None  # walk-forward: the stitched summary
        self.manifest_error: str | None = None  # the last manifest write failed (it is retried)
        # Headline, selection and equity sparkline (run_summary.py), refreshed as phases finish; in the manifest.
        self.summary: dict[str, Any] | None = None
        self._summarised_phases = 0  # finished phases the summary was last drawn from
        self._phase_records: list[dict[str, Any]] = []  # from a manifest, until phases are planned

    def __repr__(self) -> str:
        return f"<WorkflowRun {self.id} {self.status} {self.progress.done}/{self.progress.total}>"

    @classmethod
    def from_manifest(cls, doc: dict[str, Any], results_dir: Path, *,
                      writer: DurableWriter | None = None) -> WorkflowRun:
        """A run as an earlier daemon left it (raises SpecError / ValueError if unusable)."""
        run_id = check_safe_name(str(doc.get("run_id")), "run id")
        spec = parse_spec(doc.get("spec"), source=f"{run_id}/manifest.json spec")
        run = cls(spec, run_id, results_dir, source=str(doc.get("source", "api")), writer=writer)
        run.status = str(doc.get("status", "interrupted"))
        run.created_at = float(doc.get("created_at") or run.created_at)
        run.started_at = doc.get("started_at")
        run.finished_at = doc.get("finished_at")
        run.error = doc.get("error")
        run.attempts = int(doc.get("attempts") or 0)
        run.symbols = list(doc.get("symbols") or [])
        run._phase_records = list(doc.get("phases") or [])
        run.out_of_sample = doc.get("out_of_sample")
        run.summary = doc.get("summary") if isinstance(doc.get("summary"), dict) else None
        progress = doc.get("progress") or {}
        for key in ("total", "completed", "failed", "cancelled", "skipped"):
            setattr(run.progress, key, int(progress.get(key) or 0))
        return run

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    # --- execution -----------------------------------------------------------

    async def execute(self, services: RunServices, should_stop: Callable[[], bool]) -> None:
        """Run (or resume) to the end; never raises except CancelledError."""
        self.writer = services.writer
        self.status, self.error = "running", None
        self.started_at = self.started_at or time.time()
        self.finished_at = None
        self.attempts += 1
        self.progress = Progress()
        self.progress.resume_timer()
        await self.save_manifest()
        log.info("run %s (%s %s) started%s", self.id, self.spec.type, self.spec.name,
                 f", attempt {self.attempts}" if self.attempts > 1 else "")
        status = "failed"
        try:
            status = await self._execute(services, should_stop)
            if status == "completed":
                # Completed only once the report is on disk (drawn in the file worker: off the loop and its GIL).
                await services.files.call(write_run_report, self.layout.root, status="completed")
        except RunInterrupted as exc:
            status = "interrupted"
            log.info("run %s interrupted: %s", self.id, exc)
        except asyncio.CancelledError:
            status = self.cancel_reason or "interrupted"
            await self.finish(status)
            if status == "cancelled":
                await self._publish_report(services, status)
            raise
        except (DataError, StrategyError, PlanError, SpecError) as exc:
            self.error = str(exc)
            log.error("run %s failed: %s", self.id, exc)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("run %s failed", self.id)
        await self.finish(status)
        if status == "failed":
            await self._publish_report(services, status)

    async def _publish_report(self, services: RunServices, status: str) -> None:
        """A report for a run that did not complete; never raises (the run already ended)."""
        try:
            await services.files.call(write_run_report, self.layout.root, status=status)
        except Exception as exc:
            log.warning("run %s: could not write its report: %s", self.id, exc)

    async def _execute(self, services: RunServices, should_stop: Callable[[], bool]) -> str:
        executor = services.executor
        data_spec = self.spec.data
        data = await executor.submit(
            _load, data_spec.source, data_spec.symbols, data_spec.start, data_spec.end, data_spec.timeframe
        )
        self.symbols = list(data)
        grid: Sequence[Any]
        if self.spec.search is not None:
            # Searched, not swept: indexed without expanding (see search_space.py).
            grid, self.grid_dropped = ParameterSpace(self.spec.strategy.name, self.spec.strategy.grid_lists()), 0
        else:
            grid, self.grid_dropped = await executor.submit(
                _expand, self.spec.strategy.name, self.spec.strategy.grid_lists(), self.spec.strategy.skip_invalid
            )
        self.grid_size = len(grid)
        sequencer = Sequencer(
            spec=self.spec,
            run_id=self.id,
            layout=self.layout,
            data=data,
            grid=grid,
            services=services,
            progress=self.progress,
            should_stop=should_stop,
            on_change=lambda: self._phases_changed(services),
            cancelled_as=lambda: self.cancel_reason or "interrupted",
        )
        self.phases = sequencer.plans
        del data, grid  # the sequencer holds them for as long as the run needs them
        await sequencer.run()
        self.out_of_sample = sequencer.out_of_sample
        if self.spec.type == "walk_forward":
            await self.summarise(services)  # its stitched result exists only now
        await self._draw_best_cell(sequencer, services)
        failed = self.progress.failed
        if failed:
            self.error = f"{failed} container(s) failed; see their result files"
            return "failed"
        return "completed"

    async def _phases_changed(self, services: RunServices) -> None:
        """The sequencer's change callback: the summary when another phase finished, then the manifest."""
        finished = sum(1 for p in self.phases if p.status in ("completed", "failed", "cancelled"))
        if finished != self._summarised_phases:
            self._summarised_phases = finished
            await self.summarise(services)
        await self.save_manifest()

    async def summarise(self, services: RunServices) -> None:
        """Refresh :attr:`summary` from the finished phases' files (in the file worker); never raises."""
        try:
            summary = await services.files.call(
                run_summary, self.layout.root, self.phase_records(), run_type=self.spec.type,
                objective=self.spec.objective, initial_equity=self.spec.backtest.initial_equity)
        except Exception as exc:  # a summary is not worth a run
            log.warning("run %s: could not summarise its results: %s: %s", self.id, type(exc).__name__, exc)
            return
        self.summary = summary or self.summary

    async def _draw_best_cell(self, sequencer: Sequencer, services: RunServices) -> None:
        """A backtest that recorded no curves: its best cell's equity for the summary, one more backtest."""
        summary = self.summary
        cell = summary.get("cell") if summary is not None else None
        if self.spec.type != "backtest" or summary is None or "equity" in summary or not isinstance(cell, dict):
            return
        symbol, index = str(cell.get("symbol")), int(cell.get("index") or 0)
        try:
            output = await services.executor.submit(run_batch, BatchTask(
                data=sequencer.data[symbol], strategy=self.spec.strategy.name, indices=(index,),
                params=(sequencer.grid[index],), backtest=self.spec.backtest.model_dump(mode="json"),
                trace=TraceConfig(types=(), policy="minimal", window=0, stream=False, track_equity=True)))
        except Exception as exc:  # the summary goes without a sparkline
            log.warning("run %s: could not draw its best cell's equity: %s: %s", self.id, type(exc).__name__, exc)
            return
        curve = output.equity.get(str(index))
        if curve is not None and len(curve):
            self.summary = add_equity(dict(summary), curve.tolist(), self.spec.backtest.initial_equity)

    def mark_finished(self, status: str) -> None:
        """Record that the run ended with ``status`` (in memory; :meth:`finish` also saves it)."""
        self.status = status
        self.finished_at = time.time()
        self.progress.pause_timer()
        log.info("run %s %s in %.1f s (%d/%d containers)%s", self.id, self.status, self.progress.elapsed(),
                 self.progress.done, self.progress.total, f": {self.error}" if self.error else "")

    async def finish(self, status: str) -> None:
        """Record that the run ended with ``status`` and save the manifest."""
        self.mark_finished(status)
        await self.save_manifest()

    async def save_manifest(self) -> None:
        """Write manifest.json on the writer thread; a failure is kept in ``manifest_error`` and logged."""
        try:
            await self.writer.write_json(self.layout.manifest, self.manifest())
        except OSError as exc:
            if self.manifest_error is None:
                log.error("run %s: cannot write its manifest (%s); the API shows the run as it is", self.id, exc)
            self.manifest_error = f"{type(exc).__name__}: {exc}"
        else:
            if self.manifest_error is not None:
                log.info("run %s: manifest written again", self.id)
            self.manifest_error = None

    def post_manifest(self) -> None:
        """Queue a manifest write from synchronous code (submit, a run cancelled before it started)."""
        self.writer.post(self._write_or_remember, self.manifest(), what=f"manifest of run {self.id}")

    def _write_or_remember(self, doc: dict[str, Any]) -> None:
        try:
            atomic_write_json(self.layout.manifest, doc)
        except OSError as exc:
            self.manifest_error = f"{type(exc).__name__}: {exc}"
            raise

    # --- views ---------------------------------------------------------------

    def phase_records(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self.phases] if self.phases else list(self._phase_records)

    def manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "run_id": self.id,
            "name": self.spec.name,
            "type": self.spec.type,
            "status": self.status,
            "source": self.source,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "spec_fingerprint": self.spec.fingerprint(),
            "spec": self.spec.snapshot(),
            "symbols": self.symbols,
            "grid": {"size": self.grid_size, "dropped": self.grid_dropped},
            "progress": self.progress.as_dict(),
            "phases": self.phase_records(),
            "out_of_sample": self.out_of_sample,
            "summary": self.summary,
            "version": __version__,
        }

    def describe(self, *, detail: bool = False) -> dict[str, Any]:
        """What ``GET /runs`` (summary) and ``GET /runs/{id}`` (detail) show."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.spec.name,
            "type": self.spec.type,
            "strategy": self.spec.strategy.name,
            "status": self.status,
            "source": self.source,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "progress": self.progress.as_dict(),
            "results": run_headline(self.phase_records(), self.out_of_sample),
        }
        if self.summary is not None:
            out["summary"] = self.summary
        if self.manifest_error is not None:
            out["manifest_error"] = self.manifest_error
        if detail:
            out["results_dir"] = str(self.layout.root)
            out["attempts"] = self.attempts
            out["symbols"] = self.symbols
            out["grid"] = {"size": self.grid_size, "dropped": self.grid_dropped}
            out["phases"] = [
                {k: v for k, v in record.items() if k != "container_ids"} for record in self.phase_records()
            ]
            out["spec"] = self.spec.snapshot()
            out["out_of_sample"] = self.out_of_sample
        return out


def _load(source: str, symbols: Sequence[str] | None, start: Any, end: Any, timeframe: str | None) -> Any:
    return load_data(source, symbols=symbols, start=start, end=end, timeframe=timeframe)


def _expand(strategy: str, grid: dict[str, list[Any]], skip_invalid: bool) -> Any:
    return expand_valid_grid(strategy, grid, skip_invalid=skip_invalid)
