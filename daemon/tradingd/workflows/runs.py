"""Runs and the run queue: what the daemon is working on, and what it did before.

A :class:`WorkflowRun` (:mod:`tradingd.workflows.workflow_run`, re-exported
here) is one execution of a spec under a run id: it loads the data, expands
the grid, hands both to a sequencer and keeps ``manifest.json`` current. The
:class:`RunQueue` owns every run task: it submits (with duplicate-id checks),
cancels (``DELETE /runs/{id}``), resumes runs whose manifest says they did not
finish, and drains on shutdown — no new containers, in-flight ones get
``graceful_timeout``, then the rest are cancelled and their teardown writes
``status: cancelled``.

Run statuses: ``queued`` → ``running`` → ``completed`` | ``failed`` |
``cancelled`` (by a user) | ``interrupted`` (by a shutdown; resumed at the
next start, like ``queued`` and ``running`` left behind by a crash).
A ``failed``, ``cancelled`` or ``interrupted`` run can be resumed on request
(:meth:`RunQueue.resume_run`, ``POST /runs/{id}/resume``): once a full disk
has space again, its completed containers are kept and the rest run.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tradingd.reports import write_phase_report, write_run_report
from tradingd.tasks import TaskScheduler
from tradingd.workflows.container import RunServices
from tradingd.workflows.layout import RunLayout, read_json
from tradingd.workflows.retention import RunView
from tradingd.workflows.spec import MAX_NAME_LENGTH, SpecError, WorkflowSpec, check_safe_name
from tradingd.workflows.workflow_run import FINISHED, MANIFEST_FORMAT, RESUMABLE, WorkflowRun

__all__ = [
    "FINISHED",
    "MANIFEST_FORMAT",
    "RESUMABLE",
    "DuplicateRun",
    "QueueClosed",
    "RunActive",
    "RunFinished",
    "RunNotFound",
    "RunQueue",
    "WorkflowRun",
    "new_run_id",
    "startup_run_id",
]

log = logging.getLogger(__name__)


class DuplicateRun(Exception):
    """A run with this id exists (in the queue or in the results directory)."""


class RunNotFound(KeyError):
    """No run with this id."""


class RunFinished(Exception):
    """The run already finished; there is nothing to cancel."""


class QueueClosed(RuntimeError):
    """The daemon is stopping and accepts no new runs."""


class RunActive(Exception):
    """The run is queued or running (or completed): there is nothing to resume."""


def new_run_id(name: str, now: float | None = None) -> str:
    """A time-sortable id: ``20250102-030405-a1b2c3-<name>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    run_id = f"{stamp}-{secrets.token_hex(3)}-{name}"[:MAX_NAME_LENGTH]
    return check_safe_name(run_id, "run id")


def startup_run_id(spec: WorkflowSpec) -> str:
    """The id of a startup workflow: the same spec gives the same id, so restarts do not redo it."""
    return spec.run_id or check_safe_name(f"{spec.name}-{spec.fingerprint()[:12]}"[:MAX_NAME_LENGTH], "run id")


