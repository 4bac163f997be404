"""A container: one unit of work — (phase, symbol, parameter chunk).

An async context manager::

    async with container:        # setup: open the event stream
        await container.run()    # compute on the executor, batch by batch
    # teardown: ALWAYS writes containers/<id>.json atomically

Teardown runs on success, on an exception (status ``failed``, with the error)
and on cancellation (status ``cancelled``); it never swallows the exception.
Every durable write (closing the event stream, the result file, the journal)
is one job for the run's :class:`~tradingd.workflows.writer.DurableWriter`:
the loop only waits, and the wait is shielded, so a second cancellation cannot
interrupt the write. Stream appends happen in a worker thread as batches end.

A completed container with closed trades and a :class:`TradeJournal` is not
``completed`` on disk until its trades are safe: the journal marker is staged
first, then the result file (which holds every trade and its journal entry)
is written, then the journal is appended and the marker removed. A journal
that cannot be written leaves the marker, and the outbox retries it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import numpy as np
import psutil

from tradingd.trading.data import MarketData
from tradingd.trading.indicators import IndicatorCache
from tradingd.workflows.compute import BatchOutput, BatchTask, TraceConfig, data_range, run_batch
from tradingd.workflows.container_memory import ContainerMemory, WorkBudget
from tradingd.workflows.executor import Executor
from tradingd.workflows.file_worker import FileWorker
from tradingd.workflows.footprint import container_footprint
from tradingd.workflows.layout import PhaseLayout, read_json
from tradingd.workflows.spec import PhaseSettings
from tradingd.workflows.tracing import EventBudgets, EventStream, empty_summary, merge_summaries
from tradingd.workflows.trades import ClosedTrades, TradeJournal
from tradingd.workflows.writer import DurableWriter

__all__ = [
    "CONTAINER_FORMAT",
    "AdmissionGate",
    "ClosedTrades",
    "Container",
    "ContainerStatus",
    "ModelStore",
    "RunServices",
    "TradeJournal",
    "load_completed",
]

log = logging.getLogger(__name__)

CONTAINER_FORMAT = "tradingd-container/1"
ContainerStatus = Literal["pending", "running", "completed", "failed", "cancelled"]


class AdmissionGate(Protocol):
    """``memory.cleanup.Admission``: containers wait while memory is critical."""

    @property
    def paused(self) -> bool: ...

    async def wait(self) -> None: ...


class ModelStore(Protocol):
    """``memory.models.ModelRegistry``: trained models, persisted and reloadable."""

    def register(self, key: str, model: object) -> None: ...

    def get(self, key: str) -> Any: ...

    def use(self, key: str) -> AbstractContextManager[Any]: ...

    def __contains__(self, key: str) -> bool: ...


@dataclass
class RunServices:
    """What containers may use besides the executor; every piece is optional."""

    executor: Executor
    indicator_cache: IndicatorCache | None = None
    models: ModelStore | None = None
    admission: AdmissionGate | None = None
    work: WorkBudget | None = None
    journal: TradeJournal | None = None
    # The one writer of durable files (its thread starts with the first write).
    writer: DurableWriter = field(default_factory=DurableWriter)
    # Aggregation and reports (whole-file JSON parses); the daemon's runs them in a helper process.
    files: FileWorker = field(default_factory=lambda: FileWorker(use_process=False))
    # Caps the bytes of event streams per phase (retention.max_event_bytes_per_phase).
    event_budgets: EventBudgets | None = None
    # Models trained in this process, for when there is no registry (one-shot runs).
    local_models: dict[str, Any] = field(default_factory=dict)
    # Where smart searches keep their Optuna studies (default: the run's results dir).
    search_dir: Path | None = None


def load_completed(path: Path, *, container_id: str, fingerprint: str) -> dict[str, Any] | None:
    """The result document at ``path`` if it is a completed result of this very spec."""
    doc = read_json(path)
    if doc is None or doc.get("format") != CONTAINER_FORMAT or doc.get("status") != "completed":
        return None
    same = doc.get("container_id") == container_id and doc.get("spec_fingerprint") == fingerprint
    return doc if same and isinstance(doc.get("metrics"), list) else None


class Container:
    """One (phase, symbol, parameter chunk); see the module docstring."""

    def __init__(
        self,
        *,
        container_id: str,
        run_id: str,
        phase: str,
        layout: PhaseLayout,
        data: MarketData,
        strategy: str,
        indices: Sequence[int],
        params: Sequence[Mapping[str, Any]],
        backtest: Mapping[str, Any],
        settings: PhaseSettings,
        fingerprint: str,
        services: RunServices,
        batch_size: int,
        history: MarketData | None = None,
        outcome_filter: Mapping[str, Any] | None = None,
    ) -> None:
        self.id = container_id
        self.run_id = run_id
        self.phase = phase
        self.layout = layout
        self.path = layout.container(container_id)
        self.symbol = data.symbol
        self.strategy = strategy
        self.indices = list(indices)
        self.params = [dict(p) for p in params]
        self.settings = settings
        self.fingerprint = fingerprint
        self.status: ContainerStatus = "pending"
        self.error: BaseException | None = None
        self._data: MarketData | None = data
        self._data_info = {"version": data.version, "timeframe": data.timeframe, **data_range(data)}
        self._backtest = dict(backtest)
        self._services = services
        self._batch_size = max(1, batch_size)
        self._models: list[Any] | None = None
        self._history = history  # outcome_filter: the bars up to this container's last one
        self._outcome_filter = dict(outcome_filter) if outcome_filter is not None else None
        self._trace = TraceConfig(
            types=settings.event_tracing,
            policy=settings.retention_policy,
            window=settings.retention_window,
            stream=settings.results_storage == "disk" and bool(settings.event_tracing),
            track_equity=settings.track_equity,
        )
        self._rows: list[dict[str, Any]] = []
        self._summary = empty_summary(settings.event_tracing, settings.retention_policy, settings.retention_window)
        self._equity: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
        self._equity_times: list[str] = []
        self._stream: EventStream | None = None
        self._writer = services.writer
        self._trades: tuple[ClosedTrades, list[dict[str, Any]]] | None = None  # waiting for the journal
        self._stop = threading.Event()  # tells a running batch (thread executor) to give up
        self._started_at = 0.0
        self._started = 0.0
        self._compute_seconds = 0.0
        self._batches_done = 0
        self._peak_rss = 0
        self._memory = ContainerMemory(services.work, run_id, phase, container_id, strategy)

    def __repr__(self) -> str:
        return f"<Container {self.phase}/{self.id} {self.status} {len(self._rows)}/{len(self.params)} combos>"

    @property
    def n_batches(self) -> int:
        return -(-len(self.params) // self._batch_size)

    @property
    def work_units(self) -> int:
        """Bars x combinations: what ETA estimates are weighted by."""
        return int(self._data_info["n_bars"]) * len(self.params)

    def attach_models(self, models: Sequence[Any]) -> None:
        """One trained model per parameter combination (trainable strategies)."""
        if len(models) != len(self.params):
            raise ValueError(f"{len(models)} models for {len(self.params)} combinations")
        self._models = list(models)

    # --- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Container:
        self.status = "running"
        self._started_at = time.time()
        self._started = time.perf_counter()
        self._peak_rss = psutil.Process().memory_info().rss
        try:
            await self._memory.acquire(container_footprint(self.settings, strategy=self.strategy, params=self.params,
                n_bars=int(self._data_info["n_bars"]), batch_size=self._batch_size, streams_events=self._trace.stream,
                journals=self._services.journal is not None, trained=self._models is not None))
            if self._trace.stream:
                # Opening and appending to the stream are not the durable part (its close is, on the
                # writer): a worker thread, so a container never waits behind another's result file.
                budgets = self._services.event_budgets
                budget = budgets.for_phase(self.layout.events_dir) if budgets is not None else None
                self._stream = await asyncio.to_thread(EventStream, self.layout.events(self.id), budget)
        except BaseException as exc:
            await self._teardown(exc)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        await self._teardown(exc)
        return False

    async def run(self) -> None:
        """Compute every batch on the executor; stream events; hand closed trades on."""
        if self._data is None:
            raise RuntimeError(f"container {self.id} already ran")
        share = self._services.executor.shares_memory
        cache = self._services.indicator_cache if share else None
        should_stop = self._stop.is_set if share else None
        for start in range(0, len(self.params), self._batch_size):
            stop = start + self._batch_size
            task = BatchTask(
                data=self._data,
                strategy=self.strategy,
                indices=tuple(self.indices[start:stop]),
                params=tuple(self.params[start:stop]),
                backtest=self._backtest,
                trace=self._trace,
                models=tuple(self._models[start:stop]) if self._models is not None else None,
                **self._memory.batch_budget(),
                history=self._history, sweep_threads=1 if self._services.executor.max_workers > 1 else None,
                outcome_filter=self._outcome_filter,
            )
            output: BatchOutput = await self._services.executor.submit(run_batch, task, cache, should_stop)
            self._absorb(output)
            if self._stream is not None and output.events:
                await asyncio.to_thread(self._stream.write, output.events)
        await self._prepare_trades()

    def _absorb(self, output: BatchOutput) -> None:
        self._rows.extend(output.rows)
        self._summary = merge_summaries(self._summary, output.trace)
        self._equity.update(output.equity)
        self._equity_times = self._equity_times or output.equity_times
        self._compute_seconds += output.compute_seconds
        self._peak_rss = max(self._peak_rss, output.rss_bytes)
        self._batches_done += 1

    async def _prepare_trades(self) -> None:
        """Compute the trades' journal entries (market features at entry: CPU, so off the loop)."""
        journal = self._services.journal
        trades = self._summary.get("trades")
        if journal is None or not trades or self._data is None:
            return
        by_index = {row["index"]: row["params"] for row in self._rows}
        data = self._data

        def prepare() -> tuple[ClosedTrades, list[dict[str, Any]]]:  # thousands of trades: not on the loop
            batch = ClosedTrades(
                run_id=self.run_id, phase=self.phase, container_id=self.id, symbol=self.symbol,
                strategy=self.strategy, data=data, backtest=self._backtest,
                trades=[{**trade, "params": by_index.get(trade["combo"], {})} for trade in trades])
            return batch, journal.prepare(batch)

        self._trades = await asyncio.to_thread(prepare)

    async def _teardown(self, exc: BaseException | None) -> None:
        if exc is None:
            self.status = "completed"
        elif isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
            self.status = "cancelled"
            self._stop.set()
        else:
            self.status = "failed"
            self.error = exc
        try:
            # Shielded: a second cancellation abandons this wait, never the write.
            await self._writer.call(self._write_result, exc, time.time())
        except OSError as err:
            # No result file (a full disk...): whatever it computed, the container did not complete.
            self.status, self.error = "failed", err
            if isinstance(exc, asyncio.CancelledError):
                raise exc from err  # a cancellation stays a cancellation
            raise
        finally:
            self._memory.release(completed=self.status == "completed")  # after the write: it is measured too
            # Drop what the result held; the file is the record from now on.
            self._data = None
            self._history = None
            self._models = None
            self._trades = None
            self._rows = []
            self._equity = {}
            self._equity_times = []
            self._summary = empty_summary(self.settings.event_tracing, self.settings.retention_policy,
                                          self.settings.retention_window)
        log.debug("container %s/%s %s", self.phase, self.id, self.status)

    def _write_result(self, exc: BaseException | None, finished_at: float) -> None:
        """On the writer thread: close the stream, stage the trades, write the result, journal them."""
        stream_error: BaseException | None = None
        if self._stream is not None:
            try:
                self._stream.close()
            except OSError as err:
                stream_error = err
                log.error("container %s/%s: closing the event stream failed: %s", self.phase, self.id, err)
        journal = self._services.journal
        pending = self._trades if self.status == "completed" and journal is not None else None
        marker = self.layout.journal_marker(self.id)
        if pending is not None and journal is not None:
            try:
                journal.stage(marker)
            except OSError as err:
                # Without the marker nothing would retry the journal: not completed.
                self.status, self.error, exc, pending = "failed", err, err, None
                log.error("container %s/%s: cannot stage its trades for the journal: %s", self.phase, self.id, err)
        doc = self._document(finished_at, exc, stream_error, pending[1] if pending is not None else None)
        self._writer.write_document(self.path, doc)
        if pending is not None and journal is not None:
            journal.commit(marker, *pending)

    def _document(self, finished_at: float, exc: BaseException | None, stream_error: BaseException | None,
                  journal: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        events: dict[str, Any] = dict(self._summary)
        events["storage"] = self.settings.results_storage
        if self._stream is not None:
            events["file"] = f"events/{self.id}.jsonl"
            events["bytes"] = self._stream.bytes_written
            if self._stream.dropped_bytes:  # over retention.max_event_bytes_per_phase
                events["dropped_bytes"] = self._stream.dropped_bytes
        doc: dict[str, Any] = {
            "format": CONTAINER_FORMAT,
            "container_id": self.id,
            "run_id": self.run_id,
            "phase": self.phase,
            "symbol": self.symbol,
            "strategy": self.strategy,
            "status": self.status,
            "spec_fingerprint": self.fingerprint,
            "data": self._data_info,
            "settings": self.settings.as_dict(),
            "parameters": [{"index": i, "params": p} for i, p in zip(self.indices, self.params, strict=True)],
            "metrics": self._rows,
            "timings": {
                "started_at": self._started_at,
                "finished_at": finished_at,
                "wall_seconds": round(time.perf_counter() - self._started, 6),
                "compute_seconds": round(self._compute_seconds, 6),
                "batches": self.n_batches,
                "batches_done": self._batches_done,
            },
            "memory": self._memory.record(self._peak_rss),
            "events": events,
        }
        if self._equity:
            doc["equity"] = {"timestamps": self._equity_times, "curves": self._equity}
        if journal is not None:
            doc["journal"] = journal  # one entry per events.trades item: rebuilds the outcome journal
        if exc is not None and self.status == "failed":
            doc["error"] = {
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": traceback.format_exception(exc)[-6:],
            }
        elif self.status == "cancelled":
            doc["error"] = {"type": "Cancelled", "message": "cancelled before it finished"}
        if stream_error is not None:
            doc["events"]["error"] = str(stream_error)
        return doc

