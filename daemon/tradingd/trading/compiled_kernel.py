"""``KernelState``: the chunk state of ``kernel.py`` stepped by the compiled loops when they are loaded.

``step`` runs ``compiled.step_block`` on held targets (any strategy);
``step_crossings`` runs it on a ``CrossingSignal`` (a crossover strategy's
lines), computing the targets inside the loop: no ``(bars, combinations)``
block of targets at all. Both fall back to the numpy kernel until numba has
loaded (``acceleration.compiled``); all paths give bit-identical results.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tradingd.trading import buffers
from tradingd.trading.acceleration import compiled
from tradingd.trading.kernel import BlockPrices, ChunkState
from tradingd.trading.simulation import TradeTable
from tradingd.trading.strategy import CrossingSignal

__all__ = ["KernelState", "Scratch"]

Array = NDArray[np.float64]

_FLOATS = ("held", "price_in", "seg_equity", "n_trades", "wins", "gross_profit", "gross_loss",
           "last_equity", "sum_r", "sum_r2", "sum_down2", "peak", "min_ratio")
_INTS = ("entry_bar", "ruined", "exposed", "last_peak", "max_under")
# The integer rows kept as views (``ruined`` is a bool array: set after each step).
_VIEWED = (0, 2, 3, 4)
_VIEWED_NAMES = _FLOATS + tuple(_INTS[i] for i in _VIEWED)
_NO_LINES = np.zeros((1, 0))
_NO_INDEX = np.zeros(0, dtype=np.int64)
_NO_HELD = np.zeros((0, 0), dtype=np.int8)
_NO_CURVES = np.empty((0, 0))
_NO_TRADES = np.empty((0, 9))


class Scratch:
    """``compiled.step_block``'s scratch arrays, one set per thread, grown to the longest block.

    Reused from step to step, taken from (and given back to) ``buffers``: a
    megabyte allocated afresh on every step is faulted in page by page.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._taken: list[NDArray[Any]] = []

    def get(self, bars: int) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.uint64]]:
        """(work, marks, words) with room for ``bars`` bars, for the calling thread (one allocation)."""
        arrays: tuple[Any, Any, Any] | None = getattr(self._local, "arrays", None)
        if arrays is None or arrays[0].shape[1] < bars:
            n_words = bars // 64 + 1
            raw = buffers.take((4 * bars + bars + 1 + 2 * n_words,), np.int64)
            arrays = (raw[:4 * bars].view(np.float64).reshape(4, bars), raw[4 * bars:5 * bars + 1],
                      raw[5 * bars + 1:].view(np.uint64).reshape(2, n_words))
            self._local.arrays = arrays
            with self._lock:
                self._taken.append(raw)
        return arrays

    def release(self) -> None:
        """Give every thread's arrays back (the sweep has ended)."""
        with self._lock:
            taken, self._taken = self._taken, []
        for array in taken:
            buffers.give(array)


