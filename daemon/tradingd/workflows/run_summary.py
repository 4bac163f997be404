"""A run's summary: its out-of-sample headline, the selection, and an equity sparkline.

What ``GET /runs`` shows per run under ``summary`` and the dashboard draws.
It is derived from files the phases already wrote — never from a new
backtest — by :func:`run_summary`, in the file worker (it parses result
files), each time a phase finishes and once more when the run ends; the run
keeps it in its manifest, so a restart serves it. It stays small (a few
hundred bytes: the equity is downsampled to :data:`EQUITY_POINTS` points), so
``GET /runs`` stays cheap with hundreds of runs.

- **walk_forward**, every window tested: the stitched out-of-sample curve of
  ``out_of_sample.json`` (symbols pooled) and its Sharpe ratio and return;
  the selection is made per window.
- **train_test**, and a walk-forward still running: the testing phases
  finished so far — the method's result (the objective's mean across symbols
  of training's top-ranked selection, as handed) and the pooled equity of
  that selection, chained over the windows tested so far.
- **backtest** (no testing phase): the best cell of the last sweep, labelled
  *in-sample* (``cell`` names it); its equity curve when the phase recorded
  curves (``track_equity``). A finished backtest run without them draws that
  one cell's curve again on the executor (``WorkflowRun``) and adds it with
  :func:`add_equity`; a training phase's best cell goes without.

docs/http-api.md lists the keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tradingd.formatting import finite_number, fmt_count, fmt_metric
from tradingd.workflows.layout import PhaseLayout, read_json
from tradingd.workflows.out_of_sample import curve_returns, selected_curve
from tradingd.workflows.spec import check_safe_name

__all__ = ["EQUITY_POINTS", "add_equity", "downsample", "params_text", "run_summary"]

# The sparkline's points at most: one every ~3 px of its 90. Each point costs ``GET /runs`` its JSON
# encoding (bench/runs_summary_cost.py): 64 would make a summary ~700 bytes and the page of 100 runs ~2.4x dearer.
EQUITY_POINTS = 32
SIGNIFICANT = 4  # digits kept of each equity point (a 22-pixel sparkline needs fewer)
FINISHED_PHASE = frozenset({"completed", "failed", "cancelled"})  # phases whose aggregate is on disk


def run_summary(run_root: Path, phases: Sequence[Mapping[str, Any]], *, run_type: str, objective: str,
                initial_equity: float) -> dict[str, Any] | None:
    """The summary of the run in ``run_root`` from its finished phases (``phases``: its manifest's records).

    ``None`` while no phase has finished. Reads the aggregates and, for the
    equity, the testing phases' container files: call it off the event loop.
    """
    phases = [p for p in phases if _safe(p.get("name"))]  # names from a manifest become paths
    finished = [p for p in phases if p.get("status") in FINISHED_PHASE
                and PhaseLayout(run_root / str(p.get("name"))).aggregate.is_file()]
    tests = [p for p in finished if p.get("kind") == "testing"]
    planned_tests = sum(1 for p in phases if p.get("kind") == "testing")
    if run_type == "walk_forward" and tests and len(tests) == planned_tests:
        stitched = read_json(run_root / "out_of_sample.json")
        if stitched is not None:
            return _stitched(run_root, stitched, tests)
    if tests:
        return _tested(run_root, tests, planned_tests, objective=objective, initial_equity=initial_equity,
                       walk_forward=run_type == "walk_forward")
    sweeps = [p for p in finished if p.get("kind") in ("backtest", "training")]
    if sweeps:
        return _best_cell(run_root / str(sweeps[-1].get("name")), objective, initial_equity)
    return None


# --- the three kinds of result ------------------------------------------------------


def _stitched(run_root: Path, stitched: Mapping[str, Any], tests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    pooled = (stitched.get("pooled") or {}).get("strategy") or {}
    sharpe, total = finite_number(pooled.get("sharpe")), finite_number(pooled.get("total_return"))
    windows = int(stitched.get("windows") or len(tests))
    symbols = int((stitched.get("pooled") or {}).get("symbols") or 0)
    out: dict[str, Any] = {
        "scope": "out_of_sample",
        "source": "walk_forward_stitched",
        "objective": "sharpe",
        "value": _round(sharpe),
        "total_return": _round(total),
        "headline": f"OOS stitched sharpe {fmt_metric('sharpe', sharpe)} · return "
                    f"{fmt_metric('total_return', total)} · {_plural(windows, 'window')}, {_plural(symbols, 'symbol')}",
        "selection": _selection_text(_handed_params(_aggregates(run_root, tests)), "per window"),
    }
    curve = ((stitched.get("pooled_curves") or {}).get("strategy")) or []
    return _with_equity(out, curve)


def _tested(run_root: Path, tests: Sequence[Mapping[str, Any]], planned: int, *, objective: str,
            initial_equity: float, walk_forward: bool) -> dict[str, Any]:
    """The method's out-of-sample result over the testing phases finished so far (train/test: the one)."""
    means, symbols = [], 0
    windows: list[tuple[PhaseLayout, dict[str, list[int]]]] = []
    aggregates = _aggregates(run_root, tests)
    for layout, aggregate in aggregates:
        oos = aggregate.get("out_of_sample") or {}
        if (mean := finite_number(oos.get("mean"))) is not None:
            means.append(mean)
        symbols = max(symbols, int(oos.get("n_symbols") or 0))
        windows.append((layout, dict((aggregate.get("selection") or {}).get("by_symbol") or {})))
    value = math.fsum(means) / len(means) if means else None
    curve = _pooled_curve(windows, initial_equity)
    total = curve[-1] - 1.0 if curve else None
    so_far = f" ({len(tests)} of {planned} windows)" if walk_forward and len(tests) < planned else ""
    parts = [f"OOS {objective} mean {fmt_metric(objective, value)}{so_far}"]
    if total is not None:
        parts.append(f"return {fmt_metric('total_return', total)}")
    parts.append(_plural(symbols, "symbol"))
    out: dict[str, Any] = {
        "scope": "out_of_sample",
        "source": "testing",
        "objective": objective,
        "value": _round(value),
        "total_return": _round(total),
        "headline": " · ".join(parts),
        "selection": _selection_text(_handed_params(aggregates), "per window" if walk_forward else "per symbol"),
    }
    if so_far:
        out["windows"] = {"tested": len(tests), "planned": planned}
    return _with_equity(out, curve or [])


def _best_cell(phase_root: Path, objective: str, initial_equity: float) -> dict[str, Any] | None:
    """A sweep's best cell, in-sample: its objective and return, its parameters, its curve if recorded."""
    layout = PhaseLayout(phase_root)
    ranking = (read_json(layout.aggregate) or {}).get("ranking") or []
    if not ranking:
        return None
    best = ranking[0]
    value = finite_number(best.get("objective"))
    total = finite_number((best.get("metrics") or {}).get("total_return"))
    symbol = str(best.get("symbol"))
    out: dict[str, Any] = {
        "scope": "in_sample",
        "source": "best_cell",
        "objective": objective,
        "value": _round(value),
        "total_return": _round(total),
        "headline": f"in-sample best {objective} {fmt_metric(objective, value)} · return "
                    f"{fmt_metric('total_return', total)} ({symbol})",
        "selection": f"{symbol} {params_text(best.get('params') or {})}",
        "cell": {"symbol": symbol, "index": int(best.get("index") or 0)},
    }
    settings = (read_json(layout.summary) or {}).get("settings") or {}
    if settings.get("track_equity"):  # otherwise no container file holds a curve: none is read
        curve = selected_curve(layout, symbol, out["cell"]["index"])
        if curve:
            return add_equity(out, curve, initial_equity)
    return out


def add_equity(summary: dict[str, Any], curve: Sequence[float], initial_equity: float) -> dict[str, Any]:
    """``summary`` with ``equity``: ``curve`` (money, started at ``initial_equity``) as growth of 1, downsampled."""
    return _with_equity(summary, [v / initial_equity for v in curve])


# --- pieces -----------------------------------------------------------------------------


def _pooled_curve(windows: Sequence[tuple[PhaseLayout, Mapping[str, Sequence[int]]]],
                  initial_equity: float) -> list[float] | None:
    """Growth of 1 of each symbol's handed selection chained over ``windows``, symbols equally weighted.

    As :func:`~tradingd.workflows.out_of_sample.stitch_walk_forward` pools
    them; a symbol missing a curve in some window is left out.
    """
    series: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    symbols = sorted({s for _, handed in windows for s in handed})
    for symbol in symbols:
        parts = []
        for layout, handed in windows:
            indices = list(handed.get(symbol) or [])
            curve = selected_curve(layout, symbol, int(indices[0])) if indices else None
            if curve is None:
                break
            parts.append(curve_returns(curve, initial_equity))
        else:
            if parts:
                series.append(np.concatenate(parts))
    if not series:
        return None
    length = min(r.size for r in series)
    returns = np.mean([r[:length] for r in series], axis=0)
    return [float(v) for v in np.cumprod(1.0 + returns)]


def _aggregates(run_root: Path, phases: Sequence[Mapping[str, Any]]) -> list[tuple[PhaseLayout, dict[str, Any]]]:
    layouts = [PhaseLayout(run_root / str(phase.get("name"))) for phase in phases]
    return [(layout, read_json(layout.aggregate) or {}) for layout in layouts]


def _handed_params(aggregates: Sequence[tuple[PhaseLayout, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The top-ranked parameter set each testing phase tested, per symbol (as training handed it)."""
    found: list[dict[str, Any]] = []
    for _, aggregate in aggregates:
        selection = aggregate.get("selection") or {}
        params = selection.get("params") or {}
        for indices in (selection.get("by_symbol") or {}).values():
            if indices and str(indices[0]) in params:
                found.append(dict(params[str(indices[0])]))
    return found


def _selection_text(chosen: Sequence[Mapping[str, Any]], varied: str) -> str | None:
    """``fast=10 slow=50`` when every symbol (and window) chose that set; else ``per window (7 sets)``."""
    distinct = {params_text(p) for p in chosen}
    if not distinct:
        return None
    if len(distinct) == 1:
        return distinct.pop()
    return f"{varied} ({len(distinct)} sets)"


def params_text(params: Mapping[str, Any]) -> str:
    """``{"fast": 10, "slow": 50}`` → ``fast=10 slow=50`` (floats with 4 significant digits)."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def downsample(curve: Sequence[float], points: int = EQUITY_POINTS) -> list[float]:
    """At most ``points`` finite values of ``curve``, evenly spaced, the first and last kept; 4 significant digits."""
    values = [v for v in (finite_number(x) for x in curve) if v is not None]
    if len(values) > points:
        picks = np.unique(np.linspace(0, len(values) - 1, points).round().astype(int))
        values = [values[i] for i in picks]
    return [float(f"{v:.{SIGNIFICANT}g}") for v in values]


def _with_equity(summary: dict[str, Any], curve: Sequence[float]) -> dict[str, Any]:
    equity = downsample(curve)
    if len(equity) >= 2:
        summary["equity"] = equity
    return summary


def _safe(name: Any) -> bool:
    try:
        check_safe_name(name, "phase name")
    except ValueError:
        return False
    return True


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


def _plural(count: int, noun: str) -> str:
    return f"{fmt_count(count)} {noun}{'' if count == 1 else 's'}"
