"""report.html for a phase and for a run: static, self-contained apart from its PNGs.

Every value from disk is escaped; plots are linked by relative file name so a
results directory can be copied or served as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tradingd.formatting import fmt_number, fmt_percent
from tradingd.reports.heatmap import Heatmap
from tradingd.reports.phase_data import Combination, PhaseData, RunData, higher_is_better
from tradingd.reports.research_sections import outcome_filter_phase_html, outcome_filter_run_html, search_phase_html
from tradingd.reports.sections import (
    esc,
    fmt_metric,
    img,
    oos_headline,
    oos_section,
    overfitting_headline,
    overfitting_section,
    walk_forward_section,
)

__all__ = ["overfitting_mean", "render_phase_html", "render_run_html"]

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
.lead{font-size:17px;font-weight:600;margin:4px 0}
"""

_DEFAULT_TOP = 15


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _kv_table(pairs: Mapping[str, Any], metric_names: bool = False) -> str:
    if not pairs:
        return '<p class="note">—</p>'
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td class=\"n\">{esc(fmt_metric(k, v) if metric_names else fmt_number(v))}</td></tr>"
        for k, v in pairs.items()
    )
    return f"<table>{rows}</table>"


def _top_table(combos: Sequence[Combination], objective: str | None, limit: int = _DEFAULT_TOP) -> str:
    if not combos or not objective:
        return '<p class="note">no per-combination results recorded</p>'
    scored = [c for c in combos if isinstance(c.metrics.get(objective), int | float)]
    scored.sort(key=lambda c: float(c.metrics[objective]), reverse=higher_is_better(objective))
    params = list(dict.fromkeys(k for c in scored[:limit] for k in c.params))
    metrics = [objective] + [m for m in ("total_return", "sharpe", "max_drawdown", "n_trades", "win_rate")
                             if m != objective and any(m in c.metrics for c in scored[:limit])]
    head = "".join(f"<th>{esc(h)}</th>" for h in ["#", "symbol", *params, *metrics])
    body = "".join(
        "<tr>" + f"<td class=\"n\">{i}</td><td>{esc(c.symbol or '—')}</td>"
        + "".join(f"<td class=\"n\">{esc(fmt_number(c.params.get(p)))}</td>" for p in params)
        + "".join(f"<td class=\"n\">{esc(fmt_metric(m, c.metrics.get(m)))}</td>" for m in metrics)
        + "</tr>"
        for i, c in enumerate(scored[:limit], start=1)
    )
    shown = f"top {min(limit, len(scored))} of {len(scored)}" if len(scored) > limit else f"all {len(scored)}"
    return f"<p class=\"meta\">{shown} combinations by {esc(objective)}</p><table><tr>{head}</tr>{body}</table>"


