"""One sweep's state while it runs: chunks of combinations, stepped block by block.

``engine.run_sweep`` decides the order (see there); this module holds what
it steps: ``SweepRun`` (the results, filled chunk by chunk) and ``Chunk``
(one chunk's carried state: the kernel's ``ChunkState``, the strategy's
carried signal state and the last target). Stepping a chunk over the blocks
in order gives the same results whatever the block length, and whichever
chunks run in between.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.compiled_kernel import KernelState, Scratch
from tradingd.trading.data import DataError, MarketData
from tradingd.trading.indicators import IndicatorCache, price_scale
from tradingd.trading.kernel import BlockPrices
from tradingd.trading.metrics import DENSE_METRICS, TRADE_METRICS, cagr, ratio, trade_metrics, validate_metric_names
from tradingd.trading.results import BacktestResult, TradeRecords
from tradingd.trading.simulation import BacktestConfig, TradeTable
from tradingd.trading.strategy import Strategy

__all__ = ["Chunk", "KeepSpec", "SweepRun", "bar_label"]

KeepSpec = Collection[int] | Literal["all"] | None
Array = NDArray[np.float64]


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


@dataclass
class Chunk:
    """Combinations ``offset .. offset + width`` between two time blocks."""

    offset: int
    width: int
    grid: Sequence[dict[str, Any]]
    state: KernelState
    last_target: Array
    carried: Any = None
    whole: Array | None = None  # positions of the whole series, when computed at once


class SweepRun:
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
        self.scratch = Scratch()  # the compiled kernel's per-thread scratch, for this sweep

    def open_chunk(self, offset: int, width: int, *, whole: bool = False, cache: IndicatorCache | None = None,
                   models: Sequence[Any] | None = None) -> Chunk:
        """A chunk before its first block; ``whole``: compute the series' positions at once."""
        n, cfg = self.data.n_bars, self.config
        grid = self.params[offset:offset + width]
        kept_equity = {j - offset: np.empty(n) for j in self.keep_equity if offset <= j < offset + width}
        state = KernelState(width, commission=cfg.commission, slip=cfg.slippage_bps / 10_000.0,
                           initial_equity=cfg.initial_equity, dense=DENSE_METRICS & frozenset(self.names),
                           may_ruin=cfg.allow_short,
                           keep_trades=frozenset(j - offset for j in self.keep_trades if offset <= j < offset + width),
                           keep_equity=kept_equity)
        chunk = Chunk(offset, width, grid, state, np.zeros(width))
        if whole:
            positions = np.asarray(self.strategy.positions(self.data, grid, cache=cache, models=models))
            if positions.shape != (n, width):
                raise ValueError(f"positions have shape {positions.shape}, expected {(n, width)}")
            chunk.whole = positions
        return chunk

    def step_chunk(self, chunk: Chunk, start: int, stop: int, shared: Any = None) -> None:
        """Advance ``chunk`` over bars ``start .. stop`` (the blocks in order).

        ``shared``: the strategy's ``block_indicators`` of this block, for every chunk.
        """
        prices = BlockPrices(start, self.fill_price[start:stop], self.close[start:stop])
        need_equity = self.dense or bool(chunk.state.keep_equity)
        if chunk.whole is None and shared is not None:
            # A crossover the compiled kernel can follow line by line: no targets block at all.
            signal = self.strategy.block_crossings(self.data, chunk.grid, start, stop, shared=shared)
            done = None if signal is None else chunk.state.step_crossings(
                signal, chunk.carried, chunk.last_target, prices, long_only=not self.config.allow_short,
                next_open=self.config.fill == "next_open", need_equity=need_equity, scratch=self.scratch)
            if done is not None:
                chunk.carried, chunk.last_target = done
                return
        if chunk.whole is not None:
            targets = chunk.whole[start:stop]
        else:
            extra = {} if shared is None else {"shared": shared}
            targets, chunk.carried = self.strategy.block_positions(self.data, chunk.grid, start, stop, chunk.carried,
                                                                   scale=self.scale, **extra)
        held = self._held(chunk.offset, start, targets, chunk.last_target)
        chunk.last_target = held[-1].copy() if self.config.fill == "close" else self._clip(targets[-1])
        chunk.state.step(held, prices, need_equity=need_equity, scratch=self.scratch)

    def _clip(self, targets: Array) -> Array:
        return np.asarray(targets, dtype=np.float64) if self.config.allow_short else np.maximum(targets, 0.0)

    def _held(self, offset: int, start: int, targets: Array, last_target: Array) -> Array:
        """The block's held targets: checked, clipped, shifted for next-open fills."""
        t = np.asarray(targets)
        if t.dtype != np.int8:  # int8 targets (a compiled crossover's -1, 0, 1) stay small
            t = t.astype(np.float64, copy=False)
        lowest, highest = float(t.min()), float(t.max())  # NaN propagates
        if not (lowest >= -1.0 and highest <= 1.0):
            bar, col = np.argwhere(~(np.abs(t) <= 1.0))[0]
            raise ValueError(f"combination {offset + col}: target position {t[bar, col]} at bar "
                             f"{start + bar} is not in [-1, 1]")
        clipped = t if lowest >= 0.0 or self.config.allow_short else np.maximum(t, t.dtype.type(0))
        if self.config.fill == "close":
            return clipped
        held = np.empty_like(clipped)
        held[0] = last_target
        held[1:] = clipped[:-1]
        return held

    def close_chunk(self, chunk: Chunk) -> None:
        """Mark the chunk's open trades at the last close and store its metrics, trades and curves."""
        n, e0 = self.data.n_bars, self.config.initial_equity
        offset, width, state = chunk.offset, chunk.width, chunk.state
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

    def release(self) -> None:
        """Give the sweep's scratch memory back (no chunk steps after this)."""
        self.scratch.release()

    def result(self) -> BacktestResult:
        """The finished sweep (every chunk closed)."""
        return BacktestResult(symbol=self.data.symbol, data_version=self.data.version, params=self.params,
                              metrics=self.metrics, timestamps=self.data.timestamps,
                              n_bars=self.data.n_bars, config=self.config, trades=self.trades,
                              equity=self.equity)


def _no_trades() -> TradeTable:
    i, f = np.zeros(0, dtype=np.intp), np.zeros(0)
    return TradeTable(col=i, entry_bar=i, exit_bar=i, side=np.zeros(0, dtype=np.int8), size=f, entry_price=f,
                      exit_price=f, ret=f, pnl=f, is_open=np.zeros(0, dtype=bool))
