"""The sweep's hot loops compiled with numba: one pass over a block's bars.

Imported only through ``acceleration.compiled()`` (numba costs ~0.3 s to
import, and the numpy path must work without it). Each loop is the numpy
code of ``kernel.ChunkState.step`` and ``rules.crossing_block`` written per
combination and per bar, with every floating-point operation in the same
order, so both paths give bit-identical results (the tests run both).

Why compiled: the numpy kernel makes a dozen passes over the
``(bars, combinations)`` block (changes, nonzero, index forward-fill,
gathers, marks, returns, sums, running peaks); these loops make one, keep
the per-combination state in registers and touch the block once. The
functions release the GIL (``nogil``), so the engine's threads run them
in parallel; ``cache=True`` keeps the machine code on disk between processes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tradingd.trading.compiled_crossings import crossing_changes
from tradingd.trading.compiled_equity import fold, mark_stretch
from tradingd.trading.jit import compile_loop

__all__ = ["CALLEES", "CALLEES_SHA256", "TRADE_FIELDS", "changes", "crossing_positions", "on_grid", "scratch",
           "sma_rows", "step_block", "warm_up"]

# numba caches step_block with the loops of these modules compiled into it, but
# checks only this file's content for changes. Their fingerprint here (checked by
# tests/unit/test_trading_kernels.py) makes any change to them a change of this
# file, so a stale step_block is never loaded from the cache.
CALLEES = ("compiled_crossings.py", "compiled_equity.py")
CALLEES_SHA256 = "cc7bf2de5930dbd57b149bff898c62c6806be3efa71dfc54f7802da964e0cafa"

# Columns of the kept-trades buffer, in order.
TRADE_FIELDS = ("col", "entry_bar", "exit_bar", "side", "size", "entry_price", "exit_price", "ret", "pnl")


@compile_loop
def _crossing_step(d: float, first: int, pos: int) -> tuple[int, int]:
    """One bar of ``rules.crossing_block``: the sign of fast - slow moves the first sign and the position."""
    sgn = (d > 0.0) - (d < 0.0)  # NaN (warm-up): 0
    if pos == 0:
        if first == 0:
            first = sgn
        elif sgn == -first:
            pos = sgn
    elif sgn != 0:
        pos = sgn
    return first, pos


@compile_loop
def crossing_positions(rows: Any, fast: Any, slow: Any, offset: int, n: int, first_sign: Any,
                       position: Any, out: Any) -> None:
    """``rules.crossing_block`` of ``rows[fast] - rows[slow]``, bars ``offset .. offset + n``.

    Writes ``out`` (bars x combinations); updates the carried ``first_sign``
    and ``position`` in place.
    """
    k = len(fast)
    for j in range(k):
        fr = rows[fast[j]]
        sr = rows[slow[j]]
        first = int(first_sign[j])
        pos = int(position[j])
        for t in range(n):
            first, pos = _crossing_step(fr[offset + t] - sr[offset + t], first, pos)
            out[t, j] = pos
        first_sign[j] = first
        position[j] = pos


@compile_loop
def on_grid(x: Any, units: float) -> bool:
    """``np.array_equal(np.rint(x * units) / units, x)`` in one pass, stopping at the first miss."""
    for t in range(len(x)):
        v = x[t]
        if np.rint(v * units) / units != v:
            return False
    return True


@compile_loop
def sma_rows(x: Any, windows: Any, units: float, origin: float, out: Any, sums: Any) -> None:
    """``indicators.sma_rows`` with a price scale: one pass per window, the same arithmetic.

    The integer running sum of ``rint((x - origin) * units)`` (wrapping, as
    numpy's) into ``sums`` (room for ``len(x)``), then per window the integer
    difference converted once, divided by ``w * units``, plus ``origin``; NaN
    before the window is full.
    """
    n = len(x)
    total = np.int64(0)
    for t in range(n):
        total += np.int64(np.rint((x[t] - origin if origin != 0.0 else x[t]) * units))
        sums[t] = total
    for j in range(len(windows)):
        w = windows[j]
        row = out[j]
        row[:min(w - 1, n)] = np.nan
        if w > n:
            continue
        d = w * units
        row[w - 1] = sums[w - 1] / d + origin if origin != 0.0 else sums[w - 1] / d
        head = sums[:n - w]
        tail = sums[w:]
        body = row[w:]
        if origin != 0.0:
            for t in range(n - w):
                body[t] = np.float64(tail[t] - head[t]) / d + origin
        else:
            for t in range(n - w):
                body[t] = np.float64(tail[t] - head[t]) / d


@compile_loop
def changes(held: Any, carried: Any, cols: Any) -> int:
    """How many times the targets of ``cols`` change in the block (a bound on their trades)."""
    total = 0
    for j in cols:
        last = carried[j]
        for t in range(held.shape[0]):
            if held[t, j] != last:
                total += 1
                last = held[t, j]
    return total


@compile_loop
def _record(trades: Any, i: int, j: int, entry_bar: int, exit_bar: int, side: float, size: float, entry_price: float,
            exit_price: float, ret: float, pnl: float) -> None:
    trades[i, 0], trades[i, 1], trades[i, 2], trades[i, 3], trades[i, 4] = j, entry_bar, exit_bar, side, size
    trades[i, 5], trades[i, 6], trades[i, 7], trades[i, 8] = entry_price, exit_price, ret, pnl


@compile_loop
def step_block(held: Any, rows: Any, fast: Any, slow: Any, offset: int, first_sign: Any, position: Any,
               last_target: Any, fill: Any, close: Any, t0: int, c: float, slip: float, flags: Any,
               state_f: Any, state_i: Any, keep_slot: Any, keep_trades: Any, curves: Any,
               trades: Any, work: Any, marks: Any, words: Any) -> int:
    """Advance every combination over one block of held targets ``(bars, width)``.

    ``flags``: need equity, may ruin, moments, downside, drawdown, duration,
    crossings, long only, next open. With crossings, the targets are not
    ``held`` but ``crossing_positions`` of ``rows[fast] - rows[slow]`` from
    ``offset`` (carried ``first_sign`` and ``position`` updated in place),
    clipped at 0 when long only and shifted by a bar for next-open fills
    (``last_target``: the previous block's last clipped target, updated).
    ``state_f`` rows: held, price in, segment equity, trades, wins, gross
    profit, gross loss, last equity, sum r, sum r^2, sum downside^2, peak,
    min ratio. ``state_i`` rows: entry bar, ruined, exposed, last peak, max
    under. ``keep_slot[j]``: the column of ``curves`` that receives j's
    equity (or -1); ``keep_trades[j]``: record j's closed trades in
    ``trades`` (room for every change of theirs, plus one ruin each).
    Returns the number of trades recorded. ``work`` (4 x bars), ``marks``
    (bars + 1) and ``words`` (2 x (bars // 64 + 1)): scratch, reused from
    block to block so no step allocates (a fresh block of a megabyte is a
    page fault per 4 KB on every step).

    Per combination, one tight pass finds the targets and the bars where they
    change; the second walks the stretches between changes (marking each bar
    only when equity is needed) and does the trade arithmetic at the changes.
    """
    need_equity, may_ruin, moments, downside, drawdown, duration = (
        flags[0], flags[1], flags[2], flags[3], flags[4], flags[5])
    crossings, long_only, next_open = flags[6], flags[7], flags[8]
    mark = need_equity or may_ruin
    dense = moments or downside or drawdown or duration
    b = len(close)
    k = len(fast) if crossings else held.shape[1]
    targets, equity, ratio, peaks = work[0], work[1], work[2], work[3]
    changes_at = marks
    words_below, words_above = words[0], words[1]
    count = 0
    cost = 1.0 + c
    for j in range(k):
        h, p_in, seg = state_f[0, j], state_f[1, j], state_f[2, j]
        n_tr, wins, gp, gl = state_f[3, j], state_f[4, j], state_f[5, j], state_f[6, j]
        last_e, s_r, s_r2, s_d2 = state_f[7, j], state_f[8, j], state_f[9, j], state_f[10, j]
        peak, min_ratio = state_f[11, j], state_f[12, j]
        entry_bar, ruined, exposed = state_i[0, j], state_i[1, j], state_i[2, j]
        last_peak, max_under = state_i[3, j], state_i[4, j]
        slot = keep_slot[j]
        keep = keep_trades[j]
        # 1. The bars where the targets change, and the targets there.
        n_changes = 0
        last = h
        if crossings:  # crossing_positions, then the engine's clip and shift
            n_changes, first, pos, prev = crossing_changes(
                rows[fast[j]], rows[slow[j]], offset, b, int(first_sign[j]), int(position[j]), last_target[j], h,
                long_only, next_open, changes_at, targets, words_below, words_above)
            first_sign[j] = first
            position[j] = pos
            last_target[j] = prev
        elif ruined == 0:
            for t in range(b):
                w = held[t, j]
                if w != last:
                    changes_at[n_changes] = t
                    targets[n_changes] = w
                    n_changes += 1
                    last = w
        changes_at[n_changes] = b
        # 2. The stretches between changes, and the changes.
        t = 0
        i = 0
        while t < b:
            stop = changes_at[i] if ruined == 0 else b
            if ruined != 0 or not mark:
                if ruined == 0 and h != 0.0:
                    exposed += stop - t
                if dense or slot >= 0:
                    for u in range(t, stop):  # ruined: equity 0
                        if dense:
                            s_r, s_r2, s_d2, peak, min_ratio, last_peak, max_under = fold(
                                0.0, last_e, s_r, s_r2, s_d2, peak, min_ratio, last_peak, max_under, t0 + u,
                                moments, downside, drawdown, duration)
                            last_e = 0.0
                        if slot >= 0:
                            curves[u, slot] = 0.0
                t = stop
            elif not may_ruin and stop > t:
                if h != 0.0:
                    exposed += stop - t
                s_r, s_r2, s_d2, peak, min_ratio, last_peak, max_under, e = mark_stretch(
                    close, t, stop, h, p_in, seg, cost, last_e, s_r, s_r2, s_d2, peak, min_ratio, last_peak,
                    max_under, t0, equity, ratio, peaks, slot >= 0, moments, downside, drawdown, duration)
                if dense:
                    last_e = e
                if slot >= 0:
                    curves[t:stop, slot] = equity[t:stop]
                t = stop
            else:
                a = abs(h)
                for u in range(t, stop):
                    e = seg  # flat: the mark is exactly 1
                    if h != 0.0:
                        exposed += 1
                        e = seg * (((((close[u] / p_in) - 1.0) * h + a) / cost + 1.0) - a)
                    if may_ruin and e <= 0.0:
                        # The open trade died on this bar's mark: liquidated at the close.
                        n_tr += 1.0
                        gl += seg
                        if keep:
                            _record(trades, count, j, entry_bar, t0 + u, np.sign(h), a, p_in, close[u], -1.0, -seg)
                            count += 1
                        e = 0.0
                        ruined = 1
                        h, seg = 0.0, 0.0
                    if dense:
                        s_r, s_r2, s_d2, peak, min_ratio, last_peak, max_under = fold(
                            e, last_e, s_r, s_r2, s_d2, peak, min_ratio, last_peak, max_under, t0 + u,
                            moments, downside, drawdown, duration)
                        last_e = e
                    if slot >= 0:
                        curves[u, slot] = e
                    if ruined != 0:
                        stop = u + 1
                        break
                t = stop
            if t >= b or ruined != 0:
                continue
            # The change at bar t: close the held position, open the new target.
            now = t0 + t
            w = targets[i]
            e = 0.0
            victim = False
            closing = False
            seg_old = seg
            price = fill[t]
            p_new = price * (1.0 + np.sign(w) * slip)
            new_seg = seg
            if h != 0.0:
                closing = True
                s_old = np.sign(h)
                a_old = abs(h)
                p_out = price * (1.0 - s_old * slip)
                factor = 1.0 - a_old + a_old / (1.0 + c) * (
                    (1.0 - s_old) + s_old * (p_out / p_in) * (1.0 - s_old * c))
                new_seg = seg * factor
                victim = may_ruin and new_seg <= 0.0
                ret, pnl = (-1.0, -seg) if victim else (factor - 1.0, seg * (factor - 1.0))
                closed_from, closed_in, closed_out = entry_bar, p_in, p_out
            if not victim:
                h, p_in, seg, entry_bar = w, p_new, new_seg, now
            if w != 0.0:
                exposed += 1
            dies = False
            if not victim and mark:
                e = seg
                if h != 0.0:
                    a = abs(h)
                    e = seg * (((((close[t] / p_in) - 1.0) * h + a) / cost + 1.0) - a)
                dies = may_ruin and e <= 0.0
                if dies and closing:  # as numpy's kernel words the closed trade of a ruin bar
                    ret, pnl = seg / seg_old - 1.0, seg - seg_old
            if closing:
                n_tr += 1.0
                wins += 1.0 if ret > 0.0 else 0.0
                gp += max(pnl, 0.0)
                gl += max(-pnl, 0.0)
                if keep:
                    _record(trades, count, j, closed_from, now, s_old, a_old, closed_in, closed_out, ret, pnl)
                    count += 1
            if dies:
                if h != 0.0:
                    n_tr += 1.0
                    gl += seg
                    if keep:
                        _record(trades, count, j, entry_bar, now, np.sign(h), abs(h), p_in, close[t], -1.0, -seg)
                        count += 1
                e = 0.0
            if victim or dies:
                ruined = 1
                h, seg = 0.0, 0.0
            if dense:
                s_r, s_r2, s_d2, peak, min_ratio, last_peak, max_under = fold(
                    e, last_e, s_r, s_r2, s_d2, peak, min_ratio, last_peak, max_under, now,
                    moments, downside, drawdown, duration)
                last_e = e
            if slot >= 0:
                curves[t, slot] = e
            t += 1
            i += 1
        state_f[0, j], state_f[1, j], state_f[2, j] = h, p_in, seg
        state_f[3, j], state_f[4, j], state_f[5, j], state_f[6, j] = n_tr, wins, gp, gl
        state_f[7, j], state_f[8, j], state_f[9, j], state_f[10, j] = last_e, s_r, s_r2, s_d2
        state_f[11, j], state_f[12, j] = peak, min_ratio
        state_i[0, j], state_i[1, j], state_i[2, j] = entry_bar, ruined, exposed
        state_i[3, j], state_i[4, j] = last_peak, max_under
    return count


def scratch(bars: int) -> tuple[Any, Any, Any]:
    """Scratch arrays for ``step_block`` over up to ``bars`` bars: (work, marks, words)."""
    return np.empty((4, bars)), np.empty(bars + 1, dtype=np.int64), np.empty((2, bars // 64 + 1), dtype=np.uint64)


def warm_up(*, crossings_only: bool = False) -> None:
    """Load (or compile) the machine code of the common signatures: a tiny call of each.

    ``crossings_only``: just what a crossover sweep without kept trades runs
    (the moving averages and ``step_block`` following crossings), the first
    thing a process needs; the rest is loaded by a second call.
    """
    n, k = 4, 2
    rows = np.ones((2, n))
    index = np.zeros(k, dtype=np.int64)
    if crossings_only:
        sma_rows(rows[0], np.ones(2, dtype=np.int64), 1.0, 0.0, rows.copy(), np.empty(n, dtype=np.int64))
        on_grid(rows[0], 1.0)
    held_blocks = [np.zeros((n, 0), dtype=np.int8)] if crossings_only else []
    for dtype in () if crossings_only else (np.int8, np.float64):
        out = np.empty((n, k), dtype=dtype, order="F")
        crossing_positions(rows, index, index, 0, n, np.zeros(k, np.int8), np.zeros(k), out)
        held_blocks.append(out)
    for held in held_blocks:
        flags = np.zeros(9, dtype=np.bool_)
        flags[6] = held.shape[1] == 0
        step_block(held, rows, index, index, 0, np.zeros(k, np.int8), np.zeros(k), np.zeros(k), rows[0], rows[0],
                   0, 0.0, 0.0, flags, np.ones((13, k)), np.zeros((5, k), dtype=np.int64),
                   np.full(k, -1, dtype=np.int64), np.zeros(k, dtype=np.bool_), np.empty((n, 0)),
                   np.empty((0, 9)), *scratch(n))
