"""The operator commands ``tradingd status``, ``tradingd runs`` and ``tradingd results``.

``status`` and ``runs`` read a running daemon's ``/stats`` and ``/runs``;
``results`` reads the results directory only, so it works with the daemon
stopped. Every section that is missing (a daemon without that feature yet, or
a field not recorded) is shown as ``—`` rather than failing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from tradingd.cli.client import DaemonClient, HttpError, default_url
from tradingd.cli.errors import EXIT_OK, EXIT_USAGE, CommandFailed
from tradingd.cli.tables import Style, render_kv, render_table
from tradingd.config import load_config
from tradingd.formatting import fmt_bytes, fmt_duration, fmt_number, fmt_percent, fmt_time
from tradingd.reports.html import overfitting_mean
from tradingd.reports.phase_data import RunData, load_run
from tradingd.reports.sections import oos_headline, overfitting_headline
from tradingd.workflows.spec import SAFE_NAME

__all__ = ["add_status_commands", "render_results", "render_runs", "render_status"]


def _map(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _section(stats: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = stats.get(name)
    if isinstance(value, Mapping) and "error" not in value:
        return dict(value)
    return None


# --- status ------------------------------------------------------------------------


def _memory_block(stats: Mapping[str, Any], style: Style) -> str:
    mem = _section(stats, "memory") or {}
    adm = _section(stats, "admission")
    loop = _section(stats, "loop") or {}
    daemon = _section(stats, "daemon") or {}
    used, limit = mem.get("used_bytes"), mem.get("limit_bytes")
    fraction = used / limit if isinstance(used, int | float) and isinstance(limit, int | float) and limit else None
    marks = _map(mem.get("marks_bytes"))
    m = style.missing
    pairs: dict[str, Any] = {
        "daemon": f"v{daemon.get('version', m)} pid {daemon.get('pid', m)} {daemon.get('state', m)}, "
                  f"up {fmt_duration(daemon.get('uptime_seconds'), m)}",
        "level": style.level(str(mem["level"])) if mem.get("level") else None,
        "used": f"{fmt_bytes(used, m)} ({fmt_percent(fraction, m)} of limit)",
        "limit": f"{fmt_bytes(limit, m)} (from {mem.get('limit_source', m)})",
        "rss": fmt_bytes(mem.get("rss_bytes"), m),
        "marks": " / ".join(f"{k} {fmt_bytes(marks.get(k), m)}" for k in ("gc", "pressure", "critical")),
        "admission": _admission(adm),
        "loop lag": fmt_duration(loop.get("lag_seconds"), m),
    }
    return render_kv(pairs, style=style, title="Memory")


def _admission(adm: Mapping[str, Any] | None) -> str | None:
    if adm is None:
        return None
    if not adm.get("paused"):
        return "open"
    return "paused" + (f" ({adm['reason']})" if adm.get("reason") else "")


def _caches_block(stats: Mapping[str, Any], style: Style) -> str:
    section = _section(stats, "caches")
    m = style.missing
    if section is None:
        return f"{style.bold('Caches')}\n{m}"
    caches = _map(section.get("caches"))
    rows = []
    for name, c in caches.items():
        c = _map(c)
        evictions = _map(c.get("evictions"))
        by_reason = ", ".join(f"{r} {n}" for r, n in evictions.items() if n) or "0"
        rows.append([name, c.get("entries"), fmt_bytes(c.get("bytes"), m), fmt_bytes(c.get("max_bytes"), m),
                     fmt_percent(c.get("hit_ratio"), m), c.get("hits"), c.get("misses"), by_reason])
    title = f"Caches ({fmt_bytes(section.get('used_bytes'), m)} of {fmt_bytes(section.get('budget_bytes'), m)} budget)"
    headers = ["cache", "entries", "bytes", "max", "hit rate", "hits", "misses", "evictions"]
    return render_table(headers, rows, style=style, title=title)


def _models_block(stats: Mapping[str, Any], style: Style) -> str:
    models = _section(stats, "models")
    if models is None:
        return f"{style.bold('Models')}\n{style.missing}"
    row = [models.get("resident"), fmt_bytes(models.get("resident_bytes"), style.missing), models.get("known"),
           models.get("leased"), models.get("demotions"), models.get("collections"), models.get("reloads")]
    headers = ["resident", "bytes", "known", "in use", "demoted", "collected", "reloads"]
    return render_table(headers, [row], style=style, title="Models")


def _cleanup_block(stats: Mapping[str, Any], style: Style, limit: int = 5) -> str:
    cleanup = _section(stats, "cleanup")
    m = style.missing
    if cleanup is None:
        return f"{style.bold('Cleanup')}\n{m}"
    recent = _list(cleanup.get("recent"))
    rows = [
        [fmt_time(a.get("time"), m), a.get("level"), a.get("action"), fmt_bytes(a.get("freed_bytes"), m),
         fmt_duration(a.get("duration_seconds"), m)]
        for a in reversed(recent[-limit:]) if isinstance(a, Mapping)
    ]
    title = f"Cleanup (freed {fmt_bytes(cleanup.get('freed_bytes_total'), m)} in total; last {limit} actions)"
    return render_table(["time", "level", "action", "freed", "took"], rows, style=style, title=title)


def _run_list(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, Mapping):
        body = body.get("runs")
    return [dict(r) for r in body if isinstance(r, Mapping)] if isinstance(body, list) else []


def _progress(run: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    progress = _map(run.get("progress")) or run
    done = progress.get("done", progress.get("containers_done"))
    total = progress.get("total", progress.get("containers_total"))
    eta = progress.get("eta_seconds", run.get("eta_seconds"))
    return done, total, eta


def render_runs(body: Any, style: Style) -> str:
    """The runs table from a ``GET /runs`` body (a list, or ``{"runs": [...]}``)."""
    m = style.missing
    rows = []
    for run in _run_list(body):
        done, total, eta = _progress(run)
        progress = m
        if isinstance(done, int) and isinstance(total, int):
            progress = f"{done}/{total} ({fmt_percent(done / total if total else 0.0, m, digits=0)})"
        rows.append([run.get("id", run.get("run_id")), run.get("workflow", run.get("name")), run.get("type"),
                     run.get("status"), run.get("strategy"), progress,
                     fmt_duration(eta, m) if run.get("status") == "running" else m,
                     fmt_time(run.get("started_at", run.get("created_at")), m)])
    headers = ["run", "workflow", "type", "status", "strategy", "progress", "eta", "started"]
    return render_table(headers, rows, style=style, title="Runs")


def render_status(stats: Mapping[str, Any], runs: Any, style: Style) -> str:
    """Every status block, separated by blank lines."""
    blocks = [_memory_block(stats, style), _caches_block(stats, style), _models_block(stats, style),
              _cleanup_block(stats, style)]
    blocks.append(render_runs(runs, style) if runs is not None else f"{style.bold('Runs')}\n{style.missing}")
    return "\n\n".join(blocks)


# --- results -----------------------------------------------------------------------


def _honest_lines(run: RunData) -> list[str]:
    """The method's out-of-sample result first (never the best single test cell), then the luck statistics."""
    lines = []
    stitched = run.out_of_sample
    if stitched:
        pooled = _map(stitched.get("pooled"))
        strategy, hold = _map(pooled.get("strategy")), _map(pooled.get("buy_and_hold"))
        across = _map(stitched.get("sharpe_across_symbols"))
        share = fmt_percent(across.get("share_positive"), digits=0)
        lines.append(f"out of sample, stitched over {stitched.get('windows')} windows: sharpe mean "
                     f"{fmt_number(across.get('mean'))} over {across.get('n')} symbols, median "
                     f"{fmt_number(across.get('median'))}, positive {share}")
        lines.append(f"  pooled: total return {fmt_percent(strategy.get('total_return'))}, sharpe "
                     f"{fmt_number(strategy.get('sharpe'))}, max drawdown {fmt_percent(strategy.get('max_drawdown'))}"
                     f" (buy and hold: {fmt_percent(hold.get('total_return'))}, "
                     f"sharpe {fmt_number(hold.get('sharpe'))})")
    elif tests := [p for p in run.phases if p.out_of_sample]:
        lines.extend(f"out of sample ({p.name}): {oos_headline(p.out_of_sample)}" for p in tests)
    sweeps = [p for p in run.phases if p.overfitting and not p.overfitting.get("error")]
    if 0 < len(sweeps) <= 3:
        lines.extend(f"overfitting ({p.name}): {overfitting_headline(p.overfitting)}" for p in sweeps)
    elif sweeps:
        lines.append(f"overfitting: {overfitting_mean(sweeps)}")
    return lines


