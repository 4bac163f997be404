"""Vectorized backtests across a parameter grid, within a byte budget.

``run_sweep`` plans the sweep (``sweep_plan.plan_sweep``: combinations per
chunk, bars per time block, everything counted against ``chunk_bytes``), then
for every chunk of combinations walks the series block by block: the strategy
gives the block's target positions and the kernel (``kernel.ChunkState``)
advances each combination, carrying its state to the next block. Results are
identical however the sweep is blocked. The model is in
``tradingd.trading.simulation`` and docs/engine.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.data import DataError, MarketData
from tradingd.trading.indicators import IndicatorCache, price_scale
from tradingd.trading.kernel import BlockPrices, ChunkState
from tradingd.trading.metrics import DENSE_METRICS, TRADE_METRICS, cagr, ratio, trade_metrics, validate_metric_names
from tradingd.trading.results import BacktestResult, TradeRecords
from tradingd.trading.simulation import BacktestConfig, TradeTable
from tradingd.trading.strategies import get_strategy
from tradingd.trading.strategy import Strategy
from tradingd.trading.sweep_plan import SweepPlan, estimate_sweep_bytes, plan_sweep

__all__ = ["DEFAULT_CHUNK_BYTES", "KeepSpec", "SweepCancelled", "estimate_sweep", "run_sweep", "sweep_plan_for"]

log = logging.getLogger(__name__)

KeepSpec = Collection[int] | Literal["all"] | None
Array = NDArray[np.float64]

DEFAULT_CHUNK_BYTES = 64 * 2**20


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


def _checked_prices(data: MarketData, fill: str) -> tuple[Array, Array]:
    """Fill and close prices, refusing data that would make metrics NaN or absurd.

    Validated data is always fine; data loaded with ``validate=False`` (the
    mmap store) is checked here, once per sweep, in one pass per column.
    """
    close = np.ascontiguousarray(data.close, dtype=np.float64)
    fill_price = np.ascontiguousarray(data.open, dtype=np.float64) if fill == "next_open" else close
    for name, column in (("close", close), ("open", fill_price)):
        if column.size and not (float(column.min()) > 0.0 and np.isfinite(column.max())):  # NaN fails too
            bad = int(np.argmax(~(np.isfinite(column) & (column > 0.0))))
            raise DataError(f"{name} at bar {bar_label(data, bad)} is {float(column[bad])}; "
                            "prices must be finite and positive", path=data.symbol)
    return fill_price, close


def bar_label(data: MarketData, bar: int) -> str:
    """``"17 (2020-01-18T00:00:00)"``: a bar index with its timestamp, for messages."""
    return f"{bar} ({np.datetime_as_string(data.timestamps[bar], unit='s')})"


class _Sweep:
    """One sweep's results, filled chunk by chunk."""

    def __init__(self, data: MarketData, strategy: Strategy, params: list[dict[str, Any]],
                 config: BacktestConfig, metrics: Collection[str] | None, keep_trades_for: KeepSpec,
                 keep_equity_for: KeepSpec) -> None:
        k = len(params)
        self.data, self.strategy, self.params, self.config = data, strategy, params, config
        self.names = validate_metric_names(metrics)
        self.metrics = {name: np.zeros(k) for name in self.names}
        self.keep_trades = _keep_set(keep_trades_for, k, "keep_trades_for")
        self.keep_equity = _keep_set(keep_equity_for, k, "keep_equity_for")
        self.trades: dict[int, TradeRecords] = {}
        self.equity: dict[int, Array] = {}
        self.dense = bool(DENSE_METRICS & set(self.names))
        self.ppy = config.periods_per_year or data.periods_per_year
        self.fill_price, self.close = _checked_prices(data, config.fill)
        self.scale = price_scale(self.close)

    def run_chunk(self, offset: int, width: int, plan: SweepPlan, cache: IndicatorCache | None,
                  models: Sequence[Any] | None) -> None:
        """Simulate combinations ``offset .. offset + width`` block by block."""
        n, cfg = self.data.n_bars, self.config
        grid = self.params[offset:offset + width]
        lookback = self.strategy.block_lookback(grid)
        kept_equity = {j - offset: np.empty(n) for j in self.keep_equity if offset <= j < offset + width}
        state = ChunkState(width, commission=cfg.commission, slip=cfg.slippage_bps / 10_000.0,
                           initial_equity=cfg.initial_equity, dense=DENSE_METRICS & frozenset(self.names),
                           may_ruin=cfg.allow_short,
                           keep_trades=frozenset(j - offset for j in self.keep_trades if offset <= j < offset + width),
                           keep_equity=kept_equity)
        whole: Array | None = None
        if lookback is None or (cache is not None and not plan.blocked) or models is not None:
            # One block of the whole series; a shared cache serves full-length columns.
            whole = np.asarray(self.strategy.positions(self.data, grid, cache=cache, models=models))
            if whole.shape != (n, width):
                raise ValueError(f"positions have shape {whole.shape}, expected {(n, width)}")
        block = max(1, plan.block_bars)
        carried: Any = None
        last_target = np.zeros(width)
        for start in range(0, n, block):
            stop = min(n, start + block)
            if whole is not None:
                targets = whole[start:stop]
            else:
                targets, carried = self.strategy.block_positions(self.data, grid, start, stop, carried,
                                                                 scale=self.scale)
            held = self._held(offset, start, targets, last_target)
            last_target = held[-1].copy() if cfg.fill == "close" else self._clip(targets[-1])
            prices = BlockPrices(start, self.fill_price[start:stop], self.close[start:stop])
            state.step(held, prices, need_equity=self.dense or bool(kept_equity))
        self._collect(offset, width, state)

    def _clip(self, targets: Array) -> Array:
        return np.asarray(targets, dtype=np.float64) if self.config.allow_short else np.maximum(targets, 0.0)

    def _held(self, offset: int, start: int, targets: Array, last_target: Array) -> Array:
        """The block's held targets: checked, clipped, shifted for next-open fills."""
        t = np.asarray(targets, dtype=np.float64)
        lowest, highest = float(t.min()), float(t.max())  # NaN propagates
        if not (lowest >= -1.0 and highest <= 1.0):
            bar, col = np.argwhere(~(np.abs(t) <= 1.0))[0]
            raise ValueError(f"combination {offset + col}: target position {t[bar, col]} at bar "
                             f"{start + bar} is not in [-1, 1]")
        clipped = t if lowest >= 0.0 or self.config.allow_short else np.maximum(t, 0.0)
        if self.config.fill == "close":
            return clipped
        held = np.empty_like(clipped)
        held[0] = last_target
        held[1:] = clipped[:-1]
        return held

    def _collect(self, offset: int, width: int, state: ChunkState) -> None:
        n, e0 = self.data.n_bars, self.config.initial_equity
        final = state.finish(float(self.close[-1]))
        span = slice(offset, offset + width)
        m = self.metrics
        total = final / e0 - 1.0
        total[state.ruined] = -1.0
        if "total_return" in m:
            m["total_return"][span] = total
        if "cagr" in m:
            m["cagr"][span] = cagr(total, n, self.ppy)
        if "exposure" in m:
            m["exposure"][span] = state.exposed / n
        if TRADE_METRICS & set(m):
            for name, values in trade_metrics(state.n_trades, state.wins, state.gross_profit,
                                              state.gross_loss).items():
                if name in m:
                    m[name][span] = values
        if self.dense:
            mean = state.sum_r / n
            annual = np.sqrt(self.ppy)
            var = np.maximum(state.sum_r2 - state.sum_r * mean, 0.0) / (n - 1) if n > 1 else np.zeros(width)
            std = np.sqrt(var)
            dense = {"volatility": std * annual, "sharpe": ratio(mean, std) * annual,
                      "sortino": ratio(mean, np.sqrt(state.sum_down2 / n)) * annual,
                      "max_drawdown": 1.0 - state.min_ratio,
                      "max_drawdown_duration": state.max_under.astype(np.float64)}
            for name, value in dense.items():
                if name in m:
                    m[name][span] = value
        for local, curve in state.keep_equity.items():
            self.equity[offset + local] = curve
        if state.keep_trades:
            table = TradeTable.concat(state.trades) if state.trades else None
            ts = self.data.timestamps
            for local in sorted(state.keep_trades):
                t = table.select(table.col == local) if table is not None else _no_trades()
                self.trades[offset + local] = TradeRecords(
                    entry_bar=t.entry_bar.astype(np.int64), exit_bar=t.exit_bar.astype(np.int64),
                    entry_time=ts[t.entry_bar], exit_time=ts[t.exit_bar], side=t.side, size=t.size,
                    entry_price=t.entry_price, exit_price=t.exit_price, ret=t.ret, pnl=t.pnl,
                    is_open=t.is_open)

    def result(self) -> BacktestResult:
        return BacktestResult(symbol=self.data.symbol, data_version=self.data.version, params=self.params,
                              metrics=self.metrics, timestamps=self.data.timestamps,
                              n_bars=self.data.n_bars, config=self.config, trades=self.trades,
                              equity=self.equity)


