"""The vectorized portfolio simulation of one chunk of combinations.

Model (docs/engine.md, "Simulation model"): a target position ``w`` in
[-1, 1] is a fraction of equity. When the held target changes, the current
position is closed and the new one opened at the fill price; in between, units
are held (no rebalancing). Opening with equity ``E`` buys (or sells short)
notional ``N = |w| E / (1 + c)`` and pays ``c N`` commission, so ``|w| E`` is
committed; closing pays ``c`` on the exit notional. Slippage worsens every
fill price by ``slip`` (buy higher, sell lower).

With ``a = |w|``, ``s = sign(w)`` and entry fill price ``p_in`` the equity of a
segment that started with equity ``E`` is, marked at price ``p``::

    E * (1 - a + a / (1 + c) * (1 + s * (p / p_in - 1)))

and after closing it at fill price ``p_out``::

    E * (1 - a + a / (1 + c) * ((1 - s) + s * (p_out / p_in) * (1 - s * c)))

So a whole combination is a product of per-segment factors. ``kernel.py``
runs the model block by block: fills are found sparsely (``np.nonzero`` of
target changes), segment start equities are a grouped cumulative product over
the fills, and the dense equity curve (only when needed) forward-fills the
segment data with an index accumulate: no Python loop over bars anywhere.

Ruin: if equity reaches 0 or below (only possible short), the position is
liquidated at that bar's close, equity stays 0 and later targets are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["BacktestConfig", "FillModel", "TradeTable", "exit_factor", "mark_factor"]

Array = NDArray[np.float64]
IntArray = NDArray[np.intp]
FillModel = Literal["close", "next_open"]


@dataclass(frozen=True)
class BacktestConfig:
    """How positions become trades: fills, costs, direction and annualisation."""

    fill: FillModel = "close"
    commission: float = 0.0
    slippage_bps: float = 0.0
    allow_short: bool = False
    initial_equity: float = 10_000.0
    periods_per_year: float | None = None

    def __post_init__(self) -> None:
        if self.fill not in ("close", "next_open"):
            raise ValueError(f"fill must be 'close' or 'next_open', got {self.fill!r}")
        if not (0.0 <= self.commission < 1.0):
            raise ValueError(f"commission must be in [0, 1), got {self.commission}")
        if not (0.0 <= self.slippage_bps < 10_000.0):
            raise ValueError(f"slippage_bps must be in [0, 10000), got {self.slippage_bps}")
        if not (self.initial_equity > 0 and math.isfinite(self.initial_equity)):
            raise ValueError(f"initial_equity must be positive, got {self.initial_equity}")
        if self.periods_per_year is not None and not self.periods_per_year > 0:
            raise ValueError(f"periods_per_year must be positive, got {self.periods_per_year}")


@dataclass
class TradeTable:
    """Flat trades of a chunk, sorted by (column, entry bar)."""

    col: IntArray
    entry_bar: IntArray
    exit_bar: IntArray
    side: NDArray[np.int8]
    size: Array
    entry_price: Array
    exit_price: Array
    ret: Array
    pnl: Array
    is_open: NDArray[np.bool_]

    def select(self, mask: NDArray[np.bool_] | IntArray) -> TradeTable:
        """Rows selected by a boolean mask or index array."""
        return TradeTable(*(getattr(self, f)[mask] for f in _TRADE_FIELDS))

    @staticmethod
    def concat(tables: list[TradeTable]) -> TradeTable:
        """Concatenate and re-sort by (column, entry bar)."""
        merged = TradeTable(*(np.concatenate([getattr(t, f) for t in tables]) for f in _TRADE_FIELDS))
        order = np.lexsort((merged.entry_bar, merged.col))
        return merged.select(order)


_TRADE_FIELDS = ("col", "entry_bar", "exit_bar", "side", "size", "entry_price", "exit_price",
                 "ret", "pnl", "is_open")


def mark_factor(a: Array, s: Array, price: Array, p_in: Array, c: float) -> Array:
    """Equity factor of a segment (size ``a``, side ``s``, entry ``p_in``) marked at ``price``."""
    return 1.0 - a + a / (1.0 + c) * (1.0 + s * (price / p_in - 1.0))


def exit_factor(a: Array, s: Array, p_out: Array, p_in: Array, c: float) -> Array:
    """Equity factor of a segment closed at fill price ``p_out`` (exit commission paid)."""
    return 1.0 - a + a / (1.0 + c) * ((1.0 - s) + s * (p_out / p_in) * (1.0 - s * c))
