"""The strategy contract: parameters in, target positions (bars x combinations) out.

A :class:`Strategy` validates its parameters and maps market data plus a
parameter grid to a target position in [-1, 1] per bar and combination,
decided at each bar's close (the engine's fill model decides when it is
traded). The strategies themselves live in :mod:`tradingd.trading.rules` and
:mod:`tradingd.trading.ml`; :mod:`tradingd.trading.strategies` is their
catalogue.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, SupportsIndex, overload

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.data import MarketData
from tradingd.trading.indicators import IndicatorCache, PriceScale

__all__ = ["CrossingSignal", "Strategy", "StrategyConstraintError", "StrategyError", "ValidatedGrid"]

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
    # Working bytes per (bar, combination) of a sweep at its peak, (numpy with the equity-curve
    # metrics, compiled kernel), when this strategy's temporaries exceed the engine's defaults
    # (``sweep_plan.cell_bytes``); None: the defaults hold.
    sweep_cell_bytes: ClassVar[tuple[int, int] | None] = None
    # Bytes per bar and bar of its longest warm-up a sweep allocates once per series (sliding windows).
    sweep_window_bytes: ClassVar[int] = 0

    def __repr__(self) -> str:
        return f"<Strategy {self.name} params={','.join(self.param_names)}>"

    def _error(self, message: str) -> StrategyError:
        return StrategyError(f"strategy {self.name!r}: {message}")

    def _int(self, params: Mapping[str, Any], key: str, lo: int, hi: int | None = None) -> int:
        value = params[key]
        if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int | float) or (
                isinstance(value, float) and not value.is_integer())):  # (a plain int needs no checks)
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
        if type(params) is not dict and not isinstance(params, Mapping):  # dicts first: grids are long
            raise self._error(f"parameters must be a mapping, got {type(params).__name__}")
        unknown = sorted(params.keys() - self.param_names)
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
        """Target positions ``(n_bars, len(grid))`` in [-1, 1] (float64, or int8 for -1, 0 and 1 only)."""

    def block_lookback(self, grid: Sequence[Mapping[str, Any]]) -> int | None:
        """Bars before a time block that ``block_positions`` reads, or None.

        None (the default) means the strategy needs the whole series at once,
        so the engine cannot split its sweep into time blocks.
        """
        return None

    def sweep_series_bytes(self, grid: Sequence[Mapping[str, Any]], n_bars: int) -> int:
        """Bytes a sweep of ``grid`` allocates once per series, whatever its chunks (``sweep_window_bytes``)."""
        if not self.sweep_window_bytes:
            return 0
        return self.sweep_window_bytes * n_bars * (max((self.warmup(p) for p in grid), default=0) + 1)

    def block_positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], start: int, stop: int,
                        carried: Any, *, scale: PriceScale | None, shared: Any = None) -> tuple[NDArray[Any], Any]:
        """Positions ``(stop - start, len(grid))`` (float64, or int8) of bars ``start .. stop``, and the carry.

        ``carried`` is what the previous block returned (None for the first);
        ``scale`` the integer scale of ``data.close`` for exact moving averages
        (``indicators.price_scale`` of the whole series); ``shared`` what
        ``block_indicators`` returned for this block and the whole sweep's grid
        (passed only when not None). The blocks concatenated must equal
        ``positions(data, grid)`` exactly.
        """
        raise self._error("cannot run in time blocks")

    def block_crossings(self, data: MarketData, grid: Sequence[Mapping[str, Any]], start: int, stop: int, *,
                        shared: Any) -> CrossingSignal | None:
        """The block's targets as crossings of two lines per entry of ``grid``, or None.

        A strategy whose targets are ``rules.crossing_block`` of ``fast - slow``
        lines may describe them this way; the compiled kernel then derives the
        targets inside its loop (no targets block). Must agree exactly with
        ``block_positions``. ``shared`` as there (None when nothing is shared).
        """
        return None

    def follows_crossings(self) -> bool:
        """True when ``block_crossings`` describes every block, given what ``block_indicators`` returned.

        The engine then plans chunks that hold no targets block at all (see
        ``sweep_plan.plan_sweep``, ``crossings``).
        """
        return False

    def block_indicators(self, data: MarketData, grid: Sequence[Mapping[str, Any]], start: int, stop: int, *,
                         scale: PriceScale | None, recycle: Any = None) -> Any:
        """Indicator columns of bars ``start .. stop`` for every entry of ``grid``, or None.

        The engine calls it once per time block with the whole sweep's grid
        and hands the result to every chunk's ``block_positions``, so columns
        shared by many combinations are computed once (None: nothing shared).
        ``recycle``: what this method returned for the previous block of the
        same grid, no longer in use (its memory may be reused), or None.
        """
        return None

    def release_indicators(self, shared: Any) -> None:
        """The sweep is done with ``shared`` (the last ``block_indicators``): give its memory back."""
        release = getattr(shared, "release", None)
        if callable(release):
            release()

    def _blocks_match_positions(self, owner: type[Strategy]) -> bool:
        """True unless a subclass of ``owner`` replaced ``positions`` (its blocks would not follow)."""
        return type(self).positions is owner.positions

    def train(self, data: MarketData, params: Mapping[str, Any]) -> Any:
        """Fit a model for one parameter set (trainable strategies only)."""
        raise self._error("is not trainable")


@dataclass(frozen=True)
class CrossingSignal:
    """Targets that follow the crossings of line ``fast[j]`` over line ``slow[j]`` of ``rows``.

    ``rows`` is lines x bars (C order); the block's bars start at column ``offset``.
    """

    rows: NDArray[np.float64]
    offset: int
    fast: NDArray[np.int64]
    slow: NDArray[np.int64]


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
