"""Report sections for smart search and the outcome filter, from ``phase_summary.json``.

Each function returns an HTML fragment, or ``""`` when the phase has nothing
of the kind. The outcome filter's figures are shown filtered and unfiltered
side by side, whichever is better.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from tradingd.formatting import fmt_number, fmt_percent

__all__ = ["outcome_filter_phase_html", "outcome_filter_run_html", "search_phase_html"]

_PERCENT = {"total_return", "max_drawdown", "win_rate", "share_positive"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(name: str, value: Any) -> str:
    return fmt_percent(value, digits=2) if name in _PERCENT else fmt_number(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def search_phase_html(summary: Mapping[str, Any]) -> str:
    """How the phase's smart search went: trials, evaluations, the best found."""
    search = _dict(summary.get("search"))
    if not search:
        return ""
    best = _dict(search.get("best"))
    params = ", ".join(f"{k}={fmt_number(v)}" for k, v in _dict(best.get("params")).items()) or "—"
    facts = [
        f"{_e(search.get('method'))}, seed {_e(search.get('seed'))}",
        f"{_e(search.get('trials_done'))} of {_e(search.get('trials_total'))} trials "
        f"in batches of {_e(search.get('batch'))}",
        f"{_e(search.get('evaluated'))} parameter sets evaluated of {fmt_number(search.get('space_size'))} "
        f"in the space ({_e(search.get('invalid'))} rejected by the strategy, the rest repeats)",
    ]
    return (f"<h2 id=\"search\">Smart search</h2><p class=\"meta\">{' · '.join(facts)}</p>"
            f"<table><tr><th>best trial</th><td class=\"n\">{_e(best.get('trial', '—'))}</td></tr>"
            f"<tr><th>mean objective over symbols</th><td class=\"n\">{_e(fmt_number(best.get('value')))}</td></tr>"
            f"<tr><th>parameters</th><td>{_e(params)}</td></tr></table>"
            "<p class=\"meta\">every trial and every evaluated set: search.json</p>")


def outcome_filter_phase_html(summary: Mapping[str, Any]) -> str:
    """Filtered and unfiltered out-of-sample figures side by side, across symbols and per symbol."""
    effect = _dict(summary.get("outcome_filter"))
    if not effect:
        return ""
    settings = _dict(effect.get("settings"))
    rule = (f"k={_e(settings.get('k'))}, {_e(settings.get('statistic'))} < {_e(settings.get('threshold'))} "
            f"(at least {_e(settings.get('min_neighbours'))} past trades closed before the entry) → "
            f"{_e(settings.get('action'))}")
    head = ("<tr><th>metric</th><th>filtered mean</th><th>unfiltered mean</th><th>filtered median</th>"
            "<th>unfiltered median</th><th>filtered share &gt; 0</th><th>unfiltered share &gt; 0</th></tr>")
    rows = []
    for name, sides in _dict(effect.get("across_symbols")).items():
        f, u = _dict(_dict(sides).get("filtered")), _dict(_dict(sides).get("unfiltered"))
        cells = [_fmt(name, f.get("mean")), _fmt(name, u.get("mean")), _fmt(name, f.get("median")),
                 _fmt(name, u.get("median")), _fmt("share_positive", f.get("share_positive")),
                 _fmt("share_positive", u.get("share_positive"))]
        rows.append(f"<tr><th>{_e(name)}</th>" + "".join(f"<td class=\"n\">{_e(c)}</td>" for c in cells) + "</tr>")
    objective = str(effect.get("objective") or "")
    per_symbol = []
    for row in effect.get("by_symbol") or []:
        row = _dict(row)
        per_symbol.append(
            f"<tr><td>{_e(row.get('symbol'))}</td><td class=\"n\">{_e(row.get('entries'))}</td>"
            f"<td class=\"n\">{_e(row.get('skipped'))}</td><td class=\"n\">{_e(row.get('scaled'))}</td>"
            f"<td class=\"n\">{_e(_fmt(objective, _dict(row.get('filtered')).get(objective)))}</td>"
            f"<td class=\"n\">{_e(_fmt(objective, _dict(row.get('unfiltered')).get(objective)))}</td></tr>")
    return (f"<h2 id=\"outcome-filter\">Outcome filter: filtered vs unfiltered</h2><p class=\"meta\">{rule}; "
            f"{_e(effect.get('entries'))} entries, {_e(effect.get('skipped'))} skipped, "
            f"{_e(effect.get('scaled'))} scaled; change in mean {_e(objective)}: "
            f"{_e(fmt_number(effect.get('objective_change')))}</p>"
            f"<table>{head}{''.join(rows)}</table>"
            f"<table><tr><th>symbol</th><th>entries</th><th>skipped</th><th>scaled</th>"
            f"<th>{_e(objective)} filtered</th><th>{_e(objective)} unfiltered</th></tr>{''.join(per_symbol)}</table>")


def outcome_filter_run_html(summaries: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """One row per filtered testing phase (name, summary): the objective filtered and unfiltered."""
    rows = []
    for name, summary in summaries:
        effect = _dict(summary.get("outcome_filter"))
        if not effect:
            continue
        objective = str(effect.get("objective") or "")
        sides = _dict(_dict(effect.get("across_symbols")).get(objective))
        f, u = _dict(sides.get("filtered")), _dict(sides.get("unfiltered"))
        rows.append(f"<tr><td>{_e(name)}</td><td class=\"n\">{_e(effect.get('entries'))}</td>"
                    f"<td class=\"n\">{_e(effect.get('skipped'))}</td>"
                    f"<td class=\"n\">{_e(_fmt(objective, f.get('mean')))}</td>"
                    f"<td class=\"n\">{_e(_fmt(objective, u.get('mean')))}</td>"
                    f"<td class=\"n\">{_e(fmt_number(effect.get('objective_change')))}</td></tr>")
    if not rows:
        return ""
    head = ("<tr><th>testing phase</th><th>entries</th><th>skipped</th><th>mean objective filtered</th>"
            "<th>unfiltered</th><th>change</th></tr>")
    return f"<h2 id=\"outcome-filter\">Outcome filter, per testing phase</h2><table>{head}{''.join(rows)}</table>"
