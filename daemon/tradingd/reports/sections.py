"""HTML sections for the honest figures: the method's out-of-sample result and the overfitting statistics.

Kept apart from the page layout (:mod:`tradingd.reports.html`) so both the
phase and the run report can lead with them. Every value from disk is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from tradingd.formatting import fmt_number, fmt_percent

__all__ = [
    "esc",
    "fmt_metric",
    "img",
    "oos_headline",
    "oos_section",
    "overfitting_headline",
    "overfitting_section",
    "walk_forward_section",
]

_PERCENT_METRICS = {"total_return", "cagr", "volatility", "max_drawdown", "win_rate", "exposure"}
_BAR_METRICS = {"max_drawdown_duration"}  # counted in bars of the data's timeframe


def esc(value: Any) -> str:
    """``value`` as escaped HTML text."""
    return html.escape(str(value), quote=True)


def fmt_metric(name: str, value: Any) -> str:
    """A metric's value with its unit: percentages for returns and drawdowns, bars for durations."""
    if name in _PERCENT_METRICS:
        return fmt_percent(value, digits=2)
    if name in _BAR_METRICS:
        text = fmt_number(value)
        return f"{text} bars" if text != "-" else text
    return fmt_number(value)


def img(name: str | None, alt: str, missing: str) -> str:
    """An ``<img>`` of a PNG next to the report, or a note saying why there is none."""
    if name is None:
        return f'<p class="note">{esc(missing)}</p>'
    return f'<img src="{esc(name)}" alt="{esc(alt)}">'