def _no_trades() -> TradeTable:
    i, f = np.zeros(0, dtype=np.intp), np.zeros(0)
    return TradeTable(col=i, entry_bar=i, exit_bar=i, side=np.zeros(0, dtype=np.int8), size=f, entry_price=f,
                      exit_price=f, ret=f, pnl=f, is_open=np.zeros(0, dtype=bool))


def run_sweep(data: MarketData, strategy: str | Strategy, grid: Sequence[Mapping[str, Any]],
              config: BacktestConfig | None = None, *, cache: IndicatorCache | None = None,
              models: Sequence[Any] | None = None, metrics: Collection[str] | None = None,
              keep_trades_for: KeepSpec = None, keep_equity_for: KeepSpec = None,
              chunk_bytes: int = DEFAULT_CHUNK_BYTES, block_bars: int | None = None,
              workers: int | None = None, should_stop: Callable[[], bool] | None = None) -> BacktestResult:
    """Backtest ``strategy`` over every combination of ``grid`` on ``data``.

    The grid is validated up front (StrategyError), the prices once (DataError
    for NaN, infinite or non-positive prices). Everything the sweep allocates
    stays within ``chunk_bytes`` (see ``sweep_plan``); when one full-length
    column does not fit, strategies that support it run in time blocks with
    carried state, with identical results. ``should_stop`` is polled between
    chunks (raises SweepCancelled). ``models`` (trainable strategies) holds
    one model per grid entry. ``cache`` (a cross-run indicator cache with its
    own byte budget) serves full-length indicator columns to unblocked sweeps.
    ``block_bars`` overrides the planned time block (tests and tuning; the
    budget is then not enforced). ``workers`` threads simulate chunks in
    parallel (numpy releases the GIL), each within its share of the budget;
    None: two when the sweep has enough work and the machine two cores.
    Results do not depend on either.
    """
    config = config or BacktestConfig()
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    params = strat.validate_grid(grid)
    k = len(params)
    if k == 0:
        raise ValueError("empty parameter grid")
    if models is not None and len(models) != k:
        raise ValueError(f"{len(models)} models for {k} grid entries")
    sweep = _Sweep(data, strat, params, config, metrics, keep_trades_for, keep_equity_for)
    threads = _workers(workers, k, data.n_bars, models is not None)
    plan = sweep_plan_for(strat, params, data.n_bars, chunk_bytes, metrics=sweep.names, workers=threads)
    if threads > 1 and workers is None and (not plan.fits or plan.width * threads > k):
        threads = 1  # the budget (or the grid) is too small to split: one thread
        plan = sweep_plan_for(strat, params, data.n_bars, chunk_bytes, metrics=sweep.names)
    if not plan.fits:
        log.warning("sweep of %s on %s needs %d bytes at least; budget %d", strat.name, data.symbol,
                    plan.peak_bytes, chunk_bytes)
    if block_bars is not None:
        if block_bars < 1:
            raise ValueError(f"block_bars must be positive, got {block_bars}")
        plan = dataclasses.replace(plan, block_bars=block_bars)
    step = plan.width
    starts = range(0, k, step)

    def chunk(start: int) -> None:
        chunk_models = None if models is None else models[start:start + step]
        sweep.run_chunk(start, min(step, k - start), plan, cache, chunk_models)

    if threads == 1 or len(starts) == 1:
        for start in starts:
            if should_stop is not None and should_stop():
                raise SweepCancelled(f"stopped after {start} of {k} combinations")
            chunk(start)
    else:
        _run_parallel(chunk, starts, threads, k, should_stop)
    log.debug("swept %s on %s: %d combinations x %d bars in chunks of %d x %d bars", strat.name, data.symbol,
              k, data.n_bars, plan.width, plan.block_bars)
    return sweep.result()


