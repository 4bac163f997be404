"""Strategies: data + parameter grid -> target positions (bars x combinations).

A target position in [-1, 1] is decided at each bar's close (the engine's fill
model decides when it is traded). All strategies are vectorized across the
grid; indicators come from ``indicators.indicator_matrix`` so they are computed
once per (symbol, data version, indicator, window) when a cache is given.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, SupportsIndex, overload

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.data import MarketData
from tradingd.trading.indicators import IndicatorCache, indicator_matrix

__all__ = [
    "Strategy",
    "StrategyConstraintError",
    "StrategyError",
    "ValidatedGrid",
    "expand_grid",
    "get_strategy",
    "register_strategy",
    "strategy_names",
]

Array = NDArray[np.float64]


class StrategyError(ValueError):
    """Unknown strategy or invalid parameters (the message names both)."""


class StrategyConstraintError(StrategyError):
    """Individually valid parameters that do not fit together (e.g. fast >= slow)."""


class Strategy(ABC):
    """Base class: validate parameters, produce target positions."""

    name: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]]
    defaults: ClassVar[Mapping[str, Any]] = {}
    trainable: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<Strategy {self.name} params={','.join(self.param_names)}>"

    def _error(self, message: str) -> StrategyError:
        return StrategyError(f"strategy {self.name!r}: {message}")

    def _int(self, params: Mapping[str, Any], key: str, lo: int, hi: int | None = None) -> int:
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                isinstance(value, float) and not value.is_integer()):
            raise self._error(f"parameter {key!r} must be an integer, got {value!r}")
        number = int(value)
        if number < lo or (hi is not None and number > hi):
            bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise self._error(f"parameter {key!r} must be {bound}, got {number}")
        return number

    def _float(self, params: Mapping[str, Any], key: str, lo: float, hi: float | None = None, *,
               lo_open: bool = False, hi_open: bool = False) -> float:
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._error(f"parameter {key!r} must be a finite number, got {value!r}")
        number = float(value)
        low_bad = number <= lo if lo_open else number < lo
        high_bad = hi is not None and (number >= hi if hi_open else number > hi)
        if low_bad or high_bad:
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise self._error(f"parameter {key!r} must be in {left}{lo}, {hi if hi is not None else 'inf'}"
                              f"{right}, got {number}")
        return number

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check names, types and ranges; return a normalized copy with defaults filled in."""
        if not isinstance(params, Mapping):
            raise self._error(f"parameters must be a mapping, got {type(params).__name__}")
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise self._error(f"unknown parameters {unknown}; expected {list(self.param_names)}")
        merged = {**self.defaults, **params}
        missing = [p for p in self.param_names if p not in merged]
        if missing:
            raise self._error(f"missing parameters {missing}")
        return self._check(merged)

    @abstractmethod
    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        """Type/range checks on a complete parameter dict."""

    def validate_grid(self, grid: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Validate every entry; the error names the entry's index.

        Returns a ValidatedGrid (a list); passing it (or a slice of it) back
        skips re-validation, which matters for sweeps of 50,000 entries.
        """
        if isinstance(grid, ValidatedGrid) and grid.strategy == self.name:
            return grid
        out = ValidatedGrid(self.name)
        for i, params in enumerate(grid):
            try:
                out.append(self.validate_params(params))
            except StrategyError as exc:
                raise type(exc)(f"grid entry {i}: {exc}") from None
        return out

    @abstractmethod
    def warmup(self, params: Mapping[str, Any]) -> int:
        """Bars needed before the first signal can exist."""

    @abstractmethod
    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> Array:
        """Target positions ``(n_bars, len(grid))`` in [-1, 1]."""

    def train(self, data: MarketData, params: Mapping[str, Any]) -> Any:
        """Fit a model for one parameter set (trainable strategies only)."""
        raise self._error("is not trainable")


class ValidatedGrid(list[dict[str, Any]]):
    """A grid already normalized by ``Strategy.validate_grid`` (slices stay validated)."""

    def __init__(self, strategy: str, items: Iterable[dict[str, Any]] = ()) -> None:
        super().__init__(items)
        self.strategy = strategy

    @overload
    def __getitem__(self, index: SupportsIndex) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> ValidatedGrid: ...
    def __getitem__(self, index: SupportsIndex | slice) -> dict[str, Any] | ValidatedGrid:
        if isinstance(index, slice):
            return ValidatedGrid(self.strategy, super().__getitem__(index))
        return super().__getitem__(index)


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


class _Crossover(Strategy):
    param_names = ("fast", "slow")
    indicator: ClassVar[str]

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        fast, slow = self._int(params, "fast", 1), self._int(params, "slow", 2)
        if fast >= slow:
            raise StrategyConstraintError(f"strategy {self.name!r}: fast ({fast}) must be < slow ({slow})")
        return {"fast": fast, "slow": slow}

    def warmup(self, params: Mapping[str, Any]) -> int:
        return int(params["slow"])

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> Array:
        checked = self.validate_grid(grid)
        fast = [p["fast"] for p in checked]
        slow = [p["slow"] for p in checked]
        windows = sorted(set(fast) | set(slow))
        lines = indicator_matrix(data, self.indicator, windows, cache=cache)
        where = {w: j for j, w in enumerate(windows)}
        diff = lines[:, [where[w] for w in fast]]
        diff -= lines[:, [where[w] for w in slow]]
        return crossing_state(diff)


class SmaCrossover(_Crossover):
    """Long after SMA(fast) crosses above SMA(slow), short after it crosses below."""

    name = "sma_crossover"
    indicator = "sma"


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


_REGISTRY: dict[str, Strategy] = {}


def _registry() -> dict[str, Strategy]:
    if not _REGISTRY:
        from tradingd.trading.ml import MLClassifier  # deferred: ml imports this module

        for strategy in (SmaCrossover(), EmaCrossover(), Momentum(), ZScoreMeanReversion(),
                         AdaptiveTrend(), MLClassifier()):
            _REGISTRY.setdefault(strategy.name, strategy)
    return _REGISTRY


def register_strategy(strategy: Strategy) -> None:
    """Add ``strategy`` under its name (replacing one of the same name)."""
    _registry()[strategy.name] = strategy


def strategy_names() -> list[str]:
    """Names of all registered strategies, sorted."""
    return sorted(_registry())


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; StrategyError lists the known names otherwise."""
    try:
        return _registry()[name]
    except KeyError:
        raise StrategyError(f"unknown strategy {name!r}; known: {', '.join(strategy_names())}") from None


def expand_grid(spec: Mapping[str, Iterable[Any] | Any], *,
                strategy: str | Strategy | None = None) -> list[dict[str, Any]]:
    """Cartesian product of ``{param: values or scalar}`` (last key varies fastest).

    With ``strategy``, combinations violating a cross-parameter constraint
    (StrategyConstraintError, e.g. fast >= slow) are dropped; any other
    invalid value raises. Raises StrategyError if nothing is left.
    """
    keys = list(spec)
    axes = []
    for key in keys:
        values = spec[key]
        if isinstance(values, str) or not isinstance(values, Iterable):
            axes.append([values])
        else:
            axes.append(list(values))
    grid = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]
    if strategy is None:
        return grid
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    kept = []
    for params in grid:
        try:
            kept.append(strat.validate_params(params))
        except StrategyConstraintError:
            continue
    if not kept:
        raise StrategyError(f"strategy {strat.name!r}: no valid combination in grid {dict(spec)}")
    return kept
