"""Vectorized backtests across a parameter grid, within a byte budget.

``run_sweep`` plans the sweep (``sweep_plan.plan_sweep``: combinations per
chunk, bars per time block, everything counted against ``chunk_bytes``), then
walks the series block by block: the strategy computes the block's
indicators once for the whole grid (``Strategy.block_indicators``), then for
every chunk of combinations its target positions, and the kernel
(``kernel.ChunkState``) advances each combination, carrying its state to
the next block (``sweep_run``). Chunks of a block run on up to ``workers``
threads. Results are identical however the sweep is blocked or chunked. The
model is in ``tradingd.trading.simulation`` and docs/engine.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from tradingd.trading.acceleration import compiled, preload
from tradingd.trading.data import MarketData
from tradingd.trading.indicators import IndicatorCache
from tradingd.trading.results import BacktestResult
from tradingd.trading.simulation import BacktestConfig
from tradingd.trading.strategies import get_strategy
from tradingd.trading.strategy import Strategy
from tradingd.trading.sweep_plan import SweepPlan, cell_bytes, estimate_sweep_bytes, plan_sweep
from tradingd.trading.sweep_run import Chunk, KeepSpec, SweepRun

__all__ = ["DEFAULT_CHUNK_BYTES", "KeepSpec", "SweepCancelled", "estimate_sweep", "run_sweep", "sweep_plan_for"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CHUNK_BYTES = 64 * 2**20


class SweepCancelled(Exception):
    """``should_stop`` returned True between two chunk steps."""


def run_sweep(data: MarketData, strategy: str | Strategy, grid: Sequence[Mapping[str, Any]],
              config: BacktestConfig | None = None, *, cache: IndicatorCache | None = None,
              models: Sequence[Any] | None = None, metrics: Collection[str] | None = None,
              keep_trades_for: KeepSpec = None, keep_equity_for: KeepSpec = None,
              chunk_bytes: int = DEFAULT_CHUNK_BYTES, block_bars: int | None = None,
              workers: int | None = None, should_stop: Callable[[], bool] | None = None) -> BacktestResult:
    """Backtest ``strategy`` over every combination of ``grid`` on ``data``.

    The grid is validated up front (StrategyError), the prices once (DataError
    for NaN, infinite or non-positive prices). Everything the sweep allocates
    stays within ``chunk_bytes`` (see ``sweep_plan``); when one full-length
    column does not fit, strategies that support it run in time blocks with
    carried state, with identical results. ``should_stop`` is polled between
    chunk steps (raises SweepCancelled). ``models`` (trainable strategies) holds
    one model per grid entry. ``cache`` (a cross-run indicator cache with its
    own byte budget) serves full-length indicator columns to strategies that
    cannot run in time blocks.
    ``block_bars`` overrides the planned time block (tests and tuning; the
    budget is then not enforced). ``workers`` threads simulate chunks in
    parallel (numpy and the compiled kernel release the GIL), each within its share of the budget;
    None: two when the sweep has enough work and the machine two cores.
    Results do not depend on either.
    """
    config = config or BacktestConfig()
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    params = strat.validate_grid(grid)
    k = len(params)
    if k == 0:
        raise ValueError("empty parameter grid")
    if models is not None and len(models) != k:
        raise ValueError(f"{len(models)} models for {k} grid entries")
    sweep = SweepRun(data, strat, params, config, metrics, keep_trades_for, keep_equity_for)
    preload(k * data.n_bars)  # numba, in the background, when the work is worth it (see there)
    threads = _workers(workers, k, data.n_bars, models is not None)
    on_targets = bool(sweep.keep_trades) or models is not None
    plan = sweep_plan_for(strat, params, data.n_bars, chunk_bytes, metrics=sweep.names, workers=threads,
                          on_targets=on_targets)
    if threads > 1 and workers is None and (not plan.fits or plan.width * threads > k):
        threads = 1  # the budget (or the grid) is too small to split: one thread
        plan = sweep_plan_for(strat, params, data.n_bars, chunk_bytes, metrics=sweep.names, on_targets=on_targets)
    if not plan.fits:
        log.warning("sweep of %s on %s needs %d bytes at least; budget %d", strat.name, data.symbol,
                    plan.peak_bytes, chunk_bytes)
    if block_bars is not None:
        if block_bars < 1:
            raise ValueError(f"block_bars must be positive, got {block_bars}")
        plan = dataclasses.replace(plan, block_bars=block_bars)
    n, step = data.n_bars, plan.width
    blocks = [(start, min(n, start + plan.block_bars)) for start in range(0, n, plan.block_bars)]
    # Strategies that run in blocks compute each block's indicators once for the whole
    # grid (cheap next to the simulation), so they never need the cross-run cache.
    whole = strat.block_lookback(params) is None or models is not None
    if whole:
        # Positions of the whole series at once (the cross-run cache serves full-length
        # columns): every chunk walks its blocks on its own.
        def run_chunk(offset: int) -> None:
            chunk_models = None if models is None else models[offset:offset + step]
            chunk = sweep.open_chunk(offset, min(step, k - offset), whole=True, cache=cache, models=chunk_models)
            for start, stop in blocks:
                sweep.step_chunk(chunk, start, stop)
            sweep.close_chunk(chunk)

        try:
            _each(run_chunk, list(range(0, k, step)), _pool(threads), threads - 1, should_stop,
                  lambda done: f"stopped after {done * step} of {k} combinations")
        finally:
            sweep.release()
    else:
        # Block by block: the block's indicators are computed once per group of chunks
        # (one group per thread, each with its own indicators: no thread waits for
        # another between blocks, and each reads only what it computed), then each of
        # the group's chunks is stepped over the block.
        offsets = list(range(0, k, step))
        cut = [len(offsets) * g // threads for g in range(threads + 1)]
        groups = [offsets[cut[g]:cut[g + 1]] for g in range(threads) if cut[g] < cut[g + 1]]
        chunks: list[Chunk] = []
        poll = threading.Lock()

        def run_group(group: list[int]) -> None:
            own = [sweep.open_chunk(offset, min(step, k - offset)) for offset in group]
            chunks.extend(own)
            grid = params if len(groups) == 1 else params[group[0]:min(k, group[-1] + step)]
            shared = None
            try:
                for start, stop in blocks:
                    # The previous block's indicators are done with: their memory is reused.
                    shared = strat.block_indicators(data, grid, start, stop, scale=sweep.scale, recycle=shared)
                    for i, chunk in enumerate(own):
                        if should_stop is not None:
                            with poll:
                                if should_stop():
                                    raise SweepCancelled(f"stopped after {group[i]} of {k} combinations of bars "
                                                         f"{start}..{stop}")
                        sweep.step_chunk(chunk, start, stop, shared)
            finally:
                strat.release_indicators(shared)

        try:
            _each(run_group, groups, _pool(threads), threads - 1, None, str)
        finally:
            sweep.release()
        for chunk in sorted(chunks, key=lambda c: c.offset):
            sweep.close_chunk(chunk)
    log.debug("swept %s on %s: %d combinations x %d bars in chunks of %d x %d bars", strat.name, data.symbol,
              k, data.n_bars, plan.width, plan.block_bars)
    preload(k * data.n_bars, ending=True)
    return sweep.result()


# Below this many bar-combinations a second thread costs more than it saves
# (the compiled kernel does a bar-combination in about a nanosecond, numpy in tens).
# A second thread costs ~0.4 ms of CPU (its group's chunks and indicators, the
# hand-off, the GIL): measured at 10k bars x 40 combinations (0.4M), two threads
# took 1.35 ms of CPU and more wall time than one thread's 0.6 ms.
_PARALLEL_CELLS = 4_000_000
_PARALLEL_CELLS_COMPILED = 2_000_000


class _Helpers:
    """The process's sweep helper threads, started once and kept (a sweep of a
    millisecond must not pay for starting a thread). One pool per size, never
    shut down: a sweep running on one must be able to keep using it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[int, ThreadPoolExecutor] = {}

    def get(self, helpers: int) -> ThreadPoolExecutor:
        with self._lock:
            pool = self._pools.get(helpers)
            if pool is None:
                pool = self._pools[helpers] = ThreadPoolExecutor(helpers, thread_name_prefix="sweep")
            return pool


