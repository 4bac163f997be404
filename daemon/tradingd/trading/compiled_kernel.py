"""``KernelState``: the chunk state of ``kernel.py`` stepped by the compiled loops when they are loaded.

``step`` runs ``compiled.step_block`` on held targets (any strategy);
``step_crossings`` runs it on a ``CrossingSignal`` (a crossover strategy's
lines), computing the targets inside the loop: no ``(bars, combinations)``
block of targets at all. Both fall back to the numpy kernel until numba has
loaded (``acceleration.compiled``); all paths give bit-identical results.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.acceleration import compiled
from tradingd.trading.kernel import BlockPrices, ChunkState
from tradingd.trading.simulation import TradeTable
from tradingd.trading.strategy import CrossingSignal

__all__ = ["KernelState"]

Array = NDArray[np.float64]

_FLOATS = ("held", "price_in", "seg_equity", "n_trades", "wins", "gross_profit", "gross_loss",
           "last_equity", "sum_r", "sum_r2", "sum_down2", "peak", "min_ratio")
_INTS = ("entry_bar", "ruined", "exposed", "last_peak", "max_under")
_NO_LINES = np.zeros((1, 0))
_NO_INDEX = np.zeros(0, dtype=np.int64)


class KernelState(ChunkState):
    """A chunk's carried state, advanced by the compiled loops when numba is loaded."""

    def step(self, held: Array, prices: BlockPrices, *, need_equity: bool) -> None:
        """Advance every combination over one block of held targets ``(bars, width)``."""
        loops = compiled()
        if loops is None:
            super().step(held, prices, need_equity=need_equity)
            return
        if held.shape[1] > 1 and not held.flags.f_contiguous:
            held = np.asfortranarray(held)  # the loop walks each combination's bars in turn
        kept = np.fromiter(self.keep_trades, dtype=np.int64)
        room = loops.changes(held, self.held, kept) + len(kept) if kept.size else 0
        self._run(loops, held, prices, need_equity, room, None)

    def step_crossings(self, signal: CrossingSignal, carried: Any, last_target: Array, prices: BlockPrices, *,
                       long_only: bool, next_open: bool, need_equity: bool) -> tuple[Any, Array] | None:
        """Advance over one block whose targets follow ``signal``'s crossings.

        ``carried`` and ``last_target`` as ``rules.crossing_block`` and the
        engine keep them; returns their new values, or None when this chunk
        cannot run this way (numba not loaded, or trades to keep: run
        ``step`` on the strategy's targets instead).
        """
        loops = compiled()
        if loops is None or self.keep_trades:
            return None
        k = len(signal.fast)
        first_sign, position = carried if carried is not None else (np.zeros(k, np.int8), np.zeros(k))
        lines = (signal.rows, signal.fast, signal.slow, signal.offset, first_sign.copy(), position.copy(),
                 np.array(last_target, dtype=np.float64), long_only, next_open)
        self._run(loops, np.zeros((len(prices.close), 0), dtype=np.int8), prices, need_equity, 0, lines)
        return (lines[4], lines[5]), lines[6]

    def _run(self, loops: ModuleType, held: NDArray[Any], prices: BlockPrices, need_equity: bool, room: int,
             lines: tuple[Any, ...] | None) -> None:
        k = len(self.held)
        b = len(prices.close)
        floats = np.stack([getattr(self, name) for name in _FLOATS])
        ints = np.stack([getattr(self, name).astype(np.int64) for name in _INTS])
        slots = np.full(k, -1, dtype=np.int64)
        curves = np.empty((b, len(self.keep_equity)))
        for slot, j in enumerate(self.keep_equity):
            slots[j] = slot
        keep = np.zeros(k, dtype=np.bool_)
        keep[list(self.keep_trades)] = True
        trades = np.empty((room, 9))
        flags = np.array([need_equity or bool(self.keep_equity), self.may_ruin, self.want_moments,
                          self.want_downside, self.want_drawdown, self.want_duration,
                          lines is not None, lines is not None and lines[7], lines is not None and lines[8]])
        rows, fast, slow, offset, first_sign, position, last_target = (
            lines[:7] if lines is not None else (_NO_LINES, _NO_INDEX, _NO_INDEX, 0, np.zeros(0, np.int8),
                                                 np.zeros(0), np.zeros(0)))
        count = loops.step_block(held, rows, fast, slow, offset, first_sign, position, last_target,
                                 prices.fill, prices.close, prices.start, self.c, self.slip, flags,
                                 floats, ints, slots, keep, curves, trades)
        for name, values in zip(_FLOATS, floats, strict=True):
            setattr(self, name, values)
        for name, values in zip(_INTS, ints, strict=True):
            setattr(self, name, values.astype(getattr(self, name).dtype))
        for j, curve in self.keep_equity.items():
            curve[prices.start:prices.start + b] = curves[:, slots[j]]
        if count:
            t = trades[:count]
            n = np.intp
            self.trades.append(TradeTable(
                col=t[:, 0].astype(n), entry_bar=t[:, 1].astype(n), exit_bar=t[:, 2].astype(n),
                side=t[:, 3].astype(np.int8), size=t[:, 4], entry_price=t[:, 5], exit_price=t[:, 6], ret=t[:, 7],
                pnl=t[:, 8], is_open=np.zeros(count, dtype=bool)))
        self.bars += b
