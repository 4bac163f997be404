"""report.html for a phase and for a run: static, self-contained apart from its PNGs.

Every value from disk is escaped; plots are linked by relative file name so a
results directory can be copied or served as it is.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from tradingd.formatting import fmt_number, fmt_percent
from tradingd.reports.heatmap import Heatmap
from tradingd.reports.phase_data import Combination, PhaseData, RunData, higher_is_better
from tradingd.reports.research_sections import outcome_filter_phase_html, outcome_filter_run_html, search_phase_html

__all__ = ["render_phase_html", "render_run_html"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#1d2430;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:26px 0 8px;color:#374151}
.meta{color:#6b7480}.badge{display:inline-block;padding:1px 9px;border-radius:10px;color:#fff;font-size:13px;
font-weight:600;background:#6b7480}.badge.completed{background:#16a34a}.badge.failed,.badge.cancelled,.badge.error,
.badge.missing{background:#dc2626}.failure{border:2px solid #dc2626;background:#fef2f2;padding:10px 14px;
border-radius:8px;margin:14px 0}table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:3px 10px;border-bottom:1px solid #e5e7eb}td.n{text-align:right}
img{max-width:100%;border:1px solid #e5e7eb;border-radius:6px;margin:6px 0}.note{color:#6b7480;font-style:italic}
"""

_PERCENT_METRICS = {"total_return", "cagr", "volatility", "max_drawdown", "win_rate", "exposure"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt_metric(name: str, value: Any) -> str:
    if name in _PERCENT_METRICS:
        return fmt_percent(value, digits=2)
    return fmt_number(value)


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _kv_table(pairs: Mapping[str, Any], metric_names: bool = False) -> str:
    if not pairs:
        return '<p class="note">—</p>'
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td class=\"n\">{_e(_fmt_metric(k, v) if metric_names else fmt_number(v))}</td></tr>"
        for k, v in pairs.items()
    )
    return f"<table>{rows}</table>"


def _img(name: str | None, alt: str, missing: str) -> str:
    if name is None:
        return f'<p class="note">{_e(missing)}</p>'
    return f'<img src="{_e(name)}" alt="{_e(alt)}">'


def _top_table(combos: Sequence[Combination], objective: str | None, limit: int = 15) -> str:
    if not combos or not objective:
        return '<p class="note">no per-combination results recorded</p>'
    scored = [c for c in combos if isinstance(c.metrics.get(objective), int | float)]
    scored.sort(key=lambda c: float(c.metrics[objective]), reverse=higher_is_better(objective))
    params = list(dict.fromkeys(k for c in scored[:limit] for k in c.params))
    metrics = [objective] + [m for m in ("total_return", "sharpe", "max_drawdown", "n_trades", "win_rate")
                             if m != objective and any(m in c.metrics for c in scored[:limit])]
    head = "".join(f"<th>{_e(h)}</th>" for h in ["#", "symbol", *params, *metrics])
    body = "".join(
        "<tr>" + f"<td class=\"n\">{i}</td><td>{_e(c.symbol or '—')}</td>"
        + "".join(f"<td class=\"n\">{_e(fmt_number(c.params.get(p)))}</td>" for p in params)
        + "".join(f"<td class=\"n\">{_e(_fmt_metric(m, c.metrics.get(m)))}</td>" for m in metrics)
        + "</tr>"
        for i, c in enumerate(scored[:limit], start=1)
    )
    shown = f"top {min(limit, len(scored))} of {len(scored)}" if len(scored) > limit else f"all {len(scored)}"
    return f"<p class=\"meta\">{shown} combinations by {_e(objective)}</p><table><tr>{head}</tr>{body}</table>"


