"""A parameter grid as a search space: the cartesian product, indexed without expanding it.

A search (:mod:`tradingd.workflows.search`) may range over spaces far larger
than any grid we would expand, so combinations are addressed by their
*index* in the full cartesian product (last key varies fastest, as in
``expand_grid``), and each axis by a *position* along its values. For grid
runs the ``index`` of a result row is the position in the expanded, filtered
grid; for search runs it is this product index.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

from tradingd.trading.strategies import get_strategy

__all__ = ["Axis", "ParameterSpace"]


class Axis:
    """One searched parameter: its grid values, and whether they have an order."""

    def __init__(self, name: str, values: Sequence[Any]) -> None:
        self.name = name
        self.values = list(values)
        self.numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in self.values)
        # Numeric axes are searched by rank (ordinal), whatever order the spec lists them in.
        self.by_rank = sorted(range(len(self.values)), key=lambda i: self.values[i]) if self.numeric else None

    def __repr__(self) -> str:
        return f"<Axis {self.name} {len(self.values)} values{' ordinal' if self.numeric else ''}>"

    def position(self, choice: int) -> int:
        """The position in ``values`` of what a sampler chose (a rank for numeric axes)."""
        return self.by_rank[choice] if self.by_rank is not None else choice


class ParameterSpace(Sequence[dict[str, Any]]):
    """The combinations of ``grid`` for ``strategy``; ``space[i]`` is the i-th, validated.

    ``space[i]`` raises the strategy's ``StrategyConstraintError`` for a
    combination whose values do not fit together (fast >= slow).
    """

    def __init__(self, strategy: str, grid: Mapping[str, Sequence[Any]]) -> None:
        self.strategy = get_strategy(strategy)
        self.names = list(grid)
        self.values = [list(values) for values in grid.values()]
        self.size = math.prod(len(v) for v in self.values)
        strides = [1] * len(self.values)
        for i in range(len(self.values) - 2, -1, -1):
            strides[i] = strides[i + 1] * len(self.values[i + 1])
        self.strides = strides
        self._validated: dict[int, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"<ParameterSpace {self.strategy.name} {self.size:,} combinations over {', '.join(self.names)}>"

    def __len__(self) -> int:
        return self.size

    def searched_axes(self) -> list[Axis]:
        """The axes with more than one value (the others are fixed)."""
        return [Axis(name, values) for name, values in zip(self.names, self.values, strict=True) if len(values) > 1]

    def index_of(self, positions: Mapping[str, int]) -> int:
        """The product index of one position per axis (a fixed axis may be left out)."""
        return sum(positions.get(name, 0) * stride for name, stride in zip(self.names, self.strides, strict=True))

    def raw(self, index: int) -> dict[str, Any]:
        """The combination at ``index`` as the grid writes it (not validated)."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} outside the space of {self.size} combinations")
        return {name: values[(index // stride) % len(values)]
                for name, values, stride in zip(self.names, self.values, self.strides, strict=True)}

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        found = self._validated.get(index)
        if found is None:
            found = self._validated[index] = self.strategy.validate_params(self.raw(index))
        return dict(found)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(self.size):
            yield self[index]
