"""The method's out-of-sample result: what training selected, tested, per symbol and across symbols.

A testing phase tests the selection its training phase handed over. The
*method's* result is, per symbol, the test result of training's top-ranked
selection for that symbol, exactly as handed (never re-ranked by test
results, which would look ahead), and across symbols their distribution:
mean, median, share positive, spread. The best single test cell is kept too,
labelled as what it is, never as the headline.

Walk-forward runs add :func:`stitch_walk_forward`: each symbol's
out-of-sample equity chained across windows (each window's selection on that
window's test bars), its own metrics, an equal-weight pool of the symbols,
and buy-and-hold of the same bars beside each. docs/workflows.md lists the
keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import median, pstdev
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tradingd.storage.atomic import atomic_write_json
from tradingd.trading.metrics import cagr, equity_metrics
from tradingd.workflows.layout import PhaseLayout, read_json

__all__ = [
    "BEST_CELL_LABEL",
    "HEADLINE_METRICS",
    "buy_and_hold_document",
    "curve_returns",
    "method_result",
    "phase_headline",
    "run_headline",
    "selected_curve",
    "spread",
    "stitch_walk_forward",
    "write_stitched",
]

BEST_CELL_LABEL = "best single test cell, picked by its own test result: not the method's result"
# Metrics summarised across symbols besides the objective.
HEADLINE_METRICS = ("sharpe", "total_return", "cagr", "max_drawdown", "n_trades")


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """n, mean, median, share positive, std, min and max of the finite ``values``."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"n": 0, "mean": None, "median": None, "share_positive": None, "std": None, "min": None, "max": None}
    return {
        "n": len(finite),
        "mean": math.fsum(finite) / len(finite),
        "median": float(median(finite)),
        "share_positive": sum(1 for v in finite if v > 0) / len(finite),
        "std": float(pstdev(finite)) if len(finite) > 1 else 0.0,
        "min": min(finite),
        "max": max(finite),
    }


