"""The crossings of two lines found 64 bars at a time: compiled loops for ``compiled.step_block``.

Imported only by ``compiled`` (numba). A crossover's position changes at a
few dozen crossings per thousand bars, so walking its state bar by bar (a
compare, two branches and a store per bar) costs far more than finding the
crossings: here the comparisons of 64 bars at a time become two bit masks
(``fast < slow``, ``fast > slow``; one vectorized loop), and the state machine
of ``rules.crossing_block`` jumps from one crossing to the next with bit
operations. The held targets change only at those bars (and at the bar after
one, for next-open fills), so that is all this module reports.

``fast < slow`` is the same test as ``fast - slow < 0`` (an IEEE difference
is zero only for equal operands and keeps the sign of the exact one; NaN
fails both), so the results equal the bar-by-bar walk bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tradingd.trading.jit import compile_loop

__all__ = ["crossing_changes"]

WORD = 64
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
# ctz by de Bruijn multiplication: the lowest set bit times this constant has a
# distinct top six bits for each of the 64 positions.
_DEBRUIJN = np.uint64(0x03F79D71B4CA8B09)
_POSITION = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _POSITION[((1 << _bit) * 0x03F79D71B4CA8B09 % (1 << 64)) >> 58] = _bit


@compile_loop
def _masks(fast: Any, slow: Any, offset: int, b: int, below: Any, above: Any) -> None:
    """Bit v of word i: ``fast[offset + 64 i + v] < slow[...]`` in ``below``, ``>`` in ``above``."""
    # Slices first: indices from ``range`` are known non-negative, so no
    # negative-index wraparound blocks the vectorizer.
    fw = fast[offset:offset + b]
    sw = slow[offset:offset + b]
    full = b // WORD
    for i in range(full):  # a constant inner trip count: LLVM unrolls and vectorizes it
        lo = np.uint64(0)
        hi = np.uint64(0)
        for v in range(WORD):
            x = fw[i * WORD + v]
            y = sw[i * WORD + v]
            lo |= np.uint64(x < y) << np.uint64(v)
            hi |= np.uint64(x > y) << np.uint64(v)
        below[i] = lo
        above[i] = hi
    if full * WORD < b:
        lo = np.uint64(0)
        hi = np.uint64(0)
        for v in range(b - full * WORD):
            x = fw[full * WORD + v]
            y = sw[full * WORD + v]
            lo |= np.uint64(x < y) << np.uint64(v)
            hi |= np.uint64(x > y) << np.uint64(v)
        below[full] = lo
        above[full] = hi


@compile_loop
def _lowest(mask: Any) -> int:
    """The position of the lowest set bit of a nonzero mask."""
    low = mask & (~mask + np.uint64(1))
    return int(_POSITION[(low * _DEBRUIJN) >> np.uint64(58)])


@compile_loop
def _from(mask: Any, bit: int) -> Any:
    """``mask`` without its bits below ``bit`` (0 <= bit <= 64)."""
    if bit >= WORD:
        return np.uint64(0)
    return mask & (_ALL << np.uint64(bit))


@compile_loop
def crossing_changes(fast: Any, slow: Any, offset: int, b: int, first: int, pos: int, prev: float, last: float,
                     long_only: bool, next_open: bool, changes_at: Any, targets: Any, words_below: Any,
                     words_above: Any
                     ) -> tuple[int, int, int, float]:
    """The bars of ``offset .. offset + b`` where the held target of a crossing changes.

    The state is ``rules.crossing_block``'s: ``first`` (the first known sign
    of fast - slow, 0 before it), ``pos`` (0 before the first cross, then the
    sign of the last non-tied difference). The target is ``pos``, clipped at
    0 when ``long_only``; the held target is the target of the bar (fills at
    the close) or of the bar before (``next_open``; ``prev`` is the target of
    the bar before the block). ``last`` is the held target before the block.
    Writes the bars (relative to ``offset``) where the held target changes
    and the new targets; returns (their count, first, pos, prev).
    ``words_below`` and ``words_above``: room for ``b // 64 + 1`` masks.
    """
    n = 0
    t = 0            # the first bar not yet reported on
    cur = prev       # the target of bar t - 1
    base = 0         # the first bar of the current word
    _masks(fast, slow, offset, b, words_below, words_above)
    below = words_below[0] if b else np.uint64(0)
    above = words_above[0] if b else np.uint64(0)
    while True:
        watch = pos if pos != 0 else first  # the state moves when the sign turns against it
        mask = below | above if first == 0 else below if watch > 0 else above
        mask = _from(mask, t - base)
        while mask == 0 and base + WORD < b:
            base += WORD
            below = words_below[base // WORD]
            above = words_above[base // WORD]
            mask = below | above if first == 0 else below if watch > 0 else above
        at = base + _lowest(mask) if mask != 0 else b
        if at > t:  # bars t .. at - 1: the target stays (cur, the target of bar t - 1, is the same)
            held = cur
            if held != last:
                changes_at[n] = t
                targets[n] = held
                n += 1
                last = held
        if at >= b:
            break
        if first == 0:
            first = 1 if (above >> np.uint64(at - base)) & np.uint64(1) else -1
        else:
            pos = -watch
        target = 0.0 if long_only and pos < 0 else float(pos)
        held = cur if next_open else target
        if held != last:
            changes_at[n] = at
            targets[n] = held
            n += 1
            last = held
        cur = target
        t = at + 1
    return n, first, pos, cur
