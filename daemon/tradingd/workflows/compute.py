"""The functions containers run on an executor: plain data in, plain data out.

Module-level and free of asyncio, so a thread, a process or a Dask worker can
run them; arguments are picklable (market data is numpy arrays). The one
exception is the optional indicator ``cache``, which only an executor that
``shares_memory`` receives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import psutil

from tradingd.storage.mmapstore import StoreError, is_store
from tradingd.trading.data import DataError, MarketData
from tradingd.trading.engine import DEFAULT_CHUNK_BYTES, run_sweep
from tradingd.trading.indicators import IndicatorCache
from tradingd.trading.loaders import load_market_data, load_sample_data
from tradingd.trading.outcome_filter import FilterConfig, HistoryPositions
from tradingd.trading.simulation import BacktestConfig
from tradingd.trading.strategies import get_strategy
from tradingd.trading.strategy import Strategy
from tradingd.workflows.datastore import DataRef, load_store, resolve_market_data
from tradingd.workflows.spec import SAFE_NAME, EventType, RetentionPolicy
from tradingd.workflows.tracing import EventTracer, encode_events, trade_events

__all__ = [
    "BatchOutput",
    "BatchTask",
    "TraceConfig",
    "backtest_config",
    "data_range",
    "load_data",
    "run_batch",
    "train_model",
]

_TRADE_EVENTS = frozenset({"FILL", "POSITION_OPEN", "POSITION_CLOSE"})


@dataclass(frozen=True)
class TraceConfig:
    """What a batch traces and how (the resolved phase settings)."""

    types: tuple[EventType, ...]
    policy: RetentionPolicy
    window: int
    stream: bool
    track_equity: bool


@dataclass(frozen=True)
class BatchTask:
    """One executor call: a few parameter combinations on one symbol's data."""

    data: MarketData | DataRef  # a DataRef for executors that do not share memory (see dataref.py)
    strategy: str
    indices: tuple[int, ...]
    params: tuple[Mapping[str, Any], ...]
    backtest: Mapping[str, Any]
    trace: TraceConfig
    models: tuple[Any, ...] | None = None
    # The sweep's byte budget: the container's memory grant less what it holds (None: the engine default).
    chunk_bytes: int | None = None
    # The container's whole grant when the batch was sent (a process worker over it by a margin is recycled).
    grant_bytes: int | None = None
    # Testing with spec.outcome_filter: the symbol's bars up to the batch's last bar, and the section.
    history: MarketData | DataRef | None = None
    outcome_filter: Mapping[str, Any] | None = None
    # Threads of the sweep itself (None: the engine decides); 1 when the executor already runs several.
    sweep_threads: int | None = None


@dataclass
class BatchOutput:
    """What a batch produced; ``events`` is JSON Lines when the phase streams to disk."""

    rows: list[dict[str, Any]]
    trace: dict[str, Any]
    events: bytes = b""
    # Curves stay arrays: they pickle as their bytes, hold no objects for the GC to walk, and
    # the JSON writer encodes them a slice at a time.
    equity: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = field(default_factory=dict)
    equity_times: list[str] = field(default_factory=list)
    compute_seconds: float = 0.0
    rss_bytes: int = 0


def data_range(data: MarketData) -> dict[str, Any]:
    """Bars, first and last timestamp of ``data`` (JSON-safe)."""
    n = data.n_bars
    return {
        "n_bars": n,
        "start": str(np.datetime_as_string(data.timestamps[0], unit="s")) if n else None,
        "end": str(np.datetime_as_string(data.timestamps[-1], unit="s")) if n else None,
    }


def backtest_config(spec: Mapping[str, Any], periods_per_year: float | None = None) -> BacktestConfig:
    """The engine config for a spec's ``backtest`` section."""
    return BacktestConfig(
        fill=spec.get("fill", "close"),
        commission=float(spec.get("commission", 0.0)),
        slippage_bps=float(spec.get("slippage_bps", 0.0)),
        allow_short=spec.get("direction", "long_only") == "long_short",
        initial_equity=float(spec.get("initial_equity", 10_000.0)),
        periods_per_year=periods_per_year,
    )


