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

So a whole combination is a product of per-segment factors. Fills are found
sparsely (``np.nonzero`` of target changes), segment start equities are a
grouped cumulative product over the fills, and the dense equity curve (only
when needed) forward-fills the segment data with an index accumulate: no
Python loop over bars anywhere.

Ruin: if equity reaches 0 or below (only possible short), the position is
liquidated at that bar's close, equity stays 0 and later targets are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["BacktestConfig", "ChunkOutcome", "FillModel", "TradeTable", "simulate_chunk"]

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


@dataclass
class ChunkOutcome:
    """Per-column results of one chunk."""

    total_return: Array
    exposure: Array
    trades: TradeTable
    equity: Array | None  # (n_bars, k) currency, when dense was requested


def _mark(a: Array, s: Array, price: Array, p_in: Array, c: float) -> Array:
    return 1.0 - a + a / (1.0 + c) * (1.0 + s * (price / p_in - 1.0))


def _exit(a: Array, s: Array, p_out: Array, p_in: Array, c: float) -> Array:
    return 1.0 - a + a / (1.0 + c) * ((1.0 - s) + s * (p_out / p_in) * (1.0 - s * c))


@dataclass
class _Events:
    """Target changes of every column, sorted by (column, bar)."""

    bar: IntArray
    col: IntArray
    w_new: Array
    w_old: Array
    price_in: Array      # entry fill price of the new target (incl. slippage)
    price_out: Array     # exit fill price of the old target (incl. slippage)
    factor: Array        # equity factor of closing the old segment (1 if it was flat)
    seg_equity: Array    # equity after the close = start equity of the new segment
    last: IntArray       # index of each column's last event, -1 if none


def _events(held: Array, fill_price: Array, commission: float, slip: float,
            initial_equity: float) -> _Events:
    n, k = held.shape
    change = np.empty((n, k), dtype=bool)
    np.not_equal(held[0], 0.0, out=change[0])
    np.not_equal(held[1:], held[:-1], out=change[1:])
    bar, col = np.nonzero(change)
    order = np.argsort(col, kind="stable")
    bar, col = bar[order], col[order]
    m = len(bar)
    w_new = held[bar, col]
    w_old = np.zeros(m)
    later = bar > 0
    w_old[later] = held[bar[later] - 1, col[later]]
    price = fill_price[bar]
    price_in = price * (1.0 + np.sign(w_new) * slip)
    s_old = np.sign(w_old)
    price_out = price * (1.0 - s_old * slip)
    # The previous event of the same column opened the segment being closed;
    # a column's first event always has w_old == 0 (targets start flat).
    prev_in = np.empty(m)
    prev_in[1:] = price_in[:-1]
    prev_in[:1] = 1.0
    closing = w_old != 0.0
    prev_in[~closing] = 1.0
    factor = _exit(np.abs(w_old), s_old, price_out, prev_in, commission)
    factor[~closing] = 1.0

    counts = np.bincount(col, minlength=k)
    starts = np.zeros(k, dtype=np.intp)
    np.cumsum(counts[:-1], out=starts[1:])
    rank = np.arange(m) - starts[col]
    width = int(counts.max()) if m else 0
    # Grouped cumulative product, sequential within each column (exact order).
    grid = np.ones((k, max(width, 1)))
    grid[col, rank] = factor
    np.cumprod(grid, axis=1, out=grid)
    seg_equity = initial_equity * grid[col, rank]
    last = np.where(counts > 0, starts + counts - 1, -1)
    return _Events(bar, col, w_new, w_old, price_in, price_out, factor, seg_equity, last)


def _trade_table(ev: _Events, n: int, close_last: float, commission: float,
                 initial_equity: float) -> tuple[TradeTable, Array]:
    """Closed trades plus trades still open at the end; and each column's final equity."""
    closing = np.flatnonzero(ev.w_old != 0.0)
    prev = closing - 1
    closed = TradeTable(
        col=ev.col[closing], entry_bar=ev.bar[prev], exit_bar=ev.bar[closing],
        side=np.sign(ev.w_old[closing]).astype(np.int8), size=np.abs(ev.w_old[closing]),
        entry_price=ev.price_in[prev], exit_price=ev.price_out[closing],
        ret=ev.factor[closing] - 1.0, pnl=ev.seg_equity[prev] * (ev.factor[closing] - 1.0),
        is_open=np.zeros(len(closing), dtype=bool),
    )
    has = ev.last >= 0
    last = ev.last[has]
    open_mask = ev.w_new[last] != 0.0
    idx = last[open_mask]
    a, s = np.abs(ev.w_new[idx]), np.sign(ev.w_new[idx])
    mark = _mark(a, s, np.full(len(idx), close_last), ev.price_in[idx], commission)
    still_open = TradeTable(
        col=ev.col[idx], entry_bar=ev.bar[idx], exit_bar=np.full(len(idx), n - 1, dtype=np.intp),
        side=s.astype(np.int8), size=a, entry_price=ev.price_in[idx],
        exit_price=np.full(len(idx), close_last), ret=mark - 1.0,
        pnl=ev.seg_equity[idx] * (mark - 1.0), is_open=np.ones(len(idx), dtype=bool),
    )
    k = len(ev.last)
    final = np.full(k, initial_equity)
    final[ev.col[last]] = ev.seg_equity[last]
    final[ev.col[idx]] *= mark
    return TradeTable.concat([closed, still_open]), final