class KernelState(ChunkState):
    """A chunk's carried state, advanced by the compiled loops when numba is loaded.

    Between compiled steps the state lives packed (``_packed``: the float rows
    and the integer rows ``step_block`` updates in place), with the
    attributes of ``ChunkState`` as views of its rows; a numpy step replaces
    attributes, and the next compiled step packs them again.
    """

    _packed: tuple[NDArray[np.float64], NDArray[np.int64], list[NDArray[Any]]] | None = None
    _constant: tuple[NDArray[np.int64], NDArray[np.bool_]] | None = None

    def step(self, held: Array, prices: BlockPrices, *, need_equity: bool, scratch: Scratch | None = None) -> None:
        """Advance every combination over one block of held targets ``(bars, width)``."""
        loops = compiled()
        if loops is None:
            super().step(held, prices, need_equity=need_equity)
            return
        if held.shape[1] > 1 and not held.flags.f_contiguous:
            held = np.asfortranarray(held)  # the loop walks each combination's bars in turn
        kept = np.fromiter(self.keep_trades, dtype=np.int64)
        room = loops.changes(held, self.held, kept) + len(kept) if kept.size else 0
        self._run(loops, held, prices, need_equity, room, None, scratch)

    def step_crossings(self, signal: CrossingSignal, carried: Any, last_target: Array, prices: BlockPrices, *,
                       long_only: bool, next_open: bool, need_equity: bool, scratch: Scratch | None = None
                       ) -> tuple[Any, Array] | None:
        """Advance over one block whose targets follow ``signal``'s crossings.

        ``carried`` and ``last_target`` as ``rules.crossing_block`` and the
        engine keep them (updated in place); returns their new values, or None when this chunk
        cannot run this way (numba not loaded, or trades to keep: run
        ``step`` on the strategy's targets instead). ``scratch``: the
        sweep's scratch arrays (None: allocated for this step).
        """
        loops = compiled()
        if loops is None or self.keep_trades:
            return None
        k = len(signal.fast)
        first_sign, position = carried if carried is not None else (np.zeros(k, np.int8), np.zeros(k))
        # Updated in place (the chunk's own arrays; converted only if a numpy block left other types).
        first_sign = np.asarray(first_sign, dtype=np.int8)
        position = np.asarray(position, dtype=np.float64)
        last = np.asarray(last_target, dtype=np.float64)
        lines = (signal.rows, signal.fast, signal.slow, signal.offset, first_sign, position, last, long_only,
                 next_open)
        self._run(loops, _NO_HELD, prices, need_equity, 0, lines, scratch)
        return (first_sign, position), last

    def _pack(self) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """The state as ``step_block`` takes it, the attributes as views of its rows."""
        if self._packed is not None:
            floats, ints, views = self._packed
            if all(getattr(self, name) is view for name, view in zip(_VIEWED_NAMES, views, strict=True)):
                ints[1] = self.ruined  # a bool attribute, never a view
                return floats, ints
        floats = np.stack([getattr(self, name) for name in _FLOATS])
        ints = np.stack([getattr(self, name).astype(np.int64) for name in _INTS])
        views = [floats[i] for i in range(len(_FLOATS))] + [ints[i] for i in _VIEWED]
        for name, view in zip(_VIEWED_NAMES, views, strict=True):
            setattr(self, name, view)
        self._packed = floats, ints, views
        return floats, ints

    def _run(self, loops: ModuleType, held: NDArray[Any], prices: BlockPrices, need_equity: bool, room: int,
             lines: tuple[Any, ...] | None, scratch: Scratch | None) -> None:
        k = len(self.held)
        b = len(prices.close)
        floats, ints = self._pack()
        if self._constant is None:
            slots = np.full(k, -1, dtype=np.int64)
            for slot, j in enumerate(self.keep_equity):
                slots[j] = slot
            keep = np.zeros(k, dtype=np.bool_)
            keep[list(self.keep_trades)] = True
            self._constant = slots, keep
        slots, keep = self._constant
        curves = np.empty((b, len(self.keep_equity))) if self.keep_equity else _NO_CURVES
        trades = np.empty((room, 9)) if room else _NO_TRADES
        flags = np.array([need_equity or bool(self.keep_equity), self.may_ruin, self.want_moments,
                          self.want_downside, self.want_drawdown, self.want_duration,
                          lines is not None, lines is not None and lines[7], lines is not None and lines[8]])
        rows, fast, slow, offset, first_sign, position, last_target = (
            lines[:7] if lines is not None else (_NO_LINES, _NO_INDEX, _NO_INDEX, 0, np.zeros(0, np.int8),
                                                 np.zeros(0), np.zeros(0)))
        work = loops.scratch(b) if scratch is None else scratch.get(b)
        count = loops.step_block(held, rows, fast, slow, offset, first_sign, position, last_target,
                                 prices.fill, prices.close, prices.start, self.c, self.slip, flags,
                                 floats, ints, slots, keep, curves, trades, *work)
        self.ruined = ints[1] != 0
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
