"""The objective over two swept parameters, as a grid (no plotting here).

Kept apart from the drawing so the grid — one cell per swept combination — is
plain data the report can also print as a table and tests can check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tradingd.formatting import finite_number
from tradingd.reports.phase_data import Combination, higher_is_better

__all__ = ["Heatmap", "build_heatmap", "swept_parameters"]


@dataclass(frozen=True)
class Heatmap:
    """``cells[row][col]`` is the objective at (``y_values[row]``, ``x_values[col]``) or ``None``."""

    objective: str
    x_name: str
    y_name: str
    x_values: list[Any]
    y_values: list[Any]
    cells: list[list[float | None]]
    folded: list[str]  # other swept parameters (best value kept) and symbols (averaged)
    selected: list[tuple[int, int]] = field(default_factory=list)  # (row, col) of selected combinations

    @property
    def filled(self) -> int:
        """Number of cells with a value."""
        return sum(1 for row in self.cells for value in row if value is not None)


def _sort_key(value: Any) -> tuple[int, float, str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _hashable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else repr(value)


def swept_parameters(combinations: Sequence[Combination]) -> list[str]:
    """Parameter names that take more than one value, in first-seen order."""
    seen: dict[str, set[Any]] = {}
    for combo in combinations:
        for name, value in combo.params.items():
            seen.setdefault(name, set()).add(_hashable(value))
    return [name for name, values in seen.items() if len(values) > 1]


def build_heatmap(combinations: Sequence[Combination], objective: str | None,
                  selected: Sequence[Combination] = ()) -> Heatmap | None:
    """The objective over the first two swept parameters, or ``None`` if fewer than two are swept.

    Several symbols are averaged per parameter combination (the objective a
    portfolio of them would rank by); further swept parameters are folded by
    keeping their best value, so each cell shows the best the phase found there.
    The cells of the ``selected`` combinations are listed in ``selected``.
    """
    if not objective:
        return None
    swept = swept_parameters(combinations)
    if len(swept) < 2:
        return None
    x_name, y_name = swept[0], swept[1]
    better = max if higher_is_better(objective) else min
    # combination (all params) -> values across symbols
    per_combo: dict[tuple[Any, ...], list[float]] = {}
    coords: dict[tuple[Any, ...], tuple[Any, Any]] = {}
    for combo in combinations:
        value = finite_number(combo.metrics.get(objective))
        if value is None:
            continue
        key = tuple(_hashable(combo.params.get(name)) for name in swept)
        per_combo.setdefault(key, []).append(value)
        coords[key] = (combo.params.get(x_name), combo.params.get(y_name))
    cell_values: dict[tuple[Any, Any], float] = {}
    for key, values in per_combo.items():
        mean = sum(values) / len(values)
        x, y = coords[key]
        cell = (_hashable(x), _hashable(y))
        cell_values[cell] = better(cell_values[cell], mean) if cell in cell_values else mean
    xs = sorted({c[0] for c in cell_values}, key=_sort_key)
    ys = sorted({c[1] for c in cell_values}, key=_sort_key)
    cells = [[cell_values.get((x, y)) for x in xs] for y in ys]
    folded = [f"{name} (best)" for name in swept[2:]]
    if len({c.symbol for c in combinations}) > 1:
        counts = {len(values) for values in per_combo.values()}
        if counts == {1}:  # a testing phase: each combination was tested where it was selected
            folded.append("one symbol per combination")
        elif len(counts) > 1:
            folded.append(f"symbols (mean of {min(counts)}–{max(counts)} per combination)")
        else:
            folded.append("symbols (mean)")
    marks = {(_hashable(c.params.get(x_name)), _hashable(c.params.get(y_name))) for c in selected}
    chosen = sorted((ys.index(y), xs.index(x)) for x, y in marks if x in xs and y in ys)
    return Heatmap(objective, x_name, y_name, xs, ys, cells, folded, chosen)
