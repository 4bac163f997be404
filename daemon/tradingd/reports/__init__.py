"""Reports for completed phases and runs: report.html plus matplotlib PNG plots.

Call at phase completion (from the event loop)::

    from tradingd.reports import publish_phase_report, publish_run_report
    await publish_phase_report(results_dir / run_id / phase_name)   # after phase_summary.json is written
    await publish_run_report(results_dir / run_id)                  # after manifest.json says the run ended

Both read only the files on disk (see :mod:`tradingd.reports.phase_data`), draw
in a worker thread, write through :mod:`tradingd.storage.atomic`, and never
raise (a report is never worth failing a run for). The synchronous
:func:`write_phase_report` / :func:`write_run_report` do the same work and do
raise, for tests and scripts. Without matplotlib, report.html is still written,
without plots, and one line is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tradingd.reports import plots as _plots
from tradingd.reports.heatmap import Heatmap, build_heatmap
from tradingd.reports.html import render_phase_html, render_run_html
from tradingd.reports.phase_data import EquityCurve, PhaseData, RunData, load_phase, load_run
from tradingd.storage.atomic import atomic_write_bytes, atomic_write_text

__all__ = [
    "PhaseReport",
    "RunReport",
    "publish_phase_report",
    "publish_run_report",
    "write_phase_report",
    "write_run_report",
]

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
_NO_MATPLOTLIB = "plots skipped: matplotlib is not installed (pip install 'tradingd[plots]')"
_warned_missing = False
_OOS_KINDS = {"test", "testing"}


@dataclass
class PhaseReport:
    """What :func:`write_phase_report` wrote."""

    html: Path
    plots: dict[str, Path] = field(default_factory=dict)
    heatmap: Heatmap | None = None
    status: str = "unknown"


@dataclass
class RunReport:
    """What :func:`write_run_report` wrote."""

    html: Path
    plots: dict[str, Path] = field(default_factory=dict)
    windows: int = 0


def _plots_enabled() -> bool:
    global _warned_missing
    if _plots.matplotlib_available():
        return True
    if not _warned_missing:
        _warned_missing = True
        log.warning("matplotlib is not installed; reports are written without plots")
    return False


def _draw(directory: Path, name: str, draw: Callable[..., bytes], *args: object) -> Path | None:
    """Draw one PNG; a plotting error costs that plot only (logged), never the report."""
    try:
        data = draw(*args)
    except Exception:
        log.exception("could not draw %s for %s", name, directory)
        return None
    path = directory / name
    atomic_write_bytes(path, data)
    return path


def _equity_plot(phase: PhaseData) -> tuple[str, EquityCurve, EquityCurve | None] | None:
    """The equity worth showing: the selection's (several symbols equally weighted), else one recorded curve."""
    method = phase.method_equity()
    if method is not None and len(method[0].values) >= 2:
        mixed, benchmark = method
        symbols = sum(1 for indices in phase.selection_by_symbol.values() if indices)
        who = f"on {mixed.symbol}" if mixed.symbol else f"{symbols} symbols equally weighted"
        return f"{phase.name}: equity of each symbol's top-ranked selection ({who})", mixed, benchmark
    curve = phase.selected_equity()
    if curve is None or len(curve.values) < 2:
        return None
    params = ", ".join(f"{k}={v}" for k, v in (phase.best_params or {}).items())
    title = f"{phase.name}: equity of combination {curve.index}" + (f" ({params})" if params else "")
    title += f" on {curve.symbol}" if curve.symbol else ""
    hold = phase.buy_and_hold.get(curve.symbol or "")
    return title, curve, EquityCurve(hold, curve.times, curve.symbol) if hold else None