# Below this many bar-combinations a second thread costs more than it saves.
_PARALLEL_CELLS = 4_000_000


def _workers(requested: int | None, k: int, n_bars: int, trained: bool) -> int:
    if requested is not None:
        if requested < 1:
            raise ValueError(f"workers must be positive, got {requested}")
        return requested
    if trained or (os.cpu_count() or 1) < 2 or k * n_bars < _PARALLEL_CELLS:
        return 1
    return 2


def _run_parallel(chunk: Callable[[int], None], starts: range, threads: int, k: int,
                  should_stop: Callable[[], bool] | None) -> None:
    """``chunk(start)`` for every start on ``threads`` threads, at most ``threads`` in flight."""
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="sweep") as pool:
        try:
            for start in starts:
                while len(pending) >= threads:
                    pending.popleft().result()
                if should_stop is not None and should_stop():
                    raise SweepCancelled(f"stopped after {start} of {k} combinations")
                pending.append(pool.submit(chunk, start))
            while pending:
                pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def estimate_sweep(strategy: str | Strategy, grid: Sequence[Mapping[str, Any]], n_bars: int,
                   metrics: Collection[str] | None = None) -> tuple[int, int]:
    """``(estimate, minimum)`` bytes of ``run_sweep(strategy, grid)`` on ``n_bars`` bars.

    ``sweep_plan.estimate_sweep_bytes`` with the look-back, distinct windows,
    block support and worker threads ``run_sweep`` would use: give the sweep
    any ``chunk_bytes`` from ``minimum`` up and its working set stays within
    it; more than ``estimate`` buys nothing.
    """
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    params = strat.validate_grid(grid)
    lookback = strat.block_lookback(params)
    windows = {int(v) for p in params for key in ("fast", "slow") if isinstance(v := p.get(key), int)}
    threads = _workers(None, len(params), n_bars, trained=False)
    estimate, minimum = (estimate_sweep_bytes(n_bars, len(params), metrics, lookback=lookback or 0,
                                              n_windows=len(windows) or None, blockable=lookback is not None,
                                              workers=workers) for workers in (threads, 1))
    # The minimum is one thread's: run_sweep drops to one thread when two do not fit.
    return max(estimate[0], minimum[1]), minimum[1]


def sweep_plan_for(strategy: Strategy, params: Sequence[Mapping[str, Any]], n_bars: int, chunk_bytes: int, *,
                   metrics: Collection[str] | None = None, workers: int = 1) -> SweepPlan:
    """The plan ``run_sweep`` follows for ``strategy`` over ``params`` (validated)."""
    lookback = strategy.block_lookback(params)
    windows = {int(v) for p in params for key in ("fast", "slow") if isinstance(v := p.get(key), int)}
    return plan_sweep(n_bars, len(params), chunk_bytes, metrics=metrics, lookback=lookback or 0,
                      n_windows=len(windows) or None, blockable=lookback is not None, workers=workers)