class RunQueue:
    """Owns every run task; see the module docstring."""

    def __init__(self, results_dir: Path, services: RunServices, *, max_concurrent_runs: int = 2) -> None:
        self.results_dir = results_dir
        self.services = services
        self.runs: dict[str, WorkflowRun] = {}
        self._scheduler = TaskScheduler("runs", limit=max_concurrent_runs)
        self._draining = False
        # Called (on the loop) when a run's task ends: retention checks its bounds then.
        self.on_settled: Callable[[WorkflowRun], None] | None = None

    def __repr__(self) -> str:
        active = sum(1 for r in self.runs.values() if not r.finished)
        return f"<RunQueue {len(self.runs)} runs, {active} active{' closed' if self._scheduler.closed else ''}>"

    @property
    def accepting(self) -> bool:
        return not self._scheduler.closed

    def draining(self) -> bool:
        return self._draining

    # --- start -----------------------------------------------------------------

    def scan(self) -> list[WorkflowRun]:
        """Load the runs in the results directory; return those to resume."""
        to_resume: list[WorkflowRun] = []
        if not self.results_dir.is_dir():
            return to_resume
        for entry in sorted(self.results_dir.iterdir()):
            doc = read_json(entry / "manifest.json") if entry.is_dir() else None
            if doc is None or doc.get("format") != MANIFEST_FORMAT or doc.get("run_id") != entry.name:
                continue
            try:
                run = WorkflowRun.from_manifest(doc, self.results_dir, writer=self.services.writer)
            except (SpecError, ValueError) as exc:
                log.warning("ignoring run %s: its manifest cannot be used (%s)", entry.name, exc)
                continue
            self.runs[run.id] = run
            if run.status in RESUMABLE:
                to_resume.append(run)
        return to_resume

    async def start(self, startup: Sequence[WorkflowSpec] = ()) -> None:
        """Resume unfinished runs, then submit the startup workflows not already run.

        Manifests are read, and reports a crash lost are drawn again, off the loop.
        """
        for run in await asyncio.to_thread(self.scan):
            log.info("resuming run %s (left %s)", run.id, run.status)
            self.resume(run)
        completed = [(run.layout.root, [run.layout.phase(str(r.get("name"))).root for r in run.phase_records()])
                     for run in self.runs.values() if run.status == "completed"]
        if completed:
            await self.services.files.call(restore_reports, completed)
        for spec in startup:
            run_id = startup_run_id(spec)
            if run_id in self.runs:
                log.info("startup workflow %s: run %s is already %s", spec.name, run_id, self.runs[run_id].status)
                continue
            self.submit(spec, run_id=run_id, source="startup")
        for run in [r for r in self.runs.values() if r.finished and r.summary is None and r.phase_records()]:
            await run.summarise(self.services)  # finished under a daemon that did not summarise runs
            if run.summary is not None:
                run.post_manifest()

    # --- submit / cancel -----------------------------------------------------------

    def submit(self, spec: WorkflowSpec, *, run_id: str | None = None, source: str = "api") -> WorkflowRun:
        """Queue a run of ``spec``; raises QueueClosed or DuplicateRun."""
        if not self.accepting:
            raise QueueClosed("the daemon is stopping; no new runs")
        run_id = check_safe_name(run_id or spec.run_id or new_run_id(spec.name), "run id")
        if run_id in self.runs or (self.results_dir / run_id).exists():
            raise DuplicateRun(f"run {run_id!r} already exists")
        run = WorkflowRun(spec, run_id, self.results_dir, source=source, writer=self.services.writer)
        run.post_manifest()  # claims the id on disk (the writer runs it before anything else of this run)
        self.runs[run_id] = run
        self._launch(run)
        log.info("queued run %s (%s, %s)", run_id, spec.type, source)
        return run

    def resume(self, run: WorkflowRun) -> None:
        """Run again a run loaded from its manifest (:meth:`WorkflowRun.from_manifest`)."""
        if not self.accepting:
            raise QueueClosed("the daemon is stopping; no new runs")
        self.runs[run.id] = run
        self._launch(run)

    def submit_or_resume(self, spec: WorkflowSpec, *, run_id: str | None, source: str) -> WorkflowRun:
        """Run ``spec``, resuming run ``run_id`` if the results directory holds it unfinished.

        A run ``run_id`` that already finished is returned as it is (its
        ``task`` is None); one started from another spec raises SpecError.
        """
        if run_id is not None:
            layout = RunLayout(self.results_dir, check_safe_name(run_id, "run id"))
            doc = read_json(layout.manifest)
            if doc is not None and doc.get("format") == MANIFEST_FORMAT:
                run = WorkflowRun.from_manifest(doc, self.results_dir, writer=self.services.writer)
                if run.spec.fingerprint() != spec.fingerprint():
                    raise SpecError([f"run {run_id} was started from a different spec; choose another --run-id"])
                if run.finished:
                    self.runs[run.id] = run
                    return run
                run.source = source
                self.resume(run)
                return run
        return self.submit(spec, run_id=run_id, source=source)

    def _launch(self, run: WorkflowRun) -> None:
        task = self._scheduler.spawn(self._drive(run), name=f"run {run.id}")
        run.task = task
        task.add_done_callback(lambda _: self._settle(run))

    async def _drive(self, run: WorkflowRun) -> None:
        if self._draining:
            return  # got its slot during the drain: it stays queued and resumes at the next start
        await run.execute(self.services, self.draining)

    def _settle(self, run: WorkflowRun) -> None:
        if run.status == "queued" and run.task is not None and run.task.cancelled():
            run.mark_finished(run.cancel_reason or "interrupted")  # cancelled while it waited for a slot
            run.post_manifest()
        if self.on_settled is not None:
            self.on_settled(run)

    def resume_run(self, run_id: str) -> WorkflowRun:
        """Run again a ``failed``, ``cancelled`` or ``interrupted`` run (raises RunNotFound, RunActive, QueueClosed)."""
        run = self.get(run_id)
        if run.status not in ("failed", "cancelled", "interrupted") or (run.task is not None and not run.task.done()):
            raise RunActive(f"run {run_id!r} is {run.status}; only failed, cancelled or interrupted runs resume")
        run.cancel_reason = None
        self.resume(run)
        log.info("resuming run %s (was %s) on request", run.id, run.status)
        return run

    async def retry_manifests(self) -> None:
        """Write again the manifests whose last write failed (a full disk that has space again)."""
        for run in list(self.runs.values()):
            if run.manifest_error is not None and (run.task is None or run.task.done()):
                await run.save_manifest()

    def forget(self, run_id: str) -> None:
        """Drop a finished run retention removed from disk (a run still active stays)."""
        run = self.runs.get(run_id)
        if run is not None and run.finished:
            del self.runs[run_id]

    def retention_view(self) -> list[RunView]:
        """Every known run as retention sees it (on the loop: a consistent snapshot)."""
        return [RunView(r.id, r.status, r.finished_at or r.created_at) for r in self.runs.values()]

    def get(self, run_id: str) -> WorkflowRun:
        try:
            return self.runs[run_id]
        except KeyError:
            raise RunNotFound(run_id) from None

    def list(self, status: str | None = None) -> list[WorkflowRun]:
        """Every known run (with ``status``, only those), newest first."""
        runs = [r for r in self.runs.values() if status is None or r.status == status]
        return sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)

    async def cancel(self, run_id: str, *, wait_seconds: float = 10.0) -> WorkflowRun:
        """Cancel a run; returns once its containers have torn down (or after ``wait_seconds``)."""
        run = self.get(run_id)
        if run.finished or run.task is None or run.task.done():
            raise RunFinished(f"run {run_id!r} is already {run.status}")
        run.cancel_reason = "cancelled"
        run.task.cancel("cancelled by request")
        await asyncio.wait({run.task}, timeout=wait_seconds)
        return run

    # --- stop --------------------------------------------------------------------

    async def close(self, graceful_timeout: float, *, hurry: asyncio.Event | None = None) -> None:
        """Refuse new runs, let in-flight containers finish, then cancel what is left. Idempotent.

        ``hurry`` (the second signal) ends the graceful wait at once.
        """
        self._draining = True
        active = [run for run in self.runs.values() if run.task is not None and not run.task.done()]
        for run in active:
            # Cancelled by the drain (not by a user): resumable at the next start.
            run.cancel_reason = run.cancel_reason or "interrupted"
        if active:
            log.info("waiting up to %.1f s for %d run(s) to reach a safe point", graceful_timeout, len(active))
        # Cancelled runs end quickly (their writes are queued on the writer, which the stop drains next).
        await self._scheduler.close(graceful_timeout, cancel_timeout=5.0, hurry=hurry)

    # --- stats -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        running_containers = 0
        for run in self.runs.values():
            by_status[run.status] = by_status.get(run.status, 0) + 1
            if not run.finished:
                running_containers += run.progress.running
        return {
            "total": len(self.runs),
            "by_status": by_status,
            "containers_running": running_containers,
            "accepting": self.accepting,
            "executor": self.services.executor.stats(),
        }


def restore_reports(runs: Sequence[tuple[Path, Sequence[Path]]]) -> list[str]:
    """Draw the reports of completed runs (and their phases) that have none; returns the runs' ids.

    A run is marked completed only after its report is written, so a missing
    report means the file was lost (or the run completed under an older version).
    """
    drawn: list[str] = []
    for root, phases in runs:
        if (root / "report.html").exists():
            continue
        try:
            for phase in phases:
                if (phase / "phase_summary.json").exists() and not (phase / "report.html").exists():
                    write_phase_report(phase)
            write_run_report(root)
        except Exception as exc:
            log.warning("run %s: could not restore its report: %s", root.name, exc)
            continue
        log.warning("run %s: its report was missing; written again", root.name)
        drawn.append(root.name)
    return drawn