def _selection_table(phase: PhaseData) -> str:
    """What the phase selected: each symbol's top-ranked combination and its metrics."""
    cells = phase.selected_cells()
    if not cells:
        return ("<h2>Best parameters</h2>" + _kv_table(phase.best_params or {})
                + "<h2>Their metrics</h2>" + _kv_table(phase.best_metrics or {}, metric_names=True))
    objective = phase.objective or ""
    scope = "the same combination for every symbol" if phase.selection_scope == "across_symbols" \
        else "each symbol's own first-ranked combination"
    metrics = [m for m in (objective, "total_return", "max_drawdown", "max_drawdown_duration", "n_trades") if m]
    metrics = list(dict.fromkeys(metrics))
    head = "".join(f"<th>{esc(h)}</th>" for h in ["symbol", "parameters", *metrics])
    body = "".join(
        f"<tr><td>{esc(c.symbol or '—')}</td><td>{esc(', '.join(f'{k}={fmt_number(v)}' for k, v in c.params.items()))}"
        "</td>" + "".join(f"<td class=\"n\">{esc(fmt_metric(m, c.metrics.get(m)))}</td>" for m in metrics) + "</tr>"
        for c in cells
    )
    return (f"<h2 id=\"selection\">Selection</h2><p class=\"meta\">by {esc(objective)} in this phase: {scope} "
            f"(in-sample figures)</p><table><tr>{head}</tr>{body}</table>")


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
    badge = f"<span class=\"badge {esc(phase.status)}\" id=\"status\">{esc(phase.status)}</span>"
    parts = [f"<h1>{esc(title)} {badge}</h1>"]
    facts = [f"kind: {esc(phase.kind or '—')}", f"objective: {esc(phase.objective or '—')}"]
    if phase.window is not None:
        facts.append(f"window {phase.window}")
    if phase.containers:
        facts.append("containers: " + ", ".join(f"{n} {esc(s)}" for s, n in sorted(phase.containers.items())))
    parts.append(f"<p class=\"meta\">{' · '.join(facts)}</p>")
    if phase.failed or phase.status == "missing":
        reason = phase.error or ("phase_summary.json is missing" if phase.status == "missing" else "")
        verb = "was cancelled" if phase.status == "cancelled" else "failed"
        errors = "".join(f"<li>{esc(e)}</li>" for e in phase.container_errors[:20])
        more = f"<li>… and {len(phase.container_errors) - 20} more</li>" if len(phase.container_errors) > 20 else ""
        parts.append(f"<div class=\"failure\" id=\"failure\"><strong>This phase {verb}.</strong> {esc(reason)}"
                     + (f"<ul>{errors}{more}</ul>" if errors else "") + "</div>")
    if plot_note:
        parts.append(f"<p class=\"note\" id=\"plot-note\">{esc(plot_note)}</p>")
    if phase.out_of_sample:
        parts.append(oos_section(phase.out_of_sample, plots.get("oos_strip")))
    else:
        parts.append(_selection_table(phase))
    if phase.overfitting:
        parts.append(overfitting_section(phase.overfitting, plots.get("pbo_logits")))
    parts.append("<h2>Equity and drawdown</h2>")
    parts.append(img(plots.get("equity"), "equity curve and drawdown", "no equity curve recorded for this phase"))
    cells = heatmap.filled if heatmap else 0
    parts.append(f"<h2 id=\"heatmap\" data-heatmap-cells=\"{cells}\">Objective heatmap</h2>")
    if heatmap is not None and heatmap.selected:
        parts.append("<p class=\"meta\">boxed in red: the selected combinations (each symbol's first)</p>")
    parts.append(img(plots.get("heatmap"), "objective heatmap", "fewer than two swept parameters: no heatmap"))
    parts.append("<h2>Trade returns</h2>")
    trade_returns, own = phase.selected_trade_returns()
    whose = "of the selection" if own else "of every combination (none recorded for the selection)"
    returns = f"<p class=\"meta\">{len(trade_returns)} closed trades {whose}</p>" if trade_returns else ""
    missing = "no closed trades recorded (trades are kept with retention_policy trade_complete)"
    parts.append(returns + img(plots.get("returns"), "distribution of trade returns", missing))
    parts.append(search_phase_html(phase.summary) + outcome_filter_phase_html(phase.summary))
    ranking = "Ranking of single cells" if phase.out_of_sample else "Ranking"
    parts.append(f"<h2>{ranking}</h2>" + _top_table(phase.combinations, phase.objective,
                                                  phase.report_top or _DEFAULT_TOP))
    return _page(title, "\n".join(parts))