def _map(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _params(value: Any) -> str:
    return ", ".join(f"{k}={fmt_number(v)}" for k, v in _map(value).items()) or "—"


def _table(headers: list[str], rows: list[list[str]], numeric_from: int = 1, ident: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td class=\"n\">{esc(c)}</td>" if i >= numeric_from else f"<td>{esc(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    attr = f' id="{esc(ident)}"' if ident else ""
    return f"<table{attr}><tr>{head}</tr>{body}</table>"


def oos_headline(oos: Mapping[str, Any]) -> str:
    """One line: the across-symbol mean, median and share positive of the method's out-of-sample result."""
    objective = str(oos.get("objective") or "objective")
    n = oos.get("n_symbols") or 0
    share = oos.get("share_positive")
    positive = round(share * n) if isinstance(share, int | float) and isinstance(n, int) else None
    return (f"mean {objective} {fmt_metric(objective, oos.get('mean'))} over {n} symbols · "
            f"median {fmt_metric(objective, oos.get('median'))} · positive on "
            f"{fmt_percent(share, digits=0)}" + (f" ({positive} of {n})" if positive is not None else ""))


def oos_section(oos: Mapping[str, Any], strip: str | None) -> str:
    """The testing phase's lead: the method's result across symbols, per symbol, and the best cell apart."""
    objective = str(oos.get("objective") or "objective")
    parts = ["<h2 id=\"oos\">Out-of-sample result of the method</h2>",
             f"<p class=\"lead\" id=\"oos-headline\">{esc(oos_headline(oos))}</p>",
             "<p class=\"meta\">per symbol: the test result of the combination training ranked first for that "
             "symbol, exactly as handed to testing (never re-ranked by test results)</p>",
             img(strip, "out-of-sample result per symbol", "no per-symbol results to plot")]
    rows = []
    for row in oos.get("per_symbol") or []:
        row = _map(row)
        rows.append([str(row.get("symbol")), _params(row.get("params")), fmt_metric(objective, row.get("objective")),
                     *(fmt_metric(m, row.get(m)) for m in ("total_return", "max_drawdown", "n_trades"))])
    parts.append(_table(["symbol", "selected parameters", objective, "total_return", "max_drawdown", "n_trades"],
                        rows, numeric_from=2, ident="oos-per-symbol"))
    every = _map(oos.get("all_selected"))
    if every.get("n"):
        parts.append(f"<p class=\"meta\">all {esc(every['n'])} tested selections (every rank handed, not only the "
                     f"first): mean {esc(fmt_metric(objective, every.get('mean')))}, median "
                     f"{esc(fmt_metric(objective, every.get('median')))}, positive "
                     f"{esc(fmt_percent(every.get('share_positive'), digits=0))}</p>")
    best = _map(oos.get("best_cell"))
    if best:
        parts.append(f"<p class=\"meta\" id=\"best-cell\">{esc(best.get('label'))}: {esc(objective)} "
                     f"{esc(fmt_metric(objective, best.get('objective')))} on {esc(best.get('symbol'))} "
                     f"({esc(_params(best.get('params')))})</p>")
    return "\n".join(parts)


def overfitting_headline(stats: Mapping[str, Any]) -> str:
    """One line: PSR, DSR and PBO with the number of trials."""
    if stats.get("error"):
        return f"not computed: {stats['error']}"
    return (f"PSR {fmt_number(stats.get('psr'), digits=3)} · DSR {fmt_number(stats.get('dsr'), digits=3)} · "
            f"PBO {fmt_percent(stats.get('pbo'), digits=0)} · {fmt_number(stats.get('n_trials'))} trials")


def overfitting_section(stats: Mapping[str, Any], logits: str | None) -> str:
    """PSR and DSR of the selection per symbol, PBO and its logit distribution."""
    parts = ["<h2 id=\"overfitting\">Overfitting statistics</h2>",
             f"<p class=\"lead\" id=\"overfitting-headline\">{esc(overfitting_headline(stats))}</p>"]
    if stats.get("error"):
        return "\n".join(parts)
    per_symbol = len(_map(stats.get("per_symbol"))) > 1
    parts.append(
        "<p class=\"meta\">PSR: probability that the selection's true Sharpe ratio is above 0; DSR: the same "
        "against the best Sharpe ratio expected by luck from this many trials (≥ "
        f"{esc(stats.get('significant_threshold', 0.95))} is significant); PBO: share of the "
        f"{esc(stats.get('splits'))} CSCV splits of {esc(stats.get('blocks'))} blocks where the in-sample winner "
        "did no better than the median out of sample" + ("; headline figures are means over symbols" if per_symbol
                                                         else "") + ". Sharpe ratios per bar unless annualised.</p>")
    rows = []
    for symbol, row in sorted(_map(stats.get("per_symbol")).items()):
        row = _map(row)
        rows.append([symbol, fmt_number(row.get("index")), fmt_number(row.get("sharpe_annualized"), digits=3),
                     fmt_number(row.get("sharpe_per_bar"), digits=3),
                     fmt_number(row.get("expected_max_sharpe"), digits=3), fmt_number(row.get("skew"), digits=3),
                     fmt_number(row.get("kurtosis"), digits=3), fmt_number(row.get("n_obs")),
                     fmt_number(row.get("psr"), digits=3), fmt_number(row.get("dsr"), digits=3),
                     fmt_percent(row.get("pbo"), digits=0) if "pbo" in row else "—"])
    parts.append(_table(["symbol", "index", "sharpe (annual)", "sharpe / bar", "E[max] / bar", "skew", "kurtosis",
                         "bars", "PSR", "DSR", "PBO"], rows, ident="overfitting-per-symbol"))
    parts.append(img(logits, "CSCV logit distribution", "no CSCV logits recorded"))
    for note in stats.get("notes") or []:
        parts.append(f"<p class=\"note\">{esc(note)}</p>")
    return "\n".join(parts)


def walk_forward_section(oos: Mapping[str, Any], plot: str | None) -> str:
    """The stitched out-of-sample summary of a walk-forward run, pooled and per symbol, beside buy-and-hold."""
    metrics = ("total_return", "cagr", "sharpe", "max_drawdown")
    pooled = _map(oos.get("pooled"))
    parts = [f"<h2 id=\"walk-forward-oos\">Out-of-sample result, stitched across {esc(oos.get('windows'))} "
             "windows</h2>"]
    across = _map(oos.get("sharpe_across_symbols"))
    if across.get("n"):
        parts.append(f"<p class=\"lead\" id=\"wf-headline\">stitched Sharpe ratio over {esc(across['n'])} symbols: "
                     f"mean {esc(fmt_number(across.get('mean'), digits=3))} · median "
                     f"{esc(fmt_number(across.get('median'), digits=3))} · positive on "
                     f"{esc(fmt_percent(across.get('share_positive'), digits=0))}</p>")
    parts.append(f"<p class=\"meta\">{esc(oos.get('what', ''))}; buy-and-hold: bought at each window's first "
                 "test bar close, no costs</p>")
    rows = [[label, *(fmt_metric(m, _map(pooled.get(key)).get(m)) for m in metrics)]
            for label, key in (("strategy, pooled", "strategy"), ("buy and hold, pooled", "buy_and_hold"))]
    for symbol, row in sorted(_map(oos.get("per_symbol")).items()):
        row = _map(row)
        rows.append([f"{symbol}", *(fmt_metric(m, _map(row.get("strategy")).get(m)) for m in metrics)])
        rows.append([f"{symbol} buy and hold", *(fmt_metric(m, _map(row.get("buy_and_hold")).get(m))
                                                 for m in metrics)])
    parts.append(_table(["", *metrics], rows, ident="wf-summary"))
    parts.append(img(plot, "stitched out-of-sample equity", "no out-of-sample equity recorded"))
    if oos.get("missing"):
        parts.append(f"<p class=\"note\">left out (no equity curve recorded): {esc(', '.join(oos['missing']))}</p>")
    return "\n".join(parts)