def render_results(run_dir: Path, style: Style) -> str:
    """The method's out-of-sample result, then the selection and metrics per phase of the run in ``run_dir``."""
    run = load_run(run_dir)
    m = style.missing
    lines = [render_kv({"run": run.run_id, "status": run.status, "type": run.workflow_type, "path": str(run_dir)},
                       style=style, title="Run")]
    if honest := _honest_lines(run):
        lines.append(style.bold("Result") + "\n" + "\n".join(honest))
    rows = []
    metric_names: list[str] = []
    for phase in run.phases:
        for name in (phase.best_metrics or {}):
            if name not in metric_names:
                metric_names.append(name)
    shown = [n for n in ("total_return", "sharpe", "max_drawdown", "n_trades", "win_rate") if n in metric_names]
    for phase in run.phases:
        metrics = phase.best_metrics or {}
        objective_value = fmt_number(metrics.get(phase.objective or ""), m)
        params = ", ".join(f"{k}={fmt_number(v)}" for k, v in (phase.best_params or {}).items()) or m
        if phase.out_of_sample:  # the method's mean, not the best single cell
            oos = phase.out_of_sample
            objective_value = f"{fmt_number(oos.get('mean'), m)} (mean of {oos.get('n_symbols')})"
            params, metrics = "training's selection, as handed", {}
        luck = m
        if phase.overfitting and not phase.overfitting.get("error"):
            o = phase.overfitting
            luck = f"{fmt_number(o.get('dsr'), m, digits=2)} / {fmt_percent(o.get('pbo'), m, digits=0)}"
        rows.append([phase.name, phase.status, phase.objective, objective_value, params,
                     *[fmt_number(metrics.get(n), m) for n in shown], luck])
    headers = ["phase", "status", "objective", "value", "best parameters", *shown, "DSR / PBO"]
    lines.append(render_table(headers, rows, style=style, title="Phases", empty="(no phases written yet)"))
    problems = []
    if run.manifest.get("error"):
        problems.append(f"run: {run.manifest['error']}")
    for phase in run.phases:
        if phase.failed:
            problems.extend(f"{phase.name}: {phase.status}: {e}" for e in ([phase.error] if phase.error else [])
                            + phase.container_errors[:5])
    if problems:
        lines.append("\n".join(problems))
    return "\n\n".join(lines)


