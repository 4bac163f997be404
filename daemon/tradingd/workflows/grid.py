"""A spec's parameter grid: its combinations, validated by the strategy.

Used twice: by the spec parser (an empty or invalid grid is a spec error, not
a run failure) and by a run, which expands the grid on the executor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tradingd.trading.strategies import StrategyConstraintError, StrategyError, expand_grid, get_strategy

__all__ = ["MAX_GRID", "expand_valid_grid"]

MAX_GRID = 1_000_000


def expand_valid_grid(strategy: str, grid: Mapping[str, Sequence[Any]], *,
                      skip_invalid: bool) -> tuple[list[dict[str, Any]], int]:
    """The validated combinations of ``grid`` and how many were dropped.

    With ``skip_invalid``, combinations whose values do not fit together (the
    strategy's ``StrategyConstraintError``, e.g. fast >= slow) are dropped; any
    other invalid value raises :class:`StrategyError`, as does an empty result.
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