def _dense_equity(held: Array, ev: _Events, fill_price: Array, close: Array, commission: float,
                  slip: float, initial_equity: float) -> Array:
    n, k = held.shape
    # Segment start equity per bar: the running product of the exit factors,
    # in the same sequential order as the grouped product over events.
    equity = np.ones((n, k))
    equity[ev.bar, ev.col] = ev.factor
    np.multiply.accumulate(equity, axis=0, out=equity)
    equity *= initial_equity
    start = np.zeros((n, k), dtype=np.int32)
    start[ev.bar, ev.col] = ev.bar
    np.maximum.accumulate(start, axis=0, out=start)
    # Mark factor 1 - a + (a + w * (close / p_in - 1)) / (1 + c), computed in place.
    mark = np.take(fill_price, start)
    del start
    if slip:
        mark *= 1.0 + np.sign(held) * slip
    np.divide(close[:, None], mark, out=mark)
    mark -= 1.0
    mark *= held
    size = np.abs(held)
    mark += size
    mark /= 1.0 + commission
    mark += 1.0
    mark -= size
    equity *= mark
    return equity


def _apply_ruin(held: Array, ev: _Events, equity: Array, trades: TradeTable, total: Array,
                exposure: Array, close: Array) -> TradeTable:
    """Zero equity from the first bar at or below 0 and liquidate there (short only)."""
    n = len(close)
    bad_equity = equity <= 0.0
    bad_fill = np.zeros_like(bad_equity)
    bad_fill[ev.bar, ev.col] = ev.seg_equity <= 0.0
    ruined_any = bad_equity | bad_fill
    ruined_cols = np.flatnonzero(ruined_any.any(axis=0))
    if ruined_cols.size == 0:
        return trades
    keep = ~np.isin(trades.col, ruined_cols)
    rebuilt: list[TradeTable] = [trades.select(keep)]
    for j in ruined_cols:  # loop over ruined combinations (rare), never over bars
        r = int(np.argmax(ruined_any[:, j]))
        equity[r:, j] = 0.0
        total[j] = -1.0
        exposure[j] = np.count_nonzero(held[: r + 1, j]) / n
        own = trades.select((trades.col == j) & (trades.exit_bar < r) & ~trades.is_open)
        in_col = np.flatnonzero((ev.col == j) & (ev.bar <= r))
        at_r = in_col[ev.bar[in_col] == r]
        if at_r.size and ev.w_old[at_r[0]] != 0.0:
            e = int(at_r[0])
            if ev.seg_equity[e] <= 0.0:  # the exit fill itself wiped the equity out
                victim, exit_price = e - 1, float(ev.price_out[e])
            else:  # the old trade closed normally; the new one died on its first mark
                own = trades.select((trades.col == j) & (trades.exit_bar <= r) & ~trades.is_open)
                victim, exit_price = e, float(close[r])
        else:
            victim, exit_price = int(in_col[-1]), float(close[r])
        loss = TradeTable(
            col=np.array([j]), entry_bar=np.array([ev.bar[victim]]), exit_bar=np.array([r]),
            side=np.array([np.sign(ev.w_new[victim])], dtype=np.int8),
            size=np.array([abs(ev.w_new[victim])]), entry_price=np.array([ev.price_in[victim]]),
            exit_price=np.array([exit_price]), ret=np.array([-1.0]),
            pnl=np.array([-ev.seg_equity[victim]]), is_open=np.array([False]))
        rebuilt += [own, loss]
    return TradeTable.concat(rebuilt)


def simulate_chunk(targets: Array, fill_price: Array, close: Array, *, next_open: bool,
                   commission: float, slip: float, initial_equity: float, dense: bool,
                   may_ruin: bool) -> ChunkOutcome:
    """Simulate ``targets`` (bars x k, already clipped to the allowed range).

    ``fill_price`` is the close (fill "close") or the open ("next_open"). With
    ``next_open`` the target decided at bar t is held from bar t + 1. The
    dense equity curve is computed when ``dense`` or ``may_ruin`` (shorts can
    ruin between fills, which only the curve reveals).
    """
    n = targets.shape[0]
    if next_open:
        held = np.empty_like(targets)
        held[0] = 0.0
        held[1:] = targets[:-1]
    else:
        held = targets
    ev = _events(held, fill_price, commission, slip, initial_equity)
    trades, final = _trade_table(ev, n, float(close[-1]), commission, initial_equity)
    total = final / initial_equity - 1.0
    exposure = np.count_nonzero(held, axis=0) / n
    equity: Array | None = None
    if dense or may_ruin:
        equity = _dense_equity(held, ev, fill_price, close, commission, slip, initial_equity)
        if may_ruin:
            trades = _apply_ruin(held, ev, equity, trades, total, exposure, close)
    return ChunkOutcome(total_return=total, exposure=exposure, trades=trades, equity=equity)