def method_result(rows: Sequence[Mapping[str, Any]], handed: Mapping[str, Sequence[int]], objective: str,
                  best_cell: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``out_of_sample`` section of a testing phase from its result rows and the handed selection.

    ``rows`` are ``{"symbol", "index", "params", "metrics"}``; ``handed`` maps
    each symbol to the indices training selected, best first.
    """
    lookup = {(str(r["symbol"]), int(r["index"])): r for r in rows}
    per_symbol: list[dict[str, Any]] = []
    every: list[float | None] = []
    for symbol in sorted(handed):
        indices = list(handed[symbol])
        for index in indices:
            found = lookup.get((symbol, index))
            every.append(_number(found["metrics"].get(objective)) if found else None)
        if not indices:
            continue
        found = lookup.get((symbol, indices[0]))
        metrics = dict(found["metrics"]) if found else {}
        per_symbol.append({
            "symbol": symbol,
            "index": indices[0],
            "params": dict(found["params"]) if found else None,
            "objective": _number(metrics.get(objective)),
            **{name: _number(metrics.get(name)) for name in HEADLINE_METRICS if name != objective},
        })
    headline = spread([r["objective"] for r in per_symbol])
    out: dict[str, Any] = {
        "what": "per symbol: the test result of training's top-ranked selection, as handed; "
                "across symbols: mean, median, share positive",
        "objective": objective,
        "n_symbols": headline["n"],
        **{k: v for k, v in headline.items() if k != "n"},
        "metrics": {name: spread([r.get(name) for r in per_symbol]) for name in HEADLINE_METRICS
                    if name != objective},
        "per_symbol": per_symbol,
        "all_selected": {k: v for k, v in spread(every).items() if k in ("n", "mean", "median", "share_positive")},
        "best_cell": None,
    }
    if best_cell is not None:
        out["best_cell"] = {"label": BEST_CELL_LABEL, "symbol": best_cell["symbol"], "index": best_cell["index"],
                            "params": best_cell["params"], "objective": _number(best_cell["metrics"].get(objective))}
    return out


# --- walk-forward: the stitched out-of-sample curve ------------------------------------


def curve_returns(values: Sequence[float], initial: float) -> NDArray[np.float64]:
    """Per-bar returns of an equity curve that started at ``initial`` (0 where the previous value is not positive)."""
    equity = np.asarray(values, dtype=np.float64)
    previous = np.concatenate(([initial], equity[:-1]))
    out = np.zeros_like(equity)
    np.divide(equity, previous, out=out, where=previous > 0)
    out -= 1.0
    out[previous <= 0] = 0.0
    return out


def _metrics(returns: NDArray[np.float64], periods_per_year: float) -> dict[str, Any]:
    if returns.size == 0:
        return {"bars": 0, "total_return": None, "cagr": None, "sharpe": None, "max_drawdown": None}
    equity = np.asarray(np.cumprod(1.0 + returns), dtype=np.float64)[:, None]
    dense = equity_metrics(equity, 1.0, periods_per_year, ("sharpe", "max_drawdown"))
    total = float(equity[-1, 0] - 1.0)
    return {
        "bars": int(returns.size),
        "total_return": total,
        "cagr": float(cagr(np.array([total]), int(returns.size), periods_per_year)[0]),
        "sharpe": float(dense["sharpe"][0]),
        "max_drawdown": float(dense["max_drawdown"][0]),
    }


def selected_curve(layout: PhaseLayout, symbol: str, index: int) -> list[float] | None:
    """The equity curve of (symbol, index) from the phase's container files, if recorded."""
    directory = layout.containers_dir
    for path in sorted(directory.glob(f"{symbol}-*.json")) if directory.is_dir() else []:
        doc = read_json(path)
        if doc is None or doc.get("symbol") != symbol or doc.get("status") != "completed":
            continue
        curve = ((doc.get("equity") or {}).get("curves") or {}).get(str(index))
        if isinstance(curve, list) and curve:
            return [float(v) for v in curve]
    return None


def buy_and_hold_document(closes: Mapping[str, NDArray[np.float64]]) -> dict[str, Any]:
    """``buy_and_hold.json``: each symbol's growth of 1 over a phase's bars (bought at the first close, no costs)."""
    return {
        "format": "tradingd-buy-and-hold/1",
        "what": "growth of 1 bought at the first bar's close and held, no costs",
        "curves": {symbol: [round(float(v), 8) for v in close / close[0]] for symbol, close in closes.items()},
    }


def stitch_walk_forward(
    windows: Sequence[tuple[PhaseLayout, Mapping[str, Sequence[int]]]],
    closes: Mapping[str, Sequence[NDArray[np.float64]]],
    *,
    initial_equity: float,
    periods_per_year: Mapping[str, float],
) -> dict[str, Any]:
    """Chain each symbol's out-of-sample equity across windows; metrics per symbol, pooled, and buy-and-hold.

    ``windows`` are (testing phase layout, the selection its training handed)
    in window order; ``closes[symbol][w]`` are the close prices of window w's
    test bars. Buy-and-hold buys at the first test bar's close of each window
    and holds to its last, without costs. The pool weighs symbols equally,
    rebalanced every bar. A symbol with a window whose curve was not recorded
    (``track_equity`` off) is left out and listed under ``missing``.
    """
    strategy: dict[str, NDArray[np.float64]] = {}
    hold: dict[str, NDArray[np.float64]] = {}
    missing: list[str] = []
    for symbol in sorted(closes):
        parts, bh_parts = [], []
        for w, (layout, handed) in enumerate(windows):
            indices = list(handed.get(symbol) or [])
            curve = selected_curve(layout, symbol, indices[0]) if indices else None
            if curve is None:
                break
            parts.append(curve_returns(curve, initial_equity))
            close = np.asarray(closes[symbol][w], dtype=np.float64)
            bh_parts.append(np.concatenate(([0.0], close[1:] / close[:-1] - 1.0)))
        else:
            strategy[symbol] = np.concatenate(parts) if parts else np.empty(0)
            hold[symbol] = np.concatenate(bh_parts) if bh_parts else np.empty(0)
            continue
        missing.append(symbol)
    per_symbol = {
        symbol: {"strategy": _metrics(strategy[symbol], periods_per_year[symbol]),
                 "buy_and_hold": _metrics(hold[symbol], periods_per_year[symbol])}
        for symbol in strategy
    }
    pooled: dict[str, Any] = {"symbols": len(strategy), "strategy": None, "buy_and_hold": None}
    curves: dict[str, list[float]] = {}
    if strategy:
        length = min(r.size for r in strategy.values())
        ppy = float(np.mean([periods_per_year[s] for s in strategy]))
        for key, series in (("strategy", strategy), ("buy_and_hold", hold)):
            returns = np.mean([r[:length] for r in series.values()], axis=0)
            pooled[key] = _metrics(returns, ppy)
            curves[key] = [round(float(v), 8) for v in np.cumprod(1.0 + returns)]
    across = spread([m["strategy"]["sharpe"] for m in per_symbol.values()])
    return {
        "what": "each symbol's out-of-sample equity chained across windows (each window: its training's "
                "top-ranked selection); pooled: symbols equally weighted, rebalanced every bar",
        "windows": len(windows),
        "pooled": pooled,
        "sharpe_across_symbols": across,
        "per_symbol": per_symbol,
        "missing": missing,
        "window_bars": [len(c) for c in next(iter(closes.values()), [])],
        "pooled_curves": curves,  # growth of 1, one value per bar (for the run report's plot)
    }


def phase_headline(aggregate: Mapping[str, Any], overfitting: Mapping[str, Any] | None) -> dict[str, Any]:
    """The few figures ``/runs/{id}`` and the dashboard show per phase (docs/workflows.md, "results")."""
    out: dict[str, Any] = {}
    oos = aggregate.get("out_of_sample")
    if isinstance(oos, Mapping):
        out["out_of_sample"] = {key: oos.get(key) for key in
                                ("objective", "n_symbols", "mean", "median", "share_positive", "min", "max")}
        best = oos.get("best_cell")
        if isinstance(best, Mapping):
            out["best_cell"] = {key: best.get(key) for key in ("label", "symbol", "index", "objective")}
    if isinstance(overfitting, Mapping) and "error" not in overfitting:
        out["overfitting"] = {key: overfitting.get(key) for key in ("n_trials", "psr", "dsr", "pbo", "blocks")}
    return out


def run_headline(phases: Sequence[Mapping[str, Any]], stitched: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's headline for ``GET /runs`` and the dashboard: the method's out-of-sample result and its luck.

    ``phases`` are the manifest's phase records (with their ``results``).
    Walk-forward: the stitched Sharpe ratio across symbols and the pooled
    curve's figures; the overfitting figures are means over the training
    phases. Otherwise the last testing phase's result and the last sweep's
    statistics.
    """
    out: dict[str, Any] = {}
    results = [dict(p.get("results") or {}) for p in phases]
    if stitched:
        across = dict(stitched.get("sharpe_across_symbols") or {})
        pooled = dict(stitched.get("pooled") or {})
        out["out_of_sample"] = {"objective": "sharpe", "stitched": True, "windows": stitched.get("windows"),
                                "n_symbols": across.get("n"), "mean": across.get("mean"),
                                "median": across.get("median"), "share_positive": across.get("share_positive"),
                                "pooled": pooled.get("strategy"), "buy_and_hold": pooled.get("buy_and_hold")}
    else:
        tested = [r["out_of_sample"] for r in results if r.get("out_of_sample")]
        if tested:
            out["out_of_sample"] = {**tested[-1], "stitched": False}
    sweeps = [r["overfitting"] for r in results if r.get("overfitting")]
    if sweeps:
        figures = {}
        for key in ("psr", "dsr", "pbo"):
            values = [v for s in sweeps if (v := _number(s.get(key))) is not None]
            figures[key] = math.fsum(values) / len(values) if values else None
        out["overfitting"] = {**figures, "n_trials": sweeps[-1].get("n_trials"), "phases": len(sweeps)}
    return out


def write_stitched(
    run_root: Path,
    windows: Sequence[tuple[PhaseLayout, Mapping[str, Sequence[int]]]],
    closes: Mapping[str, Sequence[NDArray[np.float64]]],
    *,
    initial_equity: float,
    periods_per_year: Mapping[str, float],
) -> dict[str, Any]:
    """:func:`stitch_walk_forward`, written to ``<run>/out_of_sample.json``; the summary without the curves."""
    stitched = stitch_walk_forward(windows, closes, initial_equity=initial_equity, periods_per_year=periods_per_year)
    atomic_write_json(run_root / "out_of_sample.json", {"format": "tradingd-oos/1", **stitched})
    return {k: v for k, v in stitched.items() if k != "pooled_curves"}