def _run_lead(run: RunData, stitched: str | None, windows: int) -> list[str]:
    """The run's headline: the method's out-of-sample result, then the training phases' overfitting figures."""
    parts: list[str] = []
    if windows and run.out_of_sample:
        parts.append(walk_forward_section(run.out_of_sample, stitched))
    elif windows:
        parts.append(f"<h2>Out-of-sample equity, stitched across {windows} windows</h2>")
        parts.append("<p class=\"meta\">each window: the parameters its training phase selected, per symbol, "
                     "tested on the bars that follow; symbols equally weighted</p>")
        parts.append(img(stitched, "stitched out-of-sample equity", "no out-of-sample equity recorded"))
    tests = [p for p in run.phases if p.out_of_sample]
    if tests and not windows:
        parts.append("<h2 id=\"oos\">Out-of-sample result of the method</h2>")
        for phase in tests:
            parts.append(f"<p class=\"lead\" id=\"oos-headline\">{esc(oos_headline(phase.out_of_sample))}</p>"
                         f"<p class=\"meta\">{esc(phase.name)}: each symbol's training selection, tested; "
                         f"<a href=\"{esc(phase.path.name)}/report.html\">per symbol</a></p>")
    sweeps = [p for p in run.phases if p.overfitting and not p.overfitting.get("error")]
    if sweeps and len(sweeps) <= 3:
        parts.append("<h2 id=\"overfitting\">Overfitting statistics</h2>")
        parts.extend(f"<p class=\"lead\">{esc(p.name)}: {esc(overfitting_headline(p.overfitting))}</p>" for p in sweeps)
    elif sweeps:
        parts.append("<h2 id=\"overfitting\">Overfitting statistics</h2>")
        parts.append(f"<p class=\"lead\">{esc(overfitting_mean(sweeps))}</p>")
    return parts


def overfitting_mean(sweeps: Sequence[PhaseData]) -> str:
    """One line for many training phases (walk-forward windows): the mean of each figure."""
    def mean(key: str) -> float | None:
        values = [v for p in sweeps if isinstance(v := p.overfitting.get(key), int | float)]
        return sum(values) / len(values) if values else None

    return (f"{len(sweeps)} training phases, means: PSR {fmt_number(mean('psr'), digits=3)} · DSR "
            f"{fmt_number(mean('dsr'), digits=3)} · PBO {fmt_percent(mean('pbo'), digits=0)}")


def _phase_row(phase: PhaseData) -> str:
    objective = phase.objective or ""
    if phase.out_of_sample:
        value = f"{fmt_metric(objective, phase.out_of_sample.get('mean'))} (mean over symbols)"
        chosen = "each symbol's training selection"
    elif phase.selection_scope == "per_symbol" and (cells := phase.selected_cells()):
        values = [v for c in cells if isinstance(v := c.metrics.get(objective), int | float)]
        mean = sum(values) / len(values) if values else None
        value = f"{fmt_metric(objective, mean)} (in sample, mean over symbols)"
        chosen = "each symbol's first-ranked combination"
    else:
        value = fmt_metric(objective, (phase.best_metrics or {}).get(objective))
        chosen = ", ".join(f"{k}={fmt_number(v)}" for k, v in (phase.best_params or {}).items()) or "—"
    luck = overfitting_headline(phase.overfitting) if phase.overfitting else "—"
    link = f"<a href=\"{esc(phase.path.name)}/report.html\">{esc(phase.name)}</a>"
    return (f"<tr><td>{link}</td><td><span class=\"badge {esc(phase.status)}\">{esc(phase.status)}</span></td>"
            f"<td>{esc(objective or '—')}</td><td class=\"n\">{esc(value)}</td><td>{esc(chosen)}</td>"
            f"<td>{esc(luck)}</td></tr>")


def render_run_html(run: RunData, *, stitched: str | None, windows: int, plot_note: str | None) -> str:
    """The run index: the out-of-sample headline, then each phase with a link to its report."""
    title = f"Run {run.run_id}"
    parts = [f"<h1>{esc(title)} <span class=\"badge {esc(run.status)}\" id=\"status\">{esc(run.status)}</span></h1>"]
    parts.append(f"<p class=\"meta\">workflow type: {esc(run.workflow_type or '—')}</p>")
    if plot_note:
        parts.append(f"<p class=\"note\" id=\"plot-note\">{esc(plot_note)}</p>")
    parts.extend(_run_lead(run, stitched, windows))
    head = ("<tr><th>phase</th><th>status</th><th>objective</th><th>value</th><th>parameters</th>"
            "<th>overfitting</th></tr>")
    parts.append("<h2>Phases</h2><p class=\"meta\">value: testing phases show the method's mean over symbols; "
                 "other phases what they selected, in sample</p><table>" + head
                 + "".join(_phase_row(p) for p in run.phases) + "</table>")
    parts.append(outcome_filter_run_html([(phase.name, phase.summary) for phase in run.phases]))
    return _page(title, "\n".join(parts))