# --- command handlers --------------------------------------------------------------


def _style(stream: TextIO) -> Style:
    return Style(tty=stream.isatty() and os.environ.get("NO_COLOR") is None)


def _client(args: argparse.Namespace) -> DaemonClient:
    token = args.token or os.environ.get("TRADINGD_API_TOKEN") or None
    return DaemonClient(args.url or default_url(), token=token, timeout=args.timeout)


def _runs_or_none(client: DaemonClient) -> Any:
    try:
        return client.get_json("/runs")
    except HttpError as exc:
        if exc.status == 404:  # a daemon without the runs API: show "—", not an error
            return None
        raise


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    stats = client.get_json("/stats")
    runs = _runs_or_none(client)
    print(render_status(stats, runs, _style(sys.stdout)))
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        runs = client.get_json("/runs")
    except HttpError as exc:
        if exc.status == 404:
            raise CommandFailed(f"the daemon at {client.url} has no runs API") from None
        raise
    print(render_runs(runs, _style(sys.stdout)))
    return EXIT_OK


def cmd_results(args: argparse.Namespace) -> int:
    if not SAFE_NAME.fullmatch(args.run_id):
        raise CommandFailed(f"invalid run id {args.run_id!r} (must match {SAFE_NAME.pattern})", EXIT_USAGE)
    if args.results_dir is not None:
        results_dir = Path(args.results_dir)
    else:
        results_dir = load_config(args.config, check_paths=False).results_dir
    run_dir = results_dir / args.run_id
    if not run_dir.is_dir():
        raise CommandFailed(f"no results for run {args.run_id} under {results_dir}")
    print(render_results(run_dir, _style(sys.stdout)))
    return EXIT_OK


def add_status_commands(commands: Any) -> None:
    """Register ``status``, ``runs`` and ``results`` on the CLI's subparsers."""

    def daemon_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", default=None, help=f"daemon URL (default $TRADINGD_URL or {default_url()})")
        parser.add_argument("--token", default=None, help="bearer token (default $TRADINGD_API_TOKEN)")
        parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon (default 5)")

    status = commands.add_parser("status", help="memory, level, caches, models and runs of a running daemon")
    daemon_options(status)
    status.set_defaults(handler=cmd_status)

    runs = commands.add_parser("runs", help="list the runs of a running daemon")
    daemon_options(runs)
    runs.set_defaults(handler=cmd_runs)

    results = commands.add_parser("results", help="best parameters and metrics per phase of a run (from disk)")
    results.add_argument("run_id", metavar="RUN_ID")
    where = results.add_mutually_exclusive_group()
    where.add_argument("--results-dir", type=Path, default=None, help="the results directory")
    where.add_argument("--config", type=Path, default=None, help="take the results directory from this config")
    results.set_defaults(handler=cmd_results)
