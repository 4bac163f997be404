"""The simulation of one chunk of combinations, one time block after another.

The model is the one in ``simulation.py`` (docs/engine.md, "Simulation
model"). ``ChunkState`` carries everything a combination needs from one block
to the next: the held target, the open segment's entry price, start equity and
entry bar, the trade statistics, and for the equity-curve metrics the last
equity, the running peak, the return sums and the drawdown records. Every
quantity is accumulated in the same order whether the bars come in one block
or many (products and sums sequential per combination, statistics added trade
by trade), so a blocked sweep gives bit-identical results to an unblocked one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.simulation import TradeTable, exit_factor, mark_factor

__all__ = ["BlockPrices", "ChunkState"]

Array = NDArray[np.float64]
IntArray = NDArray[np.intp]


@dataclass(frozen=True)
class BlockPrices:
    """Prices of one block of bars ``start .. start + len(close)``."""

    start: int
    fill: Array
    close: Array


def _column_sum(rows: Array) -> Array:
    """``rows[0] + rows[1] + ...`` per column, strictly in that order.

    numpy reduces axis 0 of a C-contiguous ``(n, k >= 2)`` array row by row;
    one column goes through a cumulative sum, which is sequential too.
    """
    if rows.shape[1] > 1:
        return np.asarray(rows.sum(axis=0), dtype=np.float64)
    return np.asarray(np.cumsum(rows, axis=0)[-1], dtype=np.float64)


class ChunkState:
    """The carried state of ``width`` combinations between time blocks."""

    def __init__(self, width: int, *, commission: float, slip: float, initial_equity: float,
                 dense: frozenset[str], may_ruin: bool, keep_trades: frozenset[int], keep_equity: dict[int, Array]
                 ) -> None:
        k = width
        self.c, self.slip, self.e0 = commission, slip, initial_equity
        # Which equity-curve sums to keep: only those the requested metrics need.
        self.dense, self.may_ruin = bool(dense), may_ruin
        self.want_moments = bool(dense & {"volatility", "sharpe", "sortino"})
        self.want_downside = "sortino" in dense
        self.want_drawdown = bool(dense & {"max_drawdown", "max_drawdown_duration"})
        self.want_duration = "max_drawdown_duration" in dense
        self.held = np.zeros(k)
        self.price_in = np.ones(k)
        self.seg_equity = np.full(k, initial_equity)
        self.entry_bar = np.full(k, -1, dtype=np.intp)
        self.ruined = np.zeros(k, dtype=bool)
        self.exposed = np.zeros(k, dtype=np.int64)
        self.n_trades = np.zeros(k)
        self.wins = np.zeros(k)
        self.gross_profit = np.zeros(k)
        self.gross_loss = np.zeros(k)
        self.last_equity = np.full(k, initial_equity)
        self.sum_r = np.zeros(k)
        self.sum_r2 = np.zeros(k)
        self.sum_down2 = np.zeros(k)
        self.peak = np.full(k, initial_equity)
        self.min_ratio = np.ones(k)
        self.last_peak = np.full(k, -1, dtype=np.int64)
        self.max_under = np.zeros(k, dtype=np.int64)
        self.bars = 0
        self.keep_trades = keep_trades
        self.trades: list[TradeTable] = []
        # Kept equity curves (column -> full-length array), filled block by block.
        self.keep_equity = keep_equity

    # --- trades -----------------------------------------------------------------------

    def _record(self, t: TradeTable) -> None:
        """Add trades (sorted by column, then time) to the statistics, in that order."""
        if len(t.col) == 0:
            return
        np.add.at(self.n_trades, t.col, 1.0)
        np.add.at(self.wins, t.col, (t.ret > 0).astype(np.float64))
        np.add.at(self.gross_profit, t.col, np.maximum(t.pnl, 0.0))
        np.add.at(self.gross_loss, t.col, np.maximum(-t.pnl, 0.0))
        if self.keep_trades:
            kept = np.isin(t.col, np.fromiter(self.keep_trades, dtype=np.intp))
            if kept.any():
                self.trades.append(t.select(kept))

    # --- one block --------------------------------------------------------------------

    def step(self, held: Array, prices: BlockPrices, *, need_equity: bool) -> None:
        """Advance every combination over one block of held targets ``(bars, width)``."""
        held = held.astype(np.float64, copy=False)
        b, k = held.shape
        t0 = prices.start
        if self.ruined.any():
            held = held.copy()  # the caller's array stays untouched
            held[:, self.ruined] = 0.0
        change = np.empty((b, k), dtype=bool)
        np.not_equal(held[0], self.held, out=change[0])
        np.not_equal(held[1:], held[:-1], out=change[1:])
        bar, col = np.nonzero(change)
        del change
        order = np.argsort(col, kind="stable")
        bar, col = bar[order], col[order]
        m = len(bar)
        w_new = held[bar, col]
        first = np.ones(m, dtype=bool)
        first[1:] = col[1:] != col[:-1]
        w_old = np.empty(m)
        w_old[~first] = w_new[:-1][~first[1:]]
        w_old[first] = self.held[col[first]]
        price = prices.fill[bar]
        price_in = price * (1.0 + np.sign(w_new) * self.slip)
        s_old = np.sign(w_old)
        price_out = price * (1.0 - s_old * self.slip)
        prev_in = np.empty(m)
        prev_in[~first] = price_in[:-1][~first[1:]]
        prev_in[first] = self.price_in[col[first]]
        closing = w_old != 0.0
        prev_in[~closing] = 1.0
        factor = exit_factor(np.abs(w_old), s_old, price_out, prev_in, self.c)
        factor[~closing] = 1.0
        # Segment start equities: a sequential product per column, from the carried equity.
        counts = np.bincount(col, minlength=k)
        starts = np.zeros(k, dtype=np.intp)
        np.cumsum(counts[:-1], out=starts[1:])
        rank = np.arange(m) - starts[col]
        grid = np.ones((k, int(counts.max()) + 1 if m else 1))
        grid[:, 0] = self.seg_equity
        grid[col, rank + 1] = factor
        np.multiply.accumulate(grid, axis=1, out=grid)
        seg_equity = grid[col, rank + 1]
        del grid
        prev_seg = np.empty(m)
        prev_seg[~first] = seg_equity[:-1][~first[1:]]
        prev_seg[first] = self.seg_equity[col[first]]
        prev_bar = np.empty(m, dtype=np.intp)
        prev_bar[~first] = bar[:-1][~first[1:]] + t0
        prev_bar[first] = self.entry_bar[col[first]]

        equity = None
        if need_equity or self.may_ruin:
            equity = self._equity(held, bar, col, seg_equity, price_in, prices)
        ruin_at = np.full(k, b, dtype=np.intp)
        if self.may_ruin and equity is not None:
            bad = equity <= 0.0
            bad[bar, col] |= seg_equity <= 0.0
            hit = bad.any(axis=0) & ~self.ruined
            ruin_at[hit] = np.argmax(bad[:, hit], axis=0)
            del bad

        # Closed trades of this block (a ruined column keeps those before its ruin).
        alive = bar < ruin_at[col]
        close_ix = np.flatnonzero(closing & alive)
        self._record(TradeTable(
            col=col[close_ix], entry_bar=prev_bar[close_ix], exit_bar=bar[close_ix] + t0,
            side=np.sign(w_old[close_ix]).astype(np.int8), size=np.abs(w_old[close_ix]),
            entry_price=prev_in[close_ix], exit_price=price_out[close_ix], ret=factor[close_ix] - 1.0,
            pnl=prev_seg[close_ix] * (factor[close_ix] - 1.0), is_open=np.zeros(len(close_ix), dtype=bool)))
        # Carry the last surviving event of every column.
        live = np.flatnonzero(alive)
        if live.size:
            last = live[np.r_[col[live][1:] != col[live][:-1], True]]
            lc = col[last]
            self.held[lc] = w_new[last]
            self.price_in[lc] = price_in[last]
            self.seg_equity[lc] = seg_equity[last]
            self.entry_bar[lc] = bar[last] + t0
        hit_cols = np.flatnonzero(ruin_at < b)
        if hit_cols.size:
            if equity is None:
                raise AssertionError("ruin needs the equity block")
            self._ruin(hit_cols, ruin_at, held, bar, col, closing, seg_equity, price_out, prices, equity)
        counted = np.count_nonzero(held, axis=0)
        if hit_cols.size:
            counted[hit_cols] = np.count_nonzero(held[:, hit_cols] * (np.arange(b)[:, None]
                                                                     <= ruin_at[hit_cols]), axis=0)
        self.exposed += counted
        if equity is not None:
            if self.dense:
                self._accumulate(equity, t0)
            for j, curve in self.keep_equity.items():
                curve[t0:t0 + b] = equity[:, j]
        self.bars += b

    def _equity(self, held: Array, bar: IntArray, col: IntArray, seg_equity: Array, price_in: Array,
                prices: BlockPrices) -> Array:
        """Equity of every bar of the block: segment start equity times its mark factor."""
        b, k = held.shape
        m = len(bar)
        index = np.full((b, k), -1, dtype=np.int32)
        index[bar, col] = np.arange(m, dtype=np.int32)
        np.maximum.accumulate(index, axis=0, out=index)
        carried = index < 0
        # Bars before a column's first event in this block use the carried segment.
        index[carried] = (m + np.broadcast_to(np.arange(k, dtype=np.int32), (b, k)))[carried]
        del carried
        seg = np.concatenate([seg_equity, self.seg_equity])
        entry = np.concatenate([price_in, self.price_in])
        mark = np.take(entry, index)
        equity = np.take(seg, index)
        del index
        np.divide(prices.close[:, None], mark, out=mark)
        mark -= 1.0
        mark *= held
        size = np.abs(held)
        mark += size
        mark /= 1.0 + self.c
        mark += 1.0
        mark -= size
        del size
        equity *= mark
        if self.ruined.any():
            equity[:, self.ruined] = 0.0
        return equity

    def _ruin(self, cols: IntArray, ruin_at: IntArray, held: Array, bar: IntArray, col: IntArray,
              closing: NDArray[np.bool_], seg_equity: Array, price_out: Array, prices: BlockPrices,
              equity: Array) -> None:
        """Liquidate ``cols`` at their ruin bar: the victim trade loses everything."""
        t0 = prices.start
        for j in cols:  # ruined combinations are rare: a loop over them, never over bars
            r = int(ruin_at[j])
            at_r = np.flatnonzero((col == j) & (bar == r))
            if at_r.size and closing[at_r[0]] and seg_equity[at_r[0]] <= 0.0:
                # The exit fill itself wiped the equity out: the closing trade is the victim.
                e = int(at_r[0])
                entry_bar, side = int(self.entry_bar[j]), int(np.sign(self.held[j]))
                size, entry_price, start = abs(float(self.held[j])), float(self.price_in[j]), float(
                    self.seg_equity[j])
                exit_price = float(price_out[e])
            else:
                if at_r.size:  # the old trade closed normally; the new one died on its first mark
                    e = int(at_r[0])
                    if closing[e]:
                        self._record(self._closed_at(j, e, bar, col, seg_equity, price_out, prices))
                    self._carry_event(j, e, bar, held, prices, seg_equity)
                entry_bar, side = int(self.entry_bar[j]), int(np.sign(self.held[j]))
                size, entry_price, start = abs(float(self.held[j])), float(self.price_in[j]), float(
                    self.seg_equity[j])
                exit_price = float(prices.close[r])
            if side != 0:
                self._record(TradeTable(
                    col=np.array([j]), entry_bar=np.array([entry_bar]), exit_bar=np.array([r + t0]),
                    side=np.array([side], dtype=np.int8), size=np.array([size]),
                    entry_price=np.array([entry_price]), exit_price=np.array([exit_price]),
                    ret=np.array([-1.0]), pnl=np.array([-start]), is_open=np.array([False])))
            equity[r:, j] = 0.0
            self.ruined[j] = True
            self.held[j] = 0.0
            self.seg_equity[j] = 0.0

    def _closed_at(self, j: int, e: int, bar: IntArray, col: IntArray, seg_equity: Array, price_out: Array,
                   prices: BlockPrices) -> TradeTable:
        factor = seg_equity[e] / self.seg_equity[j]
        return TradeTable(
            col=np.array([j]), entry_bar=np.array([self.entry_bar[j]]), exit_bar=np.array([bar[e] + prices.start]),
            side=np.array([np.sign(self.held[j])], dtype=np.int8), size=np.array([abs(self.held[j])]),
            entry_price=np.array([self.price_in[j]]), exit_price=np.array([price_out[e]]),
            ret=np.array([factor - 1.0]), pnl=np.array([seg_equity[e] - self.seg_equity[j]]),
            is_open=np.array([False]))

    def _carry_event(self, j: int, e: int, bar: IntArray, held: Array, prices: BlockPrices,
                     seg_equity: Array) -> None:
        w = float(held[bar[e], j])
        self.held[j] = w
        self.price_in[j] = float(prices.fill[bar[e]]) * (1.0 + np.sign(w) * self.slip)
        self.seg_equity[j] = float(seg_equity[e])
        self.entry_bar[j] = int(bar[e]) + prices.start

    def _accumulate(self, equity: Array, t0: int) -> None:
        """Fold the block's equity into the return sums and the drawdown records.

        Every sum starts from the carried value in row 0 of its buffer, so the
        additions happen in the same order however the bars are blocked.
        """
        b, k = equity.shape
        buffer = np.empty((b + 1, k))
        returns = buffer[1:]
        if self.want_moments:
            with np.errstate(divide="ignore", invalid="ignore"):
                np.divide(equity[1:], equity[:-1], out=returns[1:])
                np.divide(equity[0], self.last_equity, out=returns[0])
            returns -= 1.0
            dead = equity[:-1] <= 0.0
            if dead.any():  # after a ruin: 0 / 0, the return is 0
                returns[1:][dead] = 0.0
            returns[0][self.last_equity <= 0.0] = 0.0
            buffer[0] = self.sum_r
            sum_r = _column_sum(buffer)
            if self.want_downside:
                down = np.empty((b + 1, k))
                down[0] = self.sum_down2
                np.minimum(returns, 0.0, out=down[1:])
                np.square(down[1:], out=down[1:])
                self.sum_down2 = _column_sum(down)
                del down
            np.square(returns, out=returns)
            buffer[0] = self.sum_r2
            self.sum_r2 = _column_sum(buffer)
            self.sum_r = sum_r
        if self.want_drawdown:
            peak = np.empty((b + 1, k))
            peak[0] = self.peak
            peak[1:] = equity
            np.maximum.accumulate(peak, axis=0, out=peak)
            np.divide(equity, peak[1:], out=returns)
            self.min_ratio = np.minimum(self.min_ratio, returns.min(axis=0))
            if self.want_duration:
                rows = np.arange(t0, t0 + b, dtype=np.int64)[:, None]
                last_peak = np.where(equity >= peak[1:], rows, np.int64(-1))
                np.maximum(last_peak[0], self.last_peak, out=last_peak[0])
                np.maximum.accumulate(last_peak, axis=0, out=last_peak)
                self.max_under = np.maximum(self.max_under, (rows - last_peak).max(axis=0))
                self.last_peak = last_peak[-1].copy()
            self.peak = peak[-1].copy()
        self.last_equity = equity[-1].copy()

    # --- the end ----------------------------------------------------------------------

    def finish(self, close_last: float) -> Array:
        """Mark open trades at the last close; return each combination's final equity."""
        open_cols = np.flatnonzero((self.held != 0.0) & ~self.ruined)
        a, s = np.abs(self.held[open_cols]), np.sign(self.held[open_cols])
        mark = mark_factor(a, s, np.full(len(open_cols), close_last), self.price_in[open_cols], self.c)
        start = self.seg_equity[open_cols]
        self._record(TradeTable(
            col=open_cols, entry_bar=self.entry_bar[open_cols],
            exit_bar=np.full(len(open_cols), self.bars - 1, dtype=np.intp), side=s.astype(np.int8), size=a,
            entry_price=self.price_in[open_cols], exit_price=np.full(len(open_cols), close_last),
            ret=mark - 1.0, pnl=start * (mark - 1.0), is_open=np.ones(len(open_cols), dtype=bool)))
        final = self.seg_equity.copy()
        final[open_cols] *= mark
        return final
