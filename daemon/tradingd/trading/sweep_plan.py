"""How a sweep fits its byte budget: combinations per chunk and bars per time block.

Everything a sweep allocates while it runs is counted here: the per-combination
results (one float per metric), each chunk's carried state, and each time
block's working set (target positions, indicator columns with their look-back,
signal and simulation temporaries). The engine runs exactly the plan this
module returns, so ``estimate_sweep_bytes`` is what a memory grant must cover.
The per-cell constants were measured with tracemalloc on the sweep bench
(docs/engine.md, "Memory budget").
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from tradingd.trading.metrics import DENSE_METRICS, validate_metric_names

__all__ = [
    "CELL_BYTES_COMPILED",
    "CELL_BYTES_DENSE",
    "CELL_BYTES_SPARSE",
    "MIN_BLOCK_BARS",
    "SweepPlan",
    "cell_bytes",
    "estimate_sweep_bytes",
    "plan_sweep",
]

# Working-set bytes per (bar, combination) cell of a time block, traced on the sample
# data (docs/engine.md, "Memory budget"): on numpy, with the equity-curve metrics, the
# target positions, a crossover's or threshold's temporaries, the held positions and
# change mask, the equity block with its returns and peaks (53-58 bytes measured for the
# crossovers, momentum, z-score and trend-stops); without them (sparse) no equity block
# unless shorts may ruin (37-42 measured). The compiled kernel keeps no per-cell state:
# what is left are the strategy's targets (23-35 measured). A strategy whose own
# temporaries are larger says so (``Strategy.sweep_cell_bytes``).
CELL_BYTES_DENSE = 64
CELL_BYTES_SPARSE = 52
CELL_BYTES_COMPILED = 40
# Per bar of a block, whatever the width: price slices' temporaries and the
# integer prefix sums behind the exact moving averages.
BAR_BYTES = 48
# Per indicator column and bar (float64 values).
WINDOW_BYTES = 8
# Per combination: the carried state between time blocks (every chunk's, as the
# sweep walks the blocks with all chunks open), and its working copy in a step.
CARRY_BYTES = 160
# Per open chunk: its kernel state's arrays and Python objects (~5 KB traced).
CHUNK_BYTES = 6 * 1024
# Per combination of the whole sweep: the result arrays, one float per metric.
METRIC_BYTES = 8
# A fixed allowance for Python objects, small arrays and per-call overhead.
OVERHEAD_BYTES = 192 * 1024
MIN_BLOCK_BARS = 256
# Blocks and chunks larger than this stop paying off (temporaries fall out of
# cache), so a budget above it buys nothing: the plan never asks for more.
FAST_WORKING_BYTES = 8 * 2**20
# Blocks are at most this long, so the cost per bar-combination does not rise
# with the series length.
FAST_BLOCK_BARS = 1 << 15
# Chunks narrower than this are slow (per-call overhead), so blocks get
# shorter (down to FAST_MIN_BLOCK_BARS) before chunks get narrower.
FAST_MIN_WIDTH = 32
FAST_MIN_BLOCK_BARS = 1 << 11
# A compiled crossover's chunks can be as wide as the grid: one per worker (each
# worker walks the blocks with its own chunks, so there is nothing to balance
# within it, and every chunk step costs ~0.05 ms of Python) ...
# ... but not so narrow that a chunk's step is shorter than about a millisecond.
MIN_CHUNK_CELLS = 1 << 18


@dataclass(frozen=True)
class SweepPlan:
    """Combinations per chunk, bars per time block, and the bytes that costs."""

    n_bars: int
    width: int          # combinations simulated together
    block_bars: int     # bars per time block (>= n_bars: unblocked)
    peak_bytes: int     # working bytes of this plan (what the budget must cover)
    fits: bool          # False: even the smallest plan exceeds the budget

    @property
    def blocked(self) -> bool:
        """True when the series is processed in more than one time block."""
        return self.block_bars < self.n_bars


def _windows(width: int, n_windows: int | None) -> int:
    # A crossover needs two indicator columns per combination at most; chunks of
    # consecutive grid entries share most of them.
    bound = 2 * width
    return bound if n_windows is None else max(1, min(n_windows, bound))


def _bytes(n_combinations: int, n_metrics: int, width: int, block: int, lookback: int, cell: int,
           n_windows: int | None, workers: int, blockable: bool, crossings: bool = False) -> int:
    per_worker = CARRY_BYTES * width + block * (cell * width + BAR_BYTES)
    if blockable:
        # A block's indicator columns for the grid, shared by the chunks of a worker (each
        # worker has its own); every chunk stays open from the first block to the last.
        shared = ((block + lookback) * WINDOW_BYTES * (n_windows or 0) + block * BAR_BYTES) * workers
        chunks = -(-n_combinations // width) if width else 0
    else:
        # The whole series at once: each chunk computes its own indicator columns (a
        # crossover's; other strategies' columns are in their cell bytes).
        shared, chunks = 0, workers
        if n_windows is not None and not crossings:
            per_worker += (block + lookback) * WINDOW_BYTES * _windows(width, n_windows)
    return (OVERHEAD_BYTES + (METRIC_BYTES * n_metrics + CARRY_BYTES) * n_combinations + shared
            + CHUNK_BYTES * chunks + workers * per_worker)


def cell_bytes(metrics: Collection[str] | None = None, *, compiled: bool = False,
               strategy: tuple[int, int] | None = None) -> int:
    """Working bytes per (bar, combination) of a sweep computing ``metrics`` (None: all).

    ``strategy``: the strategy's own figures, (numpy with the equity-curve
    metrics, compiled), when its temporaries exceed the defaults'.
    """
    dense = bool(DENSE_METRICS & set(validate_metric_names(metrics)))
    numpy_dense, on_compiled = strategy or (CELL_BYTES_DENSE, CELL_BYTES_COMPILED)
    if compiled:
        return on_compiled
    return numpy_dense if dense else numpy_dense - (CELL_BYTES_DENSE - CELL_BYTES_SPARSE)


def plan_sweep(n_bars: int, n_combinations: int, chunk_bytes: int, *, metrics: Collection[str] | None = None,
               lookback: int = 0, n_windows: int | None = None, blockable: bool = True,
               dense: bool | None = None, workers: int = 1, compiled: bool = False,
               cell: int | None = None, series_bytes: int = 0, crossings: bool = False) -> SweepPlan:
    """The fastest plan whose working bytes stay within ``chunk_bytes``.

    ``lookback`` is how many bars before a block its indicators read;
    ``n_windows`` the number of distinct indicator columns of the whole grid
    (None: two per combination); ``blockable`` False means the strategy needs
    the whole series at once (then one full-length column is the minimum).
    ``dense`` defaults to "a metric needs the equity curve"; ``workers``
    chunks run at the same time, each with its own working set; ``compiled``:
    the compiled kernel runs the sweep (fewer temporaries per cell); ``cell``
    overrides the bytes per (bar, combination) (:func:`cell_bytes`);
    ``series_bytes`` is what the strategy allocates once per series
    (``Strategy.sweep_series_bytes``); ``crossings``: the compiled kernel
    follows the strategy's crossings itself (``Strategy.block_crossings``), so
    a chunk's working set is its carried state and a few arrays of one
    block's length, whatever its width (then the grid is cut into
    one chunk per worker).
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    n, k = max(int(n_bars), 1), max(int(n_combinations), 1)
    names = validate_metric_names(metrics)
    is_dense = bool(DENSE_METRICS & set(names)) if dense is None else dense
    crossings = crossings and compiled
    if crossings:
        cell = 0
    elif cell is None:
        cell = CELL_BYTES_COMPILED if compiled else CELL_BYTES_DENSE if is_dense else CELL_BYTES_SPARSE
    m = len(names)

    def cost(width: int, block: int) -> int:
        return series_bytes + _bytes(k, m, width, block, lookback, cell, n_windows, max(1, workers), blockable,
                                     crossings)

    target = min(chunk_bytes, FAST_WORKING_BYTES * max(1, workers))

    def cheapest(block: int) -> int:
        # Open chunks cost less the wider they are, cells more: the width of least cost.
        if not blockable:
            return 1
        return max(1, min(k, math.isqrt(k * CHUNK_BYTES // max(1, cell * block + CARRY_BYTES))))

    def widest(block: int) -> int:
        least = cheapest(block)
        if cost(least, block) > target:
            return 0
        # Cost is linear in width except for the window bound and the open chunks (fewer
        # when wider): solve without them, then step down.
        fixed = cost(0, block)
        per = max(cost(1, block) - fixed - CHUNK_BYTES * (k if blockable else 0), 1)
        width = max(least, min(k, (target - fixed) // per))
        while width > least and cost(width, block) > target:
            width = max(least, width - max(1, width // 32))
        return width

    block = min(n, FAST_BLOCK_BARS) if blockable else n
    width = widest(block)
    # Shorter blocks buy width: numpy is fastest on wide chunks, and a block
    # must be short when even one full column does not fit.
    while blockable and block > MIN_BLOCK_BARS and width < min(k, FAST_MIN_WIDTH):
        shorter = max(MIN_BLOCK_BARS, block // 2)
        if width >= 1 and block <= FAST_MIN_BLOCK_BARS:
            break
        block, width = shorter, widest(shorter)
    width = width or cheapest(block)
    if crossings:  # wide chunks cost no memory: as many as keep the workers evenly busy
        threads = max(1, workers)
        wide = max(-(-k // threads), -(-MIN_CHUNK_CELLS // block))
        count = -(-k // max(1, min(width, wide)))
        count = -(-count // threads) * threads  # the same number of chunks for every worker
        width = max(1, min(width, -(-k // count)))
    peak = cost(width, block)
    return SweepPlan(n_bars=n, width=width, block_bars=block, peak_bytes=peak, fits=peak <= chunk_bytes)


def estimate_sweep_bytes(n_bars: int, n_combinations: int, metrics: Collection[str] | None = None, *,
                         lookback: int = 0, n_windows: int | None = None, blockable: bool = True,
                         workers: int = 1, cell: int | None = None, series_bytes: int = 0) -> tuple[int, int]:
    """``(estimate, minimum)`` working bytes of a sweep, from its shape alone.

    ``estimate`` is the peak the engine reaches when its budget is not the
    limit (the engine never works with more than ``FAST_WORKING_BYTES`` of
    temporaries, because larger blocks are not faster); ``minimum`` is the
    smallest ``chunk_bytes`` it can honour: one combination in the shortest
    time block (or one full-length column when ``blockable`` is False), plus
    the per-combination results. Give the sweep any ``chunk_bytes`` between
    the two and its peak stays within it. Arguments as for ``plan_sweep``;
    ``metrics`` None means all metrics. ``run_sweep`` uses two worker threads
    for sweeps above 4M bar-combinations on a 2-core machine: pass
    ``workers=2`` for those (the minimum is then one combination per thread).
    ``cell`` and ``series_bytes`` as for ``plan_sweep``.
    """
    names = validate_metric_names(metrics)
    fast = plan_sweep(n_bars, n_combinations, FAST_WORKING_BYTES * workers, metrics=names, lookback=lookback,
                      n_windows=n_windows, blockable=blockable, workers=workers, cell=cell,
                      series_bytes=series_bytes)
    smallest = plan_sweep(n_bars, n_combinations, 1, metrics=names, lookback=lookback, n_windows=n_windows,
                          blockable=blockable, workers=workers, cell=cell, series_bytes=series_bytes)
    return max(fast.peak_bytes, smallest.peak_bytes), smallest.peak_bytes
