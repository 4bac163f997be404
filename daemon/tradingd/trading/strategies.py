"""The catalogue of strategies: look one up by name, expand and validate its parameter grid.

The built-in strategies (:mod:`tradingd.trading.rules` and the ML classifier
of :mod:`tradingd.trading.ml`) are registered here; extensions add their own
with :func:`register_strategy` (a process or Dask worker imports such a module
through the executor's ``preload``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tradingd.trading.ml import MLClassifier
from tradingd.trading.rules import (
    AdaptiveTrend,
    EmaCrossover,
    Momentum,
    SmaCrossover,
    SmaTrendStops,
    ZScoreMeanReversion,
)
from tradingd.trading.strategy import Strategy, StrategyConstraintError, StrategyError

__all__ = [
    "MAX_GRID",
    "check_search_space",
    "expand_grid",
    "expand_valid_grid",
    "get_strategy",
    "register_strategy",
    "strategy_names",
]

MAX_GRID = 1_000_000

# The built-in strategies' sweeps where they differ from the engine's defaults, traced with
# bench/sweep_memory.py: bytes per (bar, combination) on numpy with all metrics and on the
# compiled kernel, and the z-score's sliding windows (one (bars, window) temporary at a time).
SmaCrossover.sweep_cell_bytes = (64, 16)  # compiled: int8 targets at most (kept trades)
EmaCrossover.sweep_cell_bytes = (52, 8)  # compiled: int8 targets of the whole series, long-only and next-open copies
Momentum.sweep_cell_bytes = (76, 24)
AdaptiveTrend.sweep_cell_bytes = (96, 40)  # up and down vote counts, the warm mask, a gathered line
ZScoreMeanReversion.sweep_window_bytes = 8

_REGISTRY: dict[str, Strategy] = {
    strategy.name: strategy
    for strategy in (SmaCrossover(), EmaCrossover(), Momentum(), ZScoreMeanReversion(), AdaptiveTrend(),
                     SmaTrendStops(), MLClassifier())
}


def register_strategy(strategy: Strategy) -> None:
    """Add ``strategy`` under its name (replacing one of the same name)."""
    _REGISTRY[strategy.name] = strategy


def strategy_names() -> list[str]:
    """Names of all registered strategies, sorted."""
    return sorted(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; StrategyError lists the known names otherwise."""
    try:
        return _REGISTRY[name]
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


def expand_valid_grid(strategy: str, grid: Mapping[str, Sequence[Any]], *,
                      skip_invalid: bool) -> tuple[list[dict[str, Any]], int]:
    """The validated combinations of ``grid`` and how many were dropped.

    With ``skip_invalid``, combinations whose values do not fit together (the
    strategy's ``StrategyConstraintError``, e.g. fast >= slow) are dropped; any
    other invalid value raises :class:`StrategyError`, as does an empty result
    or a grid of more than :data:`MAX_GRID` combinations.
    """
    size = 1
    for values in grid.values():
        size *= max(1, len(values))
    if size > MAX_GRID:
        raise StrategyError(f"the grid has {size:,} combinations; the limit is {MAX_GRID:,}")
    impl = get_strategy(strategy)
    valid: list[dict[str, Any]] = []
    dropped = 0
    for number, combo in enumerate(expand_grid(grid)):
        try:
            valid.append(impl.validate_params(combo))
        except StrategyConstraintError as exc:
            if not skip_invalid:
                raise StrategyConstraintError(f"grid combination {number} {combo}: {exc}") from None
            dropped += 1
        except StrategyError as exc:
            raise StrategyError(f"grid combination {number} {combo}: {exc}") from None
    if not valid:
        raise StrategyError(f"no valid parameter combination in the grid ({dropped} dropped as inconsistent)")
    return valid, dropped


def check_search_space(strategy: str, grid: Mapping[str, Sequence[Any]]) -> None:
    """Check every value of a search space without expanding it (StrategyError names the bad one).

    Each axis is varied alone from the first value of every other axis (the
    strategy's error names the parameter and value); combinations that merely
    do not fit together (StrategyConstraintError) are fine here, since a
    search skips them.
    """
    impl = get_strategy(strategy)
    for key, values in grid.items():
        if not values:
            raise StrategyError(f"parameter {key!r} has no values")
    base = {key: values[0] for key, values in grid.items()}
    for key, values in grid.items():
        for value in values:
            try:
                impl.validate_params({**base, key: value})
            except StrategyConstraintError:
                continue
