"""Equity-curve sums of the compiled kernel: one bar at a time, or one held stretch at once.

Imported only by ``compiled`` (numba). Both fold the equity into the same
carried records as ``kernel.ChunkState._accumulate`` (return sums in bar
order, running peak, lowest equity-to-peak ratio, drawdown duration), with
the same floating-point operations in the same order, so the results are
bit-identical to the numpy kernel's.

``mark_stretch`` covers the bars between two changes of a combination's
target when no ruin is possible. Flat (nothing held), the equity is one value
throughout: the first bar's return is the only one that is not exactly 0, and
peak and drawdown change at most once, so a flat stretch costs O(1) however
long. Held, the marks and returns are computed in vectorizable passes (the
divisions run side by side), then the sums and the running peak in one
sequential pass (their dependency chains overlap), then the drawdowns in
vectorizable passes again.
"""

from __future__ import annotations

import math
from typing import Any

from tradingd.trading.jit import compile_loop

__all__ = ["fold", "mark_stretch"]


@compile_loop
def _lowest(values: Any, lowest: float) -> float:
    """``min(lowest, *values)`` for values that are not NaN, in four independent lanes.

    A minimum does not depend on the order, and four running minima keep the
    CPU's comparators busy where one would wait on the last result.
    """
    l0 = l1 = l2 = l3 = lowest
    full = len(values) // 4 * 4
    for i in range(0, full, 4):
        x0, x1, x2, x3 = values[i], values[i + 1], values[i + 2], values[i + 3]
        l0 = x0 if x0 < l0 else l0
        l1 = x1 if x1 < l1 else l1
        l2 = x2 if x2 < l2 else l2
        l3 = x3 if x3 < l3 else l3
    for i in range(full, len(values)):
        x = values[i]
        l0 = x if x < l0 else l0
    l0 = l1 if l1 < l0 else l0
    l2 = l3 if l3 < l2 else l2
    return l2 if l2 < l0 else l0


@compile_loop
def _add_return(r: float, s_r: float, s_r2: float, s_d2: float, downside: bool) -> tuple[float, float, float]:
    """One bar's return into the sums behind Sharpe and Sortino (in bar order: the numpy kernel's sums)."""
    s_r += r
    s_r2 += r * r
    if downside:
        dn = min(r, 0.0)
        s_d2 += dn * dn
    return s_r, s_r2, s_d2


@compile_loop
def fold(e: float, last_e: float, s_r: float, s_r2: float, s_d2: float, peak: float, min_ratio: float,
         last_peak: int, max_under: int, now: int, moments: bool, downside: bool, drawdown: bool,
         duration: bool) -> tuple[float, float, float, float, float, int, int]:
    """One bar's equity into the return sums and drawdown records (``kernel._accumulate``)."""
    # An unchanged equity adds a return of exactly 0 and the drawdown of the bar
    # before: skipping it is exact (flat stretches cost no division).
    if e != last_e:
        if (moments or downside) and last_e > 0.0:
            s_r, s_r2, s_d2 = _add_return(e / last_e - 1.0, s_r, s_r2, s_d2, downside)
        if drawdown or duration:
            peak = max(peak, e)
            min_ratio = min(min_ratio, e / peak)
    if duration:
        if e >= peak:
            last_peak = now
        max_under = max(max_under, now - last_peak)
    return s_r, s_r2, s_d2, peak, min_ratio, last_peak, max_under


@compile_loop
def mark_stretch(close: Any, t: int, stop: int, h: float, p_in: float, seg: float, cost: float, last_e: float,
                 s_r: float, s_r2: float, s_d2: float, peak: float, min_ratio: float, last_peak: int,
                 max_under: int, t0: int, equity: Any, ratio: Any, peaks: Any, keep: bool, moments: bool,
                 downside: bool, drawdown: bool, duration: bool
                 ) -> tuple[float, float, float, float, float, int, int, float]:
    """Fold bars ``t .. stop`` (``stop > t``) holding ``h`` from ``p_in`` on segment equity ``seg``.

    No ruin is possible. Writes the bars' equity to ``equity[t:stop]`` when
    held or when ``keep``; ``ratio`` and ``peaks`` are scratch of the same
    length. Returns the sums and drawdown records, and the last equity.
    """
    returns = moments or downside
    if h == 0.0 and seg > 0.0 and not math.isinf(seg):
        # Flat: every bar's equity is seg, so every return after the first is
        # seg / seg - 1 = 0 exactly (adding it changes no sum), and every bar's
        # drawdown is the first one's.
        if keep:
            equity[t:stop] = seg
        if returns:
            s_r, s_r2, s_d2 = _add_return(seg / last_e - 1.0 if last_e > 0.0 else 0.0, s_r, s_r2, s_d2, downside)
        if drawdown or duration:
            peak = max(peak, seg)
            min_ratio = min(min_ratio, seg / peak)
            if duration:
                if seg >= peak:
                    last_peak = t0 + stop - 1
                max_under = max(max_under, t0 + stop - 1 - last_peak)
        return s_r, s_r2, s_d2, peak, min_ratio, last_peak, max_under, seg
    # Slices: indices from ``range`` are known non-negative, so no negative-index
    # wraparound keeps LLVM from vectorizing.
    m = stop - t
    prices = close[t:stop]
    marks = equity[t:stop]
    a = abs(h)
    if h != 0.0:
        for u in range(m):
            marks[u] = seg * (((((prices[u] / p_in) - 1.0) * h + a) / cost + 1.0) - a)
    else:
        marks[:] = seg  # flat: the mark is exactly 1
    rets = ratio[t:stop]
    if returns:
        rets[0] = marks[0] / last_e - 1.0 if last_e > 0.0 else 0.0
        for u in range(1, m):
            rets[u] = marks[u] / marks[u - 1] - 1.0
    dd = drawdown or duration
    tops = peaks[t:stop]
    for u in range(m):  # the sequential part: sums in bar order, the running peak
        if returns:
            s_r, s_r2, s_d2 = _add_return(rets[u], s_r, s_r2, s_d2, downside)
        if dd:
            e = marks[u]
            peak = max(peak, e)
            tops[u] = peak
            if duration:
                if e >= peak:
                    last_peak = t0 + t + u
                max_under = max(max_under, t0 + t + u - last_peak)
    if dd:
        for u in range(m):  # vectorized (the returns are summed: their room is free)
            rets[u] = marks[u] / tops[u]
        min_ratio = _lowest(rets[:m], min_ratio)
    return s_r, s_r2, s_d2, peak, min_ratio, last_peak, max_under, marks[m - 1]