_helpers = _Helpers()


def _pool(threads: int) -> ThreadPoolExecutor | None:
    """Helper threads for a sweep on ``threads`` threads (the calling thread works too), or None."""
    return _helpers.get(threads - 1) if threads > 1 else None


def _workers(requested: int | None, k: int, n_bars: int, trained: bool) -> int:
    if requested is not None:
        if requested < 1:
            raise ValueError(f"workers must be positive, got {requested}")
        return requested
    enough = _PARALLEL_CELLS if compiled() is None else _PARALLEL_CELLS_COMPILED
    if trained or (os.cpu_count() or 1) < 2 or k * n_bars < enough:
        return 1
    return 2


def _each(work: Callable[[T], None], items: Sequence[T], pool: ThreadPoolExecutor | None, helpers: int,
          should_stop: Callable[[], bool] | None, stopped: Callable[[int], str]) -> None:
    """``work(item)`` for every item: on this thread and ``helpers`` threads of ``pool``.

    Each thread takes the next item when it is free, so at most
    ``helpers + 1`` items are in flight. ``should_stop`` is polled before each
    item; ``stopped(done)`` words the SweepCancelled.
    """
    if pool is None or helpers < 1 or len(items) == 1:
        for done, item in enumerate(items):
            if should_stop is not None and should_stop():
                raise SweepCancelled(stopped(done))
            work(item)
        return
    lock = threading.Lock()
    queue = iter(enumerate(items))
    failed = threading.Event()

    def drain() -> None:
        try:
            while not failed.is_set():
                with lock:
                    done, item = next(queue, (-1, None))
                    if done < 0:
                        return
                    if should_stop is not None and should_stop():
                        raise SweepCancelled(stopped(done))
                work(cast(T, item))
        except BaseException:
            failed.set()  # the other threads stop at their next item
            raise

    futures = [pool.submit(drain) for _ in range(min(helpers, len(items) - 1))]
    try:
        drain()
    finally:
        # A helper busy with another sweep has not started ours: it is not waited for.
        errors = [None if f.cancel() else f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def estimate_sweep(strategy: str | Strategy, grid: Sequence[Mapping[str, Any]], n_bars: int,
                   metrics: Collection[str] | None = None) -> tuple[int, int]:
    """``(estimate, minimum)`` bytes of ``run_sweep(strategy, grid)`` on ``n_bars`` bars.

    ``sweep_plan.estimate_sweep_bytes`` with the look-back, distinct windows,
    block support, worker threads and kernel ``run_sweep`` would use: give the
    sweep any ``chunk_bytes`` from ``minimum`` up and its working set stays
    within it; more than ``estimate`` buys nothing. The kernel is the one
    loaded now: numpy's figures bound the compiled kernel's too, and once the
    compiled kernel is loaded it stays.
    """
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    params = strat.validate_grid(grid)
    lookback = strat.block_lookback(params)
    windows = _windows(params)
    threads = _workers(None, len(params), n_bars, trained=False)
    cell = cell_bytes(metrics, compiled=compiled() is not None, strategy=strat.sweep_cell_bytes)
    estimate, minimum = (estimate_sweep_bytes(n_bars, len(params), metrics, lookback=lookback or 0,
                                              n_windows=len(windows) or None, blockable=lookback is not None,
                                              workers=workers, cell=cell,
                                              series_bytes=strat.sweep_series_bytes(params, n_bars))
                          for workers in (threads, 1))
    # The minimum is one thread's: run_sweep drops to one thread when two do not fit.
    return max(estimate[0], minimum[1]), minimum[1]


def sweep_plan_for(strategy: Strategy, params: Sequence[Mapping[str, Any]], n_bars: int, chunk_bytes: int, *,
                   metrics: Collection[str] | None = None, workers: int = 1, on_targets: bool = False
                   ) -> SweepPlan:
    """The plan ``run_sweep`` follows for ``strategy`` over ``params`` (validated).

    ``on_targets``: the chunks run on blocks of target positions, never on a
    strategy's crossings alone (kept trades, trained models).
    """
    lookback = strategy.block_lookback(params)
    windows = _windows(params)
    cell = cell_bytes(metrics, compiled=compiled() is not None, strategy=strategy.sweep_cell_bytes)
    return plan_sweep(n_bars, len(params), chunk_bytes, metrics=metrics, lookback=lookback or 0, cell=cell,
                      compiled=compiled() is not None,
                      crossings=lookback is not None and strategy.follows_crossings() and not on_targets,
                      n_windows=len(windows) or None, blockable=lookback is not None, workers=workers,
                      series_bytes=strategy.sweep_series_bytes(params, n_bars))


def _windows(params: Sequence[Mapping[str, Any]]) -> set[int]:
    """The distinct ``fast`` / ``slow`` windows of a grid (a set per key first: grids are long)."""
    values = {p.get("fast") for p in params} | {p.get("slow") for p in params}
    return {int(v) for v in values if isinstance(v, int)}
