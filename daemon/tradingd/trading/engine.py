"""Vectorized backtests across a parameter grid, in chunks that fit a byte budget.

``run_sweep`` turns a strategy + grid into target positions chunk by chunk and
simulates each chunk (bars x combinations at once). The simulation model is
in ``tradingd.trading.simulation`` and docs/engine.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.data import MarketData
from tradingd.trading.indicators import IndicatorCache, LocalIndicatorCache
from tradingd.trading.metrics import (
    DENSE_METRICS,
    TRADE_METRICS,
    cagr,
    equity_metrics,
    trade_metrics,
    validate_metric_names,
)
from tradingd.trading.results import BacktestResult, TradeRecords
from tradingd.trading.simulation import BacktestConfig, ChunkOutcome, simulate_chunk
from tradingd.trading.strategies import get_strategy
from tradingd.trading.strategy import Strategy

__all__ = ["DEFAULT_CHUNK_BYTES", "KeepSpec", "SweepCancelled", "run_sweep"]

log = logging.getLogger(__name__)

KeepSpec = Collection[int] | Literal["all"] | None

DEFAULT_CHUNK_BYTES = 64 * 2**20
# Working-set bytes per (bar, combination) cell: the positions plus the
# simulation's temporaries, measured with tracemalloc on the sweep bench
# (sparse: fills and trade stats only; dense: equity curve and its metrics).
_CELL_BYTES_SPARSE = 56
_CELL_BYTES_DENSE = 72
# Chunks above a few MB stop paying off (the temporaries fall out of cache),
# so the budget is an upper bound, not a target.
_FAST_CHUNK_BYTES = 8 * 2**20


class SweepCancelled(Exception):
    """``should_stop`` returned True between two chunks."""


def _keep_set(spec: KeepSpec, k: int, what: str) -> frozenset[int]:
    if spec is None:
        return frozenset()
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(f"{what} must be 'all', None or indices, got {spec!r}")
        return frozenset(range(k))
    out = frozenset(int(i) for i in spec)
    bad = sorted(i for i in out if not 0 <= i < k)
    if bad:
        raise ValueError(f"{what} has indices outside 0..{k - 1}: {bad[:5]}")
    return out


def _columns_per_chunk(n_bars: int, chunk_bytes: int, *, dense: bool) -> int:
    """How many combinations one chunk may hold within ``chunk_bytes``."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    cell = _CELL_BYTES_DENSE if dense else _CELL_BYTES_SPARSE
    budget = min(chunk_bytes, _FAST_CHUNK_BYTES)
    return max(1, budget // (max(n_bars, 1) * cell))


class _Accumulator:
    """Collects chunk outcomes into per-combination arrays and kept details."""

    def __init__(self, data: MarketData, config: BacktestConfig, k: int, metrics: Collection[str] | None,
                 keep_trades_for: KeepSpec, keep_equity_for: KeepSpec) -> None:
        self.data = data
        self.config = config
        self.names = validate_metric_names(metrics)
        self.metrics = {name: np.zeros(k) for name in self.names}
        self.keep_trades = _keep_set(keep_trades_for, k, "keep_trades_for")
        self.keep_equity = _keep_set(keep_equity_for, k, "keep_equity_for")
        self.trades: dict[int, TradeRecords] = {}
        self.equity: dict[int, NDArray[np.float64]] = {}
        self.dense = bool(DENSE_METRICS & set(self.names))
        # Shorts may ruin between fills, which only the dense curve reveals.
        self.dense_work = self.dense or config.allow_short
        self.ppy = config.periods_per_year or data.periods_per_year
        fill = data.open if config.fill == "next_open" else data.close
        self.fill_price = np.ascontiguousarray(fill, dtype=np.float64)
        self.close = np.ascontiguousarray(data.close, dtype=np.float64)

    def _run(self, targets: NDArray[np.float64], *, dense: bool) -> ChunkOutcome:
        cfg = self.config
        return simulate_chunk(targets, self.fill_price, self.close, next_open=cfg.fill == "next_open",
                              commission=cfg.commission, slip=cfg.slippage_bps / 10_000.0,
                              initial_equity=cfg.initial_equity, dense=dense,
                              may_ruin=cfg.allow_short and float(targets.min()) < 0.0)

    def add(self, offset: int, positions: NDArray[Any]) -> None:
        """Simulate ``positions`` (bars x chunk) for combinations ``offset:offset+chunk``."""
        n, width = positions.shape
        if n != self.data.n_bars:
            raise ValueError(f"positions have {n} bars, data {self.data.n_bars}")
        targets = np.asarray(positions, dtype=np.float64)
        lowest, highest = float(targets.min()), float(targets.max())  # NaN propagates
        if not (lowest >= -1.0 and highest <= 1.0):
            bar, col = np.argwhere(~(np.abs(targets) <= 1.0))[0]
            raise ValueError(f"combination {offset + col}: target position {targets[bar, col]} at bar "
                             f"{bar} is not in [-1, 1]")
        if lowest < 0.0 and not self.config.allow_short:
            targets = np.maximum(targets, 0.0)  # a new array: the caller's stays untouched
        outcome = self._run(targets, dense=self.dense)
        span = slice(offset, offset + width)
        m = self.metrics
        if "total_return" in m:
            m["total_return"][span] = outcome.total_return
        if "cagr" in m:
            m["cagr"][span] = cagr(outcome.total_return, n, self.ppy)
        if "exposure" in m:
            m["exposure"][span] = outcome.exposure
        if TRADE_METRICS & set(m):
            t = outcome.trades
            for name, values in trade_metrics(width, t.col, t.ret, t.pnl).items():
                if name in m:
                    m[name][span] = values
        if self.dense and outcome.equity is not None:
            for name, values in equity_metrics(outcome.equity, self.config.initial_equity, self.ppy,
                                               self.names).items():
                m[name][span] = values
        self._keep(offset, width, targets, outcome)

    def _keep(self, offset: int, width: int, targets: NDArray[np.float64], outcome: ChunkOutcome) -> None:
        trades_here = sorted(i - offset for i in self.keep_trades if offset <= i < offset + width)
        ts = self.data.timestamps
        for local in trades_here:
            t = outcome.trades.select(outcome.trades.col == local)
            self.trades[offset + local] = TradeRecords(
                entry_bar=t.entry_bar.astype(np.int64), exit_bar=t.exit_bar.astype(np.int64),
                entry_time=ts[t.entry_bar], exit_time=ts[t.exit_bar], side=t.side, size=t.size,
                entry_price=t.entry_price, exit_price=t.exit_price, ret=t.ret, pnl=t.pnl,
                is_open=t.is_open)
        equity_here = sorted(i - offset for i in self.keep_equity if offset <= i < offset + width)
        if not equity_here:
            return
        curves = outcome.equity
        columns = equity_here
        if curves is None:  # sparse chunk: recompute only the kept columns densely
            curves = self._run(np.ascontiguousarray(targets[:, equity_here]), dense=True).equity
            columns = list(range(len(equity_here)))
        if curves is None:
            raise AssertionError("dense simulation returned no equity")
        for local, column in zip(equity_here, columns, strict=True):
            self.equity[offset + local] = np.ascontiguousarray(curves[:, column])

    def result(self, params: list[dict[str, Any]]) -> BacktestResult:
        return BacktestResult(symbol=self.data.symbol, data_version=self.data.version, params=params,
                              metrics=self.metrics, timestamps=self.data.timestamps,
                              n_bars=self.data.n_bars, config=self.config, trades=self.trades,
                              equity=self.equity)


def run_sweep(data: MarketData, strategy: str | Strategy, grid: Sequence[Mapping[str, Any]],
              config: BacktestConfig | None = None, *, cache: IndicatorCache | None = None,
              models: Sequence[Any] | None = None, metrics: Collection[str] | None = None,
              keep_trades_for: KeepSpec = None, keep_equity_for: KeepSpec = None,
              chunk_bytes: int = DEFAULT_CHUNK_BYTES,
              should_stop: Callable[[], bool] | None = None) -> BacktestResult:
    """Backtest ``strategy`` over every combination of ``grid`` on ``data``.

    The grid is validated up front (StrategyError). Combinations are processed
    in chunks sized by ``chunk_bytes``; ``should_stop`` is polled between
    chunks (raises SweepCancelled). ``models`` (trainable strategies) holds
    one model per grid entry.
    """
    config = config or BacktestConfig()
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    params = strat.validate_grid(grid)
    k = len(params)
    if k == 0:
        raise ValueError("empty parameter grid")
    if models is not None and len(models) != k:
        raise ValueError(f"{len(models)} models for {k} grid entries")
    acc = _Accumulator(data, config, k, metrics, keep_trades_for, keep_equity_for)
    step = _columns_per_chunk(data.n_bars, chunk_bytes, dense=acc.dense_work)
    # Without a shared cache, chunks still share indicators within this sweep.
    cache = cache if cache is not None else LocalIndicatorCache()
    for start in range(0, k, step):
        if should_stop is not None and should_stop():
            raise SweepCancelled(f"stopped after {start} of {k} combinations")
        chunk_models = None if models is None else models[start:start + step]
        positions = strat.positions(data, params[start:start + step], cache=cache, models=chunk_models)
        acc.add(start, positions)
    log.debug("swept %s on %s: %d combinations x %d bars", strat.name, data.symbol, k, data.n_bars)
    return acc.result(params)
