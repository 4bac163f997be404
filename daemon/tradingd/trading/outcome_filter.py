"""Decisions informed by past outcomes: skip (or scale) an entry whose most similar past trades did badly.

The memory is the strategy's own trades (one parameter set's, unfiltered)
over all bars up to the decision: the history before a testing window and
the window's trades that have already closed. For each would-be entry at
decision bar ``d``:

1. its feature vector is the market state at ``d`` (:class:`~tradingd.trading.regime.MarketState`,
   the vector the outcome journal records at entry; causal rolling windows);
2. the eligible past trades are those whose exit was *filled before bar d*
   (``exit fill bar < d``): an exit filled at ``d`` or later, or a trade still
   open, is not known when ``d`` is decided;
3. the ``k`` nearest eligible trades (Euclidean, each feature scaled by its
   standard deviation over the bars before the window, so the scale itself
   is known in advance) give the statistic: expectancy (mean trade return)
   or win rate;
4. with at least ``min_neighbours`` of them and the statistic below
   ``threshold``, the entry is skipped (target 0 for the whole trade) or
   scaled (target times ``scale``).

A trade's return here is ``side * (exit fill / entry fill - 1)`` minus
commission both ways, at the fill prices of the fill model (slippage left
out). Everything is arrays: trades are found with ``np.nonzero`` on target
changes, neighbours with one distance matrix per parameter set (entries x
past trades) and ``argpartition``; no loop over bars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.data import MarketData
from tradingd.trading.indicators import IndicatorCache
from tradingd.trading.regime import MarketState
from tradingd.trading.strategy import Strategy

__all__ = ["FilterConfig", "FilterTally", "HistoryPositions", "Trades", "filter_positions", "find_trades"]

Array = NDArray[np.float64]
Ints = NDArray[np.intp]


@dataclass(frozen=True)
class FilterConfig:
    """The ``outcome_filter`` section of a spec, plus what the backtest says about fills and costs."""

    k: int = 20
    min_neighbours: int = 5
    statistic: Literal["expectancy", "win_rate"] = "expectancy"
    threshold: float = 0.0
    action: Literal["skip", "scale"] = "skip"
    scale: float = 0.5
    next_open: bool = False
    commission: float = 0.0
    allow_short: bool = False

    @classmethod
    def from_spec(cls, section: Mapping[str, Any], backtest: Mapping[str, Any]) -> FilterConfig:
        return cls(k=int(section.get("k", 20)), min_neighbours=int(section.get("min_neighbours", 5)),
                   statistic=section.get("statistic", "expectancy"), threshold=float(section.get("threshold", 0.0)),
                   action=section.get("action", "skip"), scale=float(section.get("scale", 0.5)),
                   next_open=backtest.get("fill", "close") == "next_open",
                   commission=float(backtest.get("commission", 0.0)),
                   allow_short=backtest.get("direction", "long_only") == "long_short")


@dataclass(frozen=True)
class Trades:
    """Trades of one column of target positions: runs of one constant non-zero target."""

    start: Ints  # decision bar of the entry (first bar of the run)
    end: Ints  # decision bar of the exit (first bar after the run); n_bars if still open
    side: Array
    known: Ints  # bar whose price filled the exit (the outcome is known from then on)
    ret: Array  # NaN while open


@dataclass
class FilterTally:
    """Counts over the filtered entries (inside the evaluated window)."""

    entries: int = 0
    skipped: int = 0
    scaled: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"entries": self.entries, "skipped": self.skipped, "scaled": self.scaled}


def find_trades(column: Array, fill_price: Array, config: FilterConfig) -> Trades:
    """The trades of one column of targets, with their returns at the fill model's prices."""
    n = column.size
    change = np.flatnonzero(np.diff(column, prepend=0.0) != 0)  # bars where the target changes
    starts = change[column[change] != 0]
    ends = np.searchsorted(change, starts, side="right")
    end = np.where(ends < change.size, change[np.minimum(ends, change.size - 1)], n)
    lag = 1 if config.next_open else 0
    entry_fill, exit_fill = starts + lag, end + lag
    closed = exit_fill < n
    ret = np.full(starts.size, np.nan)
    side = np.sign(column[starts])
    ok = closed & (entry_fill < n)
    ret[ok] = side[ok] * (fill_price[exit_fill[ok]] / fill_price[entry_fill[ok]] - 1.0) - 2.0 * config.commission
    return Trades(start=starts, end=end, side=side, known=np.where(closed, exit_fill, n), ret=ret)