def _phase_plots(phase: PhaseData, heatmap: Heatmap | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    directory = phase.path
    found = _equity_plot(phase)
    if found is not None:
        title, curve, benchmark = found
        if (p := _draw(directory, "equity.png", _plots.equity_drawdown_png, curve, title, benchmark)) is not None:
            out["equity"] = p
    if heatmap is not None and heatmap.filled:
        p = _draw(directory, "heatmap.png", _plots.heatmap_png, heatmap)
        if p is not None:
            out["heatmap"] = p
    returns, own = phase.selected_trade_returns()
    if returns:
        title = f"{phase.name}: trade returns of " + ("the selection" if own else "every combination")
        p = _draw(directory, "trade_returns.png", _plots.returns_histogram_png, returns, title)
        if p is not None:
            out["returns"] = p
    strip = [(str(r.get("symbol")), float(r["objective"])) for r in phase.out_of_sample.get("per_symbol") or []
             if isinstance(r, dict) and isinstance(r.get("objective"), int | float)]
    if strip:
        title = f"{phase.name}: {phase.objective} of each symbol's training selection, out of sample"
        p = _draw(directory, "oos_strip.png", _plots.strip_png, strip, phase.objective or "objective", title)
        if p is not None:
            out["oos_strip"] = p
    histogram = phase.overfitting.get("logit_histogram") or {}
    if isinstance(histogram, dict) and histogram.get("counts"):
        pbo = phase.overfitting.get("pbo")
        title = f"{phase.name}: CSCV, {phase.overfitting.get('splits')} splits"
        groups = histogram.get("groups")
        if isinstance(groups, int) and groups > 1:
            title += f" x {groups} symbols"
        p = _draw(directory, "pbo_logits.png", _plots.logit_histogram_png, histogram["edges"], histogram["counts"],
                  pbo if isinstance(pbo, int | float) else None, title)
        if p is not None:
            out["pbo_logits"] = p
    return out


def write_phase_report(
    phase_dir: Path | str, *, run_id: str | None = None, status: str | None = None, error: str | None = None
) -> PhaseReport:
    """Write ``<phase_dir>/report.html`` (and its PNGs) from the phase's files on disk.

    Reads ``phase_summary.json`` (status, error, objective, selection),
    ``aggregate_results.json`` (per-combination metrics) and
    ``containers/*.json`` (metrics, equity curves, trades). A failed or
    cancelled phase gets a report that says so; ``status``/``error`` override
    the files for a phase that failed before writing its summary. Blocking:
    call :func:`publish_phase_report` from the event loop.
    """
    phase = load_phase(Path(phase_dir), status=status, error=error)
    heatmap = build_heatmap(phase.combinations, phase.objective, phase.selected_cells())
    enabled = _plots_enabled()
    written = _phase_plots(phase, heatmap) if enabled else {}
    names: dict[str, str | None] = {key: path.name for key, path in written.items()}
    html = render_phase_html(
        phase,
        run_id=run_id or phase.path.parent.name,
        plots=names,
        heatmap=heatmap,
        plot_note=None if enabled else _NO_MATPLOTLIB,
    )
    target = phase.path / REPORT_NAME
    atomic_write_text(target, html)
    log.info("wrote %s (%s, %d plots)", target, phase.status, len(written))
    return PhaseReport(html=target, plots=written, heatmap=heatmap, status=phase.status)


def _window_equity(test: PhaseData, training: PhaseData | None) -> EquityCurve | None:
    """Equal-weight equity of every symbol's training-selected combination over the test bars.

    Only the training phase's choice counts: picking by test results would
    look ahead. Each symbol's curve is scaled to start at 1 before averaging.
    """
    curves = []
    for symbol, indices in (training.selection_by_symbol if training else {}).items():
        if not indices:
            continue
        found = next((c for c in test.equity if c.symbol == symbol and c.index == indices[0]), None)
        if found is not None and found.values and found.values[0] > 0:
            curves.append(found)
    if not curves:
        return test.selected_equity()  # no training selection on disk: the best the test recorded
    length = min(len(c.values) for c in curves)
    mean = [sum(c.values[i] / c.values[0] for c in curves) / len(curves) for i in range(length)]
    times = curves[0].times[:length] if curves[0].times else None
    return EquityCurve(mean, times, None if len(curves) > 1 else curves[0].symbol, None)


def out_of_sample_segments(run: RunData) -> list[tuple[str, EquityCurve]]:
    """Out-of-sample equity of each walk-forward window's testing phase, in window order."""
    by_name = {p.name: p for p in run.phases}
    tests = [p for p in run.phases if p.window is not None and (p.kind or "").lower() in _OOS_KINDS]
    tests.sort(key=lambda p: (p.window if p.window is not None else 0, p.name))
    segments = []
    for phase in tests:
        curve = _window_equity(phase, by_name.get(phase.source_phase or ""))
        if curve is not None and curve.values:
            segments.append((f"window {phase.window}", curve))
    return segments


def write_run_report(run_dir: Path | str, *, status: str | None = None) -> RunReport:
    """Write ``<run_dir>/report.html``: phases with their selections and links to their reports.

    A walk-forward run (phases with a ``window`` in their summary) also gets
    ``oos_equity.png``: the out-of-sample equity of each window's test phase,
    chained so each window starts where the previous one ended.
    """
    run = load_run(Path(run_dir))
    if status is not None:  # the run's final status, written to the manifest after the report
        run.manifest["status"] = status
    segments = out_of_sample_segments(run)
    windows = len({p.window for p in run.phases if p.window is not None})
    written: dict[str, Path] = {}
    enabled = _plots_enabled()
    curves = run.out_of_sample.get("pooled_curves") or {}
    if enabled and isinstance(curves, dict) and curves.get("strategy"):
        title = (f"run {run.run_id}: out-of-sample equity across {run.out_of_sample.get('windows')} windows, "
                 f"{(run.out_of_sample.get('pooled') or {}).get('symbols')} symbols equally weighted")
        p = _draw(run.path, "oos_equity.png", _plots.oos_curves_png, curves["strategy"], curves.get("buy_and_hold"),
                  run.out_of_sample.get("window_bars") or [], title)
        if p is not None:
            written["oos_equity"] = p
    elif enabled and segments:
        title = f"run {run.run_id}: out-of-sample equity across {len(segments)} windows"
        if (p := _draw(run.path, "oos_equity.png", _plots.stitched_equity_png, segments, title)) is not None:
            written["oos_equity"] = p
    html = render_run_html(
        run,
        stitched=written["oos_equity"].name if "oos_equity" in written else None,
        windows=windows,
        plot_note=None if enabled else _NO_MATPLOTLIB,
    )
    target = run.path / REPORT_NAME
    atomic_write_text(target, html)
    log.info("wrote %s (%d phases, %d windows)", target, len(run.phases), windows)
    return RunReport(html=target, plots=written, windows=windows)


async def publish_phase_report(
    phase_dir: Path | str, *, run_id: str | None = None, status: str | None = None, error: str | None = None
) -> PhaseReport | None:
    """:func:`write_phase_report` in a worker thread; logs and returns ``None`` on failure."""
    try:
        return await asyncio.to_thread(write_phase_report, phase_dir, run_id=run_id, status=status, error=error)
    except Exception:
        log.exception("could not write the report for phase %s", phase_dir)
        return None


async def publish_run_report(run_dir: Path | str, *, status: str | None = None) -> RunReport | None:
    """:func:`write_run_report` in a worker thread; logs and returns ``None`` on failure."""
    try:
        return await asyncio.to_thread(write_run_report, run_dir, status=status)
    except Exception:
        log.exception("could not write the report for run %s", run_dir)
        return None
