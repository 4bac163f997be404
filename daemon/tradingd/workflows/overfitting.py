"""Overfitting statistics of a sweep phase: PSR, DSR and PBO of what it selected.

Two steps, so any set of evaluated combinations can be judged the same way
(a grid's training phase here, the trials of a search elsewhere):

1. :func:`sweep_block_moments` (an executor function: plain data in and out)
   backtests the combinations again on one symbol's bars, a chunk at a time,
   and reduces each chunk's per-bar returns to
   :class:`~tradingd.trading.overfitting.BlockMoments` before the next chunk
   is simulated, so memory stays within ``budget_bytes`` however many
   combinations were tried.
2. :func:`overfitting_summary` turns the moments of every symbol and the
   selection into the ``overfitting`` section of ``phase_summary.json``
   (docs/workflows.md lists its keys; docs/engine.md the formulas).

Every combination evaluated counts as a trial: pass all of them, not only the
ranked top rows.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

import numpy as np

from tradingd.trading.data import MarketData
from tradingd.trading.engine import DEFAULT_CHUNK_BYTES, run_sweep
from tradingd.trading.overfitting import BlockMoments, Cscv, bar_returns, cscv, selection_statistics
from tradingd.workflows.compute import backtest_config
from tradingd.workflows.executor import Executor

__all__ = ["SIGNIFICANT", "overfitting_summary", "phase_overfitting", "sweep_block_moments"]

# A DSR (or PSR) at or above this is reported as significant (a one-sided 5 % test).
SIGNIFICANT = 0.95
_LOGIT_BINS = 24
# Bytes per (bar, combination) while a chunk is reduced: the kept equity, its
# returns and the running power, with room for the engine's own temporaries.
_BYTES_PER_CELL = 48


def sweep_block_moments(data: MarketData, strategy: str, params: Sequence[Mapping[str, Any]],
                        backtest: Mapping[str, Any], n_blocks: int,
                        budget_bytes: int = DEFAULT_CHUNK_BYTES) -> BlockMoments:
    """The block moments of every combination in ``params`` on ``data``, in the order given."""
    config = backtest_config(backtest)
    step = max(1, budget_bytes // (max(data.n_bars, 1) * _BYTES_PER_CELL))
    parts: list[BlockMoments] = []
    for start in range(0, len(params), step):
        chunk = list(params[start:start + step])
        result = run_sweep(data, strategy, chunk, config, metrics=("total_return",), keep_equity_for="all",
                           chunk_bytes=budget_bytes)
        equity = np.column_stack([result.equity[i] for i in range(len(chunk))])
        parts.append(BlockMoments.from_returns(bar_returns(equity, config.initial_equity), n_blocks))
        del result, equity
    return BlockMoments.concat(parts)


def _finite(value: float) -> float | None:
    return round(value, 10) if math.isfinite(value) else None


def _spread(values: Sequence[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"n": 0, "mean": None, "median": None, "min": None, "max": None}
    return {"n": len(finite), "mean": _finite(math.fsum(finite) / len(finite)), "median": _finite(median(finite)),
            "min": _finite(min(finite)), "max": _finite(max(finite))}


def _histogram(logits: np.ndarray[Any, np.dtype[np.float64]]) -> dict[str, Any]:
    finite = logits[np.isfinite(logits)]
    if finite.size == 0:
        return {"edges": [], "counts": []}
    # Symmetric about 0 with an even number of bins, so 0 (the overfitting line) is a bin edge.
    reach = max(float(np.abs(finite).max()), 0.5)
    counts, edges = np.histogram(finite, bins=_LOGIT_BINS, range=(-reach, reach))
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}


def overfitting_summary(moments: Mapping[str, BlockMoments], selected: Mapping[str, int], *,
                        scope: str, indices: Sequence[int] | None = None,
                        periods_per_year: Mapping[str, float] | None = None,
                        budget_bytes: int = DEFAULT_CHUNK_BYTES,
                        computed: Mapping[str, Cscv] | None = None) -> dict[str, Any]:
    """The ``overfitting`` section: per symbol PSR/DSR/PBO of the selected combination, and overall.

    ``moments`` holds each symbol's block moments of every trial (columns in
    the same order for every symbol); ``selected`` maps a symbol to the
    column of its selected combination; ``indices`` maps columns to grid
    indices for the report (default: the column itself). With ``scope``
    ``across_symbols`` one combination was chosen for all symbols, so PBO is
    computed once with each split's performance averaged over the symbols;
    with ``per_symbol`` each symbol is its own selection and PBO is per
    symbol (the headline is their mean); ``computed`` may hold those
    per-symbol CSCV results already (computed in parallel elsewhere).
    """
    per_symbol: dict[str, dict[str, Any]] = {}
    pooled_logits: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    for symbol in sorted(moments):
        if symbol not in selected:
            continue
        found = moments[symbol]
        column = selected[symbol]
        stats = selection_statistics(found, column)
        annual = math.sqrt(periods_per_year[symbol]) if periods_per_year and symbol in periods_per_year else None
        row: dict[str, Any] = {
            "index": int(indices[column]) if indices is not None else column,
            "n_trials": stats.n_trials,
            "n_obs": stats.n_obs,
            "sharpe_per_bar": _finite(stats.sharpe),
            "sharpe_annualized": _finite(stats.sharpe * annual) if annual else None,
            "skew": _finite(stats.skew),
            "kurtosis": _finite(stats.kurtosis),
            "trial_sharpe_variance": _finite(stats.trial_variance),
            "expected_max_sharpe": _finite(stats.expected_max_sharpe),
            "psr": _finite(stats.psr),
            "dsr": _finite(stats.dsr),
        }
        if scope != "across_symbols":
            result = computed[symbol] if computed and symbol in computed else cscv([found], budget_bytes=budget_bytes)
            row["pbo"] = _finite(result.pbo)
            pooled_logits.append(result.logits)
        per_symbol[symbol] = row
    if not per_symbol:
        return {"n_trials": 0, "per_symbol": {}}
    first = next(iter(moments.values()))
    n_splits = math.comb(first.n_blocks, first.n_blocks // 2)
    if scope == "across_symbols":
        result = cscv([moments[s] for s in per_symbol], budget_bytes=budget_bytes)
        pbo: float | None = _finite(result.pbo)
        pooled_logits = [result.logits]
        pbo_note = "one PBO: each split's Sharpe ratio averaged over the symbols (one selection for all)"
    else:
        pbos = [r["pbo"] for r in per_symbol.values() if r["pbo"] is not None]
        pbo = _finite(math.fsum(pbos) / len(pbos)) if pbos else None
        pbo_note = "mean over symbols of each symbol's PBO (each symbol selects on its own)"
    psr = [r["psr"] for r in per_symbol.values() if r["psr"] is not None]
    dsr = [r["dsr"] for r in per_symbol.values() if r["dsr"] is not None]
    logits = np.concatenate(pooled_logits) if pooled_logits else np.empty(0)
    return {
        "method": "PSR/DSR: Bailey & Lopez de Prado (2014); PBO: CSCV, Bailey, Borwein, Lopez de Prado & Zhu (2015)",
        "scope": scope,
        "n_trials": max(r["n_trials"] for r in per_symbol.values()),
        "blocks": first.n_blocks,
        "splits": n_splits,
        "psr": _finite(math.fsum(psr) / len(psr)) if psr else None,
        "dsr": _finite(math.fsum(dsr) / len(dsr)) if dsr else None,
        "pbo": pbo,
        "pbo_note": pbo_note,
        "significant_threshold": SIGNIFICANT,
        "dsr_significant_share": _finite(sum(1 for v in dsr if v >= SIGNIFICANT) / len(dsr)) if dsr else None,
        "psr_spread": _spread(psr),
        "dsr_spread": _spread(dsr),
        "logit_histogram": {**_histogram(logits), "groups": len(pooled_logits)},
        "logit_below_zero_share": _finite(float(np.mean(logits <= 0))) if logits.size else None,
        "per_symbol": per_symbol,
    }


async def phase_overfitting(executor: Executor, data: Mapping[str, MarketData], strategy: str,
                            params: Sequence[Mapping[str, Any]], backtest: Mapping[str, Any],
                            selection: Mapping[str, Sequence[int]], *, scope: str, n_blocks: int,
                            indices: Sequence[int] | None = None,
                            budget_bytes: int = DEFAULT_CHUNK_BYTES) -> dict[str, Any]:
    """The ``overfitting`` section of a phase that tried ``params`` on each symbol of ``data``.

    ``selection`` maps a symbol to its selected grid indices, best first (the
    first is judged); ``indices`` are the grid indices of ``params`` (default:
    their positions). The moments of each symbol and the statistics are
    computed on ``executor``. Never raises for bad luck with the data: a
    symbol too short for ``n_blocks`` blocks is left out, with a note.
    """
    columns = {int(i): c for c, i in enumerate(indices)} if indices is not None else None
    selected: dict[str, int] = {}
    notes: list[str] = []
    for symbol, bars in data.items():
        chosen = list(selection.get(symbol) or [])
        if not chosen:
            continue
        column = columns.get(chosen[0]) if columns is not None else chosen[0]
        if column is None or not 0 <= column < len(params):
            notes.append(f"{symbol}: the selected combination {chosen[0]} is not among the trials")
        elif bars.n_bars < 2 * n_blocks:
            notes.append(f"{symbol}: {bars.n_bars} bars are too few for {n_blocks} blocks")
        else:
            selected[symbol] = column
    started = time.perf_counter()
    own_cscv = scope != "across_symbols"
    trials, settings = list(params), dict(backtest)

    async def one_symbol(symbol: str) -> tuple[BlockMoments, Cscv | None]:
        return await executor.submit(_symbol_pass, data[symbol], strategy, trials, settings, n_blocks,
                                     budget_bytes, own_cscv)

    # One executor call per symbol, in parallel (the executor bounds how many run at once).
    async with asyncio.TaskGroup() as group:
        tasks = {symbol: group.create_task(one_symbol(symbol)) for symbol in selected}
    moments = {symbol: task.result()[0] for symbol, task in tasks.items()}
    computed = {symbol: found for symbol, task in tasks.items() if (found := task.result()[1]) is not None}
    ppy = {symbol: bars.periods_per_year for symbol, bars in data.items()}
    summary: dict[str, Any] = await executor.submit(_summary_call, moments, selected, scope, indices, ppy,
                                                    budget_bytes, computed)
    if notes:
        summary["notes"] = notes
    summary["wall_seconds"] = round(time.perf_counter() - started, 3)  # the pass's cost, for the operator
    return summary


def _symbol_pass(data: MarketData, strategy: str, params: Sequence[Mapping[str, Any]], backtest: Mapping[str, Any],
                 n_blocks: int, budget_bytes: int, own_cscv: bool) -> tuple[BlockMoments, Cscv | None]:
    moments = sweep_block_moments(data, strategy, params, backtest, n_blocks, budget_bytes)
    return moments, cscv([moments], budget_bytes=budget_bytes) if own_cscv else None


def _summary_call(moments: Mapping[str, BlockMoments], selected: Mapping[str, int], scope: str,
                  indices: Sequence[int] | None, ppy: Mapping[str, float], budget_bytes: int,
                  computed: Mapping[str, Cscv]) -> dict[str, Any]:
    return overfitting_summary(moments, selected, scope=scope, indices=indices, periods_per_year=ppy,
                               budget_bytes=budget_bytes, computed=computed)