def run_batch(task: BatchTask, cache: IndicatorCache | None = None,
              should_stop: Callable[[], bool] | None = None) -> BatchOutput:
    """Backtest ``task.params`` on ``task.data``; metrics rows, trace summary, events.

    ``cache`` and ``should_stop`` are live objects, passed only by executors
    that share memory; ``should_stop`` is polled between engine chunks (the
    engine then raises ``SweepCancelled``), so a cancelled container's thread
    stops soon instead of finishing its batch.
    """
    started = time.perf_counter()
    data = resolve_market_data(task.data)
    trace = task.trace
    want_trades = bool(_TRADE_EVENTS.intersection(trace.types))
    strategy: str | Strategy = task.strategy
    unfiltered: list[dict[str, float]] | None = None
    if task.outcome_filter is not None and task.history is not None:
        # The same targets without the filter, on the same warm history: the side-by-side baseline.
        history = resolve_market_data(task.history)
        base = get_strategy(task.strategy)
        unfiltered = run_sweep(data, HistoryPositions(base, history), list(task.params),
                               backtest_config(task.backtest), cache=cache, should_stop=should_stop,
                               models=list(task.models) if task.models is not None else None,
                               chunk_bytes=task.chunk_bytes or DEFAULT_CHUNK_BYTES).metric_rows()
        strategy = HistoryPositions(base, history, FilterConfig.from_spec(task.outcome_filter, task.backtest))
    result = run_sweep(
        data,
        strategy,
        list(task.params),
        backtest_config(task.backtest),
        cache=cache,
        models=list(task.models) if task.models is not None else None,
        keep_trades_for="all" if want_trades else None,
        keep_equity_for="all" if trace.track_equity else None,
        chunk_bytes=task.chunk_bytes or DEFAULT_CHUNK_BYTES,
        workers=task.sweep_threads,
        should_stop=should_stop,
    )
    rows = [
        {"index": index, "params": dict(params), "metrics": metrics}
        for index, params, metrics in zip(task.indices, result.params, result.metric_rows(), strict=True)
    ]
    if unfiltered is not None and isinstance(strategy, HistoryPositions):
        for row, baseline, tally in zip(rows, unfiltered, strategy.tallies, strict=True):
            row["unfiltered_metrics"] = baseline
            row["outcome_filter"] = tally.as_dict()
    tracer = EventTracer(trace.types, trace.policy, trace.window)
    equity_times: list[str] = []
    if trace.track_equity:
        equity_times = [str(t) for t in np.datetime_as_string(data.timestamps, unit="s")]
    streamed: list[dict[str, Any]] = []
    equity: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
    for position, index in enumerate(task.indices):
        records = result.trades[position].to_dicts() if position in result.trades else []
        curve = result.equity.get(position)
        if curve is not None:
            equity[str(index)] = np.array(curve, dtype=np.float64)  # its own copy, not a view of a block
        for event in trade_events(index, records, types=trace.types, equity=curve, times=equity_times or None):
            tracer.record(event)
            if trace.stream:
                streamed.append(event)
    return BatchOutput(
        rows=rows,
        trace=tracer.summary(),
        events=encode_events(streamed) if streamed else b"",
        equity=equity,
        equity_times=equity_times,
        compute_seconds=time.perf_counter() - started,
        rss_bytes=psutil.Process().memory_info().rss,
    )


def train_model(data: MarketData, strategy: str, params: Mapping[str, Any]) -> Any:
    """Fit a trainable strategy's model on ``data`` (a training slice)."""
    return get_strategy(strategy).train(data, params)


def load_data(
    source: str,
    *,
    symbols: Sequence[str] | None,
    start: date | datetime | None,
    end: date | datetime | None,
    timeframe: str | None,
) -> dict[str, MarketData]:
    """Market data for a spec's ``data`` section; symbol names must be path-safe."""
    if source == "sample":
        found = load_sample_data(symbols, start=start, end=end)
    elif is_store(source):
        # Memory-mapped columns: every container (and worker process) shares the page cache.
        try:
            mapped = load_store(source, symbols)
        except StoreError as exc:
            raise DataError(str(exc), path=source) from None
        found = {name: data.between(start, end) for name, data in mapped.items()}
    else:
        found = load_market_data(source, symbols=symbols, start=start, end=end, timeframe=timeframe)
    for symbol in found:
        if not SAFE_NAME.fullmatch(symbol):
            raise DataError(f"symbol {symbol!r} cannot be used in result paths (letters, digits, '_', '.', '-')",
                            path=source)
    return found