def _decisions(trades: Trades, features: Array, scale: Array, first_bar: int, config: FilterConfig) -> NDArray[Any]:
    """Per trade: True where the entry is filtered (only entries decided at or after ``first_bar``)."""
    blocked = np.zeros(trades.start.size, dtype=bool)
    candidates = np.flatnonzero(trades.start >= first_bar)
    memory = np.flatnonzero(np.isfinite(trades.ret) & np.isfinite(features[trades.start]).all(axis=1))
    if candidates.size == 0 or memory.size == 0:
        return blocked
    x = features[trades.start[candidates]] / scale
    y = features[trades.start[memory]] / scale
    distance = ((x[:, None, :] - y[None, :, :]) ** 2).sum(axis=2)
    # Only outcomes filled strictly before the decision bar; NaN features (warm-up) match nothing.
    eligible = trades.known[memory][None, :] < trades.start[candidates][:, None]
    distance[~eligible | ~np.isfinite(distance)] = np.inf
    k = min(config.k, memory.size)
    nearest = np.argpartition(distance, k - 1, axis=1)[:, :k]
    found = np.isfinite(np.take_along_axis(distance, nearest, axis=1))
    outcomes = trades.ret[memory][nearest]
    if config.statistic == "win_rate":
        outcomes = (outcomes > 0).astype(np.float64)
    count = found.sum(axis=1)
    stat = np.where(found, outcomes, 0.0).sum(axis=1) / np.maximum(count, 1)
    blocked[candidates] = (count >= config.min_neighbours) & (stat < config.threshold)
    return blocked


def filter_positions(positions: Array, data: MarketData, first_bar: int,
                     config: FilterConfig) -> tuple[Array, list[FilterTally]]:
    """``positions`` (bars x combinations over ``data``) with the entries from ``first_bar`` on filtered.

    Returns the filtered targets for every bar and a tally per combination.
    """
    state = MarketState.compute(data.high, data.low, data.close)
    features = state.features
    before = features[:max(first_bar, 1)]
    with np.errstate(invalid="ignore"):
        spread = np.nanstd(before, axis=0) if np.isfinite(before).any() else np.ones(features.shape[1])
    scale = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    fill_price = np.asarray(data.open if config.next_open else data.close, dtype=np.float64)
    out = np.array(positions, dtype=np.float64, copy=True)
    if not config.allow_short:
        np.maximum(out, 0.0, out=out)  # what the engine trades long-only
    factor = 0.0 if config.action == "skip" else config.scale
    tallies = []
    rows = np.arange(out.shape[0])
    for col in range(out.shape[1]):  # one matrix per parameter set: a testing phase tests a few
        trades = find_trades(out[:, col], fill_price, config)
        blocked = _decisions(trades, features, scale, first_bar, config)
        # The trade each bar belongs to (or -1): bars start..end-1 of trade i carry i.
        owner = np.searchsorted(trades.start, rows, side="right") - 1
        inside = (owner >= 0) & (rows < trades.end[np.maximum(owner, 0)])
        hit = inside & blocked[np.maximum(owner, 0)]
        out[hit, col] *= factor
        count = int(blocked.sum())
        tallies.append(FilterTally(entries=int((trades.start >= first_bar).sum()),
                                   skipped=count if config.action == "skip" else 0,
                                   scaled=count if config.action == "scale" else 0))
    return out, tallies


class HistoryPositions(Strategy):
    """``base`` decided on ``history`` (which ends with the evaluated bars), optionally outcome-filtered.

    The engine sees the evaluated bars only; the targets come from the whole
    history, so indicators are warm and the filter has its memory.
    """

    def __init__(self, base: Strategy, history: MarketData, config: FilterConfig | None = None) -> None:
        self.base = base
        self.history = history
        self.config = config
        self.name = base.name  # type: ignore[misc]
        self.param_names = base.param_names  # type: ignore[misc]
        self.tallies: list[FilterTally] = []  # one per combination, in the order the sweep asked

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self.base.validate_params(params)

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.base.validate_params(params)

    def warmup(self, params: Mapping[str, Any]) -> int:
        return self.base.warmup(params)

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> Array:
        first = self.history.n_bars - data.n_bars
        if first < 0 or self.history.timestamps[-1] != data.timestamps[-1]:
            raise ValueError("the history must end with the evaluated bars")
        full = self.base.positions(self.history, grid, cache=cache, models=models)
        if self.config is not None:
            full, tallies = filter_positions(full, self.history, first, self.config)
            self.tallies.extend(tallies)
        return full[first:]