def render_phase_html(
    phase: PhaseData,
    *,
    run_id: str | None,
    plots: Mapping[str, str | None],
    heatmap: Heatmap | None,
    plot_note: str | None,
) -> str:
    """The phase report; ``plots`` maps equity/heatmap/returns to PNG names (or ``None``)."""
    title = f"Phase {phase.name}" + (f" — run {run_id}" if run_id else "")
    parts = [f"<h1>{_e(title)} <span class=\"badge {_e(phase.status)}\" id=\"status\">{_e(phase.status)}</span></h1>"]
    facts = [f"kind: {_e(phase.kind or '—')}", f"objective: {_e(phase.objective or '—')}"]
    if phase.window is not None:
        facts.append(f"window {phase.window}")
    if phase.containers:
        facts.append("containers: " + ", ".join(f"{n} {_e(s)}" for s, n in sorted(phase.containers.items())))
    parts.append(f"<p class=\"meta\">{' · '.join(facts)}</p>")
    if phase.failed or phase.status == "missing":
        reason = phase.error or ("phase_summary.json is missing" if phase.status == "missing" else "")
        verb = "was cancelled" if phase.status == "cancelled" else "failed"
        errors = "".join(f"<li>{_e(e)}</li>" for e in phase.container_errors[:20])
        more = f"<li>… and {len(phase.container_errors) - 20} more</li>" if len(phase.container_errors) > 20 else ""
        parts.append(f"<div class=\"failure\" id=\"failure\"><strong>This phase {verb}.</strong> {_e(reason)}"
                     + (f"<ul>{errors}{more}</ul>" if errors else "") + "</div>")
    if plot_note:
        parts.append(f"<p class=\"note\" id=\"plot-note\">{_e(plot_note)}</p>")
    parts.append("<h2>Best parameters</h2><p class=\"meta\">by the objective in this phase, "
                 "averaged over symbols</p>")
    symbol = f"<p class=\"meta\">symbol {_e(phase.best_symbol)}</p>" if phase.best_symbol else ""
    parts.append(symbol + _kv_table(phase.best_params or {}))
    parts.append("<h2>Their metrics</h2>" + _kv_table(phase.best_metrics or {}, metric_names=True))
    parts.append("<h2>Equity and drawdown</h2>")
    parts.append(_img(plots.get("equity"), "equity curve and drawdown", "no equity curve recorded for this phase"))
    cells = heatmap.filled if heatmap else 0
    parts.append(f"<h2 id=\"heatmap\" data-heatmap-cells=\"{cells}\">Objective heatmap</h2>")
    parts.append(_img(plots.get("heatmap"), "objective heatmap", "fewer than two swept parameters: no heatmap"))
    parts.append("<h2>Trade returns</h2>")
    trade_returns, own = phase.selected_trade_returns()
    whose = "of the selection" if own else "of every combination (none recorded for the selection)"
    returns = f"<p class=\"meta\">{len(trade_returns)} closed trades {whose}</p>" if trade_returns else ""
    missing = "no closed trades recorded (trades are kept with retention_policy trade_complete)"
    parts.append(returns + _img(plots.get("returns"), "distribution of trade returns", missing))
    parts.append(search_phase_html(phase.summary) + outcome_filter_phase_html(phase.summary))
    parts.append("<h2>Ranking</h2>" + _top_table(phase.combinations, phase.objective))
    return _page(title, "\n".join(parts))


def render_run_html(run: RunData, *, stitched: str | None, windows: int, plot_note: str | None) -> str:
    """The run index: each phase with its selection and a link to its report."""
    title = f"Run {run.run_id}"
    parts = [f"<h1>{_e(title)} <span class=\"badge {_e(run.status)}\" id=\"status\">{_e(run.status)}</span></h1>"]
    parts.append(f"<p class=\"meta\">workflow type: {_e(run.workflow_type or '—')}</p>")
    if plot_note:
        parts.append(f"<p class=\"note\" id=\"plot-note\">{_e(plot_note)}</p>")
    if windows:
        parts.append(f"<h2>Out-of-sample equity, stitched across {windows} windows</h2>")
        parts.append("<p class=\"meta\">each window: the parameters its training phase selected, per symbol, "
                     "tested on the bars that follow; symbols equally weighted</p>")
        parts.append(_img(stitched, "stitched out-of-sample equity", "no out-of-sample equity recorded"))
    rows = []
    for phase in run.phases:
        value = (phase.best_metrics or {}).get(phase.objective or "")
        best = ", ".join(f"{k}={fmt_number(v)}" for k, v in (phase.best_params or {}).items()) or "—"
        link = f"<a href=\"{_e(phase.path.name)}/report.html\">{_e(phase.name)}</a>"
        rows.append(
            f"<tr><td>{link}</td><td><span class=\"badge {_e(phase.status)}\">{_e(phase.status)}</span></td>"
            f"<td>{_e(phase.objective or '—')}</td><td class=\"n\">{_e(_fmt_metric(phase.objective or '', value))}</td>"
            f"<td>{_e(best)}</td></tr>"
        )
    head = "<tr><th>phase</th><th>status</th><th>objective</th><th>value</th><th>best parameters</th></tr>"
    parts.append("<h2>Phases</h2><table>" + head + "".join(rows) + "</table>")
    parts.append(outcome_filter_run_html([(phase.name, phase.summary) for phase in run.phases]))
    return _page(title, "\n".join(parts))
