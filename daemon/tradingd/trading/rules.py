"""Rule-based strategies, vectorized across the parameter grid.

Indicators come from ``indicators.indicator_matrix``, so they are computed
once per (symbol, data version, indicator, window) when a cache is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.acceleration import compiled
from tradingd.trading.data import MarketData
from tradingd.trading.indicators import (
    IndicatorCache,
    PriceScale,
    SmaBlock,
    SmaBuffer,
    indicator_matrix,
    momentum,
    sma_rows,
)
from tradingd.trading.strategy import CrossingSignal, Strategy, StrategyConstraintError, ValidatedGrid

__all__ = [
    "AdaptiveTrend",
    "EmaCrossover",
    "Momentum",
    "SmaCrossover",
    "SmaTrendStops",
    "ZScoreMeanReversion",
    "crossing_block",
    "crossing_state",
]

Array = NDArray[np.float64]


def _ffill_signals(signal: Array) -> Array:
    """Forward-fill NaN ("hold") entries of ``signal`` along bars; leading NaN -> 0."""
    rows = np.arange(signal.shape[0], dtype=np.int32)[:, None]
    index = np.where(np.isnan(signal), np.int32(-1), rows)
    np.maximum.accumulate(index, axis=0, out=index)
    filled = np.take_along_axis(signal, np.maximum(index, 0), axis=0)
    filled[index < 0] = 0.0
    return filled


def crossing_state(diff: Array) -> Array:
    """Position after crossings of ``diff = fast - slow`` (bars x k), in {-1, 0, 1}.

    Same events as vectorbt's ``crossed_above`` / ``crossed_below`` (wait=0):
    +1 from the bar fast crosses above slow, -1 from a cross below, 0 before
    the first cross. Bars where the two are exactly equal keep the position.
    NaN (warm-up) counts as no information.
    """
    n, k = diff.shape
    # int8 signs: NaN compares False both ways, so warm-up bars are 0.
    state = (diff > 0).view(np.int8) - (diff < 0).view(np.int8)
    columns = np.arange(k)
    first_sign = state[np.argmax(state != 0, axis=0), columns]
    # The first cross is the first bar whose sign opposes the first known sign.
    opposite = state == -first_sign
    first_cross = np.argmax(opposite, axis=0)
    first_cross[~opposite[first_cross, columns] | (first_sign == 0)] = n
    state[np.arange(n)[:, None] < first_cross] = 0
    out = state.astype(np.float64)
    if np.count_nonzero(state) + int(first_cross.sum()) < n * k:
        # Exact ties after the first cross keep the previous position.
        ties = (state == 0) & (np.arange(n)[:, None] >= first_cross)
        out[ties] = np.nan
        out = _ffill_signals(out)
    return out


def crossing_block(diff: Array, carried: tuple[NDArray[np.int8], Array] | None
                   ) -> tuple[Array, tuple[NDArray[np.int8], Array]]:
    """``crossing_state`` of one time block, continuing from the carried state.

    ``diff`` (fast - slow) is overwritten with the positions; NaN may only
    lead a column (indicator warm-up). The state per
    column is (first known sign, position): 0 before the first cross, then
    the sign of the last non-tied difference.
    """
    n, k = diff.shape
    first_sign, position = carried if carried is not None else (np.zeros(k, np.int8), np.zeros(k))
    if n == 0:
        return diff, (first_sign, position)
    out = np.sign(diff, out=diff)
    if np.isnan(out[0]).any():  # warm-up (a NaN prefix): no information
        np.nan_to_num(out, copy=False)
    columns = np.arange(k)
    seen = out[np.argmax(out != 0.0, axis=0), columns].astype(np.int8)
    first = np.where(first_sign != 0, first_sign, seen).astype(np.int8)
    opposite = out == -first.astype(np.float64)
    cross = np.argmax(opposite, axis=0)
    cross[~opposite[cross, columns] | (first == 0)] = n
    del opposite
    cross[position != 0] = 0  # crossed in an earlier block
    for j in np.flatnonzero(cross > 0):  # a loop over columns, never over bars
        out[: cross[j], j] = 0.0
    # Exact ties (and a block starting mid-tie) hold the previous position: rare, so
    # only the columns that have them are forward-filled.
    zeros = n - np.count_nonzero(out, axis=0) - np.minimum(cross, n)
    tied = np.flatnonzero(zeros > 0)
    if tied.size:
        sub = np.empty((n + 1, tied.size))
        sub[0] = position[tied]
        sub[1:] = out[:, tied]
        after = np.arange(n)[:, None] >= cross[tied]
        sub[1:][(sub[1:] == 0.0) & after] = np.nan
        out[:, tied] = _ffill_signals(sub)[1:]
    return out, (first, out[-1].copy())


class _Crossover(Strategy):
    param_names = ("fast", "slow")
    indicator: ClassVar[str]

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        fast, slow = self._int(params, "fast", 1), self._int(params, "slow", 2)
        if fast >= slow:
            raise StrategyConstraintError(f"strategy {self.name!r}: fast ({fast}) must be < slow ({slow})")
        return {"fast": fast, "slow": slow}

    def validate_grid(self, grid: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(grid, ValidatedGrid) and grid.strategy == self.name:
            return grid
        # The common grid (plain dicts of two plain ints) in one pass: a sweep of
        # 5,000 entries validates in ~2 ms instead of ~7. Anything else, and any
        # error (to word it), takes the general path.
        try:
            checked = [{"fast": p["fast"], "slow": p["slow"]} for p in grid if type(p) is dict and len(p) == 2
                       and type(p["fast"]) is int and type(p["slow"]) is int and 1 <= p["fast"] < p["slow"]]
        except KeyError:
            checked = []
        if len(checked) == len(grid):
            return ValidatedGrid(self.name, checked)
        return super().validate_grid(grid)

    def warmup(self, params: Mapping[str, Any]) -> int:
        return int(params["slow"])

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> NDArray[Any]:
        checked = self.validate_grid(grid)
        fast = [p["fast"] for p in checked]
        slow = [p["slow"] for p in checked]
        windows = sorted(set(fast) | set(slow))
        lines = indicator_matrix(data, self.indicator, windows, cache=cache)
        where = {w: j for j, w in enumerate(windows)}
        loops = compiled()
        if loops is not None:
            out = np.empty((len(lines), len(checked)), dtype=np.int8, order="F")  # held whole: 1 byte a cell
            # C order, the signature warm_up compiled (a transposed view would compile another, ~20 MB, once).
            rows = np.ascontiguousarray(lines.T)
            loops.crossing_positions(rows, np.array([where[w] for w in fast]), np.array([where[w] for w in slow]),
                                     0, len(lines), np.zeros(len(checked), np.int8), np.zeros(len(checked)), out)
            return out
        diff = lines[:, [where[w] for w in fast]]
        diff -= lines[:, [where[w] for w in slow]]
        return crossing_state(diff)


class SmaCrossover(_Crossover):
    """Long after SMA(fast) crosses above SMA(slow), short after it crosses below."""

    name = "sma_crossover"
    indicator = "sma"

    def block_lookback(self, grid: Sequence[Mapping[str, Any]]) -> int | None:
        if not self._blocks_match_positions(SmaCrossover):
            return None
        return max((int(p["slow"]) for p in grid), default=1) - 1

    def block_indicators(self, data: MarketData, grid: Sequence[Mapping[str, Any]], start: int, stop: int, *,
                         scale: PriceScale | None, recycle: Any = None) -> SmaBlock:
        if isinstance(recycle, SmaBlock):  # the previous block of this grid: the same windows
            where, buffer = recycle.where, recycle.buffer
        else:
            checked = self.validate_grid(grid)
            where = {w: j for j, w in enumerate(sorted({p["fast"] for p in checked} | {p["slow"] for p in checked}))}
            buffer = SmaBuffer()
        windows = list(where)
        begin = max(0, start - (windows[-1] - 1))
        # Integer window sums make every average a function of its own window
        # only, so a block's averages equal the whole series' bit for bit.
        rows = sma_rows(data.close[begin:stop], windows, scale=scale, buffer=buffer)
        return SmaBlock(rows, start - begin, where, buffer)

    def follows_crossings(self) -> bool:
        return self._blocks_match_positions(SmaCrossover)

    def block_crossings(self, data: MarketData, grid: Sequence[Mapping[str, Any]], start: int, stop: int, *,
                        shared: Any) -> CrossingSignal | None:
        if not isinstance(shared, SmaBlock):
            return None
        checked = self.validate_grid(grid)
        return CrossingSignal(shared.rows, shared.offset,
                              np.array([shared.where[p["fast"]] for p in checked], dtype=np.int64),
                              np.array([shared.where[p["slow"]] for p in checked], dtype=np.int64))

    def block_positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], start: int, stop: int,
                        carried: Any, *, scale: PriceScale | None, shared: Any = None) -> tuple[NDArray[Any], Any]:
        checked = self.validate_grid(grid)
        block = shared if isinstance(shared, SmaBlock) else self.block_indicators(data, checked, start, stop,
                                                                                   scale=scale)
        fast = np.array([block.where[p["fast"]] for p in checked], dtype=np.int64)
        slow = np.array([block.where[p["slow"]] for p in checked], dtype=np.int64)
        loops = compiled()
        if loops is not None:  # one compiled pass, no (bars, combinations) difference block
            k = len(checked)
            first_sign, position = carried if carried is not None else (np.zeros(k, np.int8), np.zeros(k))
            first_sign, position = first_sign.copy(), position.copy()
            # int8, column by column: an eighth of the memory traffic, in the kernel's order.
            out = np.empty((stop - start, k), dtype=np.int8, order="F")
            loops.crossing_positions(block.rows, fast, slow, block.offset, stop - start, first_sign, position, out)
            return out, (first_sign, position)
        rows = block.rows[:, block.offset:]
        # Gathering whole rows (one window each) is contiguous; one transpose at the end.
        return crossing_block(np.ascontiguousarray(np.subtract(rows[fast], rows[slow]).T), carried)


class EmaCrossover(_Crossover):
    """Long after EMA(fast) crosses above EMA(slow), short after it crosses below."""

    name = "ema_crossover"
    indicator = "ema"


class Momentum(Strategy):
    """Long when the lookback return exceeds ``threshold``, short below ``-threshold``."""

    name = "momentum"
    param_names = ("lookback", "threshold")
    defaults: ClassVar[Mapping[str, Any]] = {"threshold": 0.0}

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"lookback": self._int(params, "lookback", 1),
                "threshold": self._float(params, "threshold", 0.0)}

    def warmup(self, params: Mapping[str, Any]) -> int:
        return int(params["lookback"])

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> Array:
        checked = self.validate_grid(grid)
        lookbacks = sorted({p["lookback"] for p in checked})
        where = {w: j for j, w in enumerate(lookbacks)}
        mom = indicator_matrix(data, "momentum", lookbacks, cache=cache)[
            :, [where[p["lookback"]] for p in checked]]
        threshold = np.array([p["threshold"] for p in checked])
        out = (mom > threshold).astype(np.float64)
        out -= mom < -threshold
        return out

    def block_lookback(self, grid: Sequence[Mapping[str, Any]]) -> int | None:
        if not self._blocks_match_positions(Momentum):
            return None
        return max((int(p["lookback"]) for p in grid), default=0)

    def block_positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], start: int, stop: int,
                        carried: Any, *, scale: PriceScale | None, shared: Any = None) -> tuple[NDArray[Any], Any]:
        checked = self.validate_grid(grid)
        lookbacks = sorted({p["lookback"] for p in checked})
        begin = max(0, start - lookbacks[-1])
        where = {w: j for j, w in enumerate(lookbacks)}
        mom = momentum(data.close[begin:stop], lookbacks)[start - begin:, [where[p["lookback"]] for p in checked]]
        threshold = np.array([p["threshold"] for p in checked])
        out = (mom > threshold).astype(np.float64)
        out -= mom < -threshold
        return out, None


class ZScoreMeanReversion(Strategy):
    """Short above +entry_z, long below -entry_z, flat once |z| <= exit_z, else hold."""

    name = "zscore_mean_reversion"
    param_names = ("window", "entry_z", "exit_z")
    defaults: ClassVar[Mapping[str, Any]] = {"entry_z": 2.0, "exit_z": 0.5}

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        window = self._int(params, "window", 2)
        entry = self._float(params, "entry_z", 0.0, lo_open=True)
        exit_ = self._float(params, "exit_z", 0.0)
        if exit_ >= entry:
            raise StrategyConstraintError(
                f"strategy {self.name!r}: exit_z ({exit_}) must be < entry_z ({entry})")
        return {"window": window, "entry_z": entry, "exit_z": exit_}

    def warmup(self, params: Mapping[str, Any]) -> int:
        return int(params["window"]) - 1

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> Array:
        checked = self.validate_grid(grid)
        windows = sorted({p["window"] for p in checked})
        where = {w: j for j, w in enumerate(windows)}
        z = indicator_matrix(data, "zscore", windows, cache=cache)[:, [where[p["window"]] for p in checked]]
        entry = np.array([p["entry_z"] for p in checked])
        exit_ = np.array([p["exit_z"] for p in checked])
        signal = np.full(z.shape, np.nan)
        signal[np.abs(z) <= exit_] = 0.0
        signal[z > entry] = -1.0
        signal[z < -entry] = 1.0
        return _ffill_signals(signal)


class AdaptiveTrend(Strategy):
    """Votes of close above/below SMA, EMA, WMA and HMA of the same length."""

    name = "adaptive_trend"
    param_names = ("length", "min_votes")
    defaults: ClassVar[Mapping[str, Any]] = {"min_votes": 3}
    averages: ClassVar[tuple[str, ...]] = ("sma", "ema", "wma", "hma")

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"length": self._int(params, "length", 2),
                "min_votes": self._int(params, "min_votes", 1, len(self.averages))}

    def warmup(self, params: Mapping[str, Any]) -> int:
        length = int(params["length"])
        return length + int(math.sqrt(length)) - 2  # the Hull average warms up last

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> Array:
        checked = self.validate_grid(grid)
        lengths = sorted({p["length"] for p in checked})
        where = [{w: j for j, w in enumerate(lengths)}[p["length"]] for p in checked]
        close = data.close[:, None]
        up = np.zeros((data.n_bars, len(checked)))
        down = np.zeros_like(up)
        warm = np.ones(up.shape, dtype=bool)
        for average in self.averages:
            line = indicator_matrix(data, average, lengths, cache=cache)[:, where]
            up += close > line
            down += close < line
            warm &= ~np.isnan(line)  # every average votes, or nobody does
        votes = np.array([p["min_votes"] for p in checked], dtype=np.float64)
        out = ((up >= votes) & (up > down) & warm).astype(np.float64)
        out -= (down >= votes) & (down > up) & warm
        return out


class SmaTrendStops(Strategy):
    """Long while SMA(fast) > SMA(slow) and close > SMA(trend); a stop-loss and a take-profit end a trade early.

    A trade opens on the first bar of such a regime, at that bar's close
    (the entry reference); it ends when the regime ends, or at the first bar
    whose close is ``stop_loss`` below or ``take_profit`` above the entry close
    (0 turns either off). After a stop or a target, the strategy stays flat
    until the regime ends and begins again: exits are close-based decisions,
    like every other target position, not intrabar orders.
    """

    name = "sma_trend_stops"
    param_names = ("fast", "slow", "trend", "stop_loss", "take_profit")
    defaults: ClassVar[Mapping[str, Any]] = {"trend": 100, "stop_loss": 0.05, "take_profit": 0.10}

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        fast, slow = self._int(params, "fast", 1), self._int(params, "slow", 2)
        if fast >= slow:
            raise StrategyConstraintError(f"strategy {self.name!r}: fast ({fast}) must be < slow ({slow})")
        return {"fast": fast, "slow": slow, "trend": self._int(params, "trend", 2),
                "stop_loss": self._float(params, "stop_loss", 0.0, 1.0, hi_open=True),
                "take_profit": self._float(params, "take_profit", 0.0)}

    def warmup(self, params: Mapping[str, Any]) -> int:
        return max(int(params["slow"]), int(params["trend"]))

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> Array:
        checked = self.validate_grid(grid)
        windows = sorted({p[key] for p in checked for key in ("fast", "slow", "trend")})
        lines = indicator_matrix(data, "sma", windows, cache=cache)
        where = {w: j for j, w in enumerate(windows)}

        def line(key: str) -> Array:
            return lines[:, [where[p[key]] for p in checked]]

        close = np.asarray(data.close, dtype=np.float64)
        # NaN (warm-up) compares False: no regime before every average exists.
        regime = (line("fast") > line("slow")) & (close[:, None] > line("trend"))
        start = regime.copy()
        start[1:] &= ~regime[:-1]
        rows = np.arange(data.n_bars)[:, None]
        start_row = np.maximum.accumulate(np.where(start, rows, 0), axis=0)
        ratio = close[:, None] / close[start_row]
        stop = np.array([p["stop_loss"] for p in checked])
        target = np.array([p["take_profit"] for p in checked])
        hit = regime & (((stop > 0) & (ratio <= 1.0 - stop)) | ((target > 0) & (ratio >= 1.0 + target)))
        # Hits since the regime began: the count now minus the count before its first bar.
        hits = np.cumsum(hit, axis=0, dtype=np.int32)
        before = np.take_along_axis(hits - hit, start_row, axis=0)
        out: Array = (regime & (hits == before)).astype(np.float64)
        return out
