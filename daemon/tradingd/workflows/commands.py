"""``tradingd submit SPEC`` and ``tradingd run-workflow SPEC``.

``submit`` validates the spec locally (clear errors before any request, and
relative data paths made absolute against the spec file), then POSTs it to a
running daemon. The token is ``--token``, else ``$TRADINGD_API_TOKEN``, else
``$TRADINGD_API_TOKEN_FILE``, else the config's ``http.token_file``, else
``<state_dir>/api_token``.

``run-workflow`` runs one spec to the end in this process, without the server:
a progress bar on a terminal, plain lines otherwise. The first Ctrl-C lets
in-flight containers finish (``graceful_timeout``) and leaves the run
``interrupted``; the same command with ``--run-id`` resumes it. A second
Ctrl-C exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, TextIO

from tradingd.auth import state_token_path
from tradingd.client import ClientError, DaemonClient, default_url
from tradingd.config import Config, load_config
from tradingd.memory.cache import ManagedCache
from tradingd.storage.outcomes import JOURNAL_FILE, OutcomeJournal
from tradingd.workflows.container import RunServices
from tradingd.workflows.executor_kinds import create_executor
from tradingd.workflows.journal import journal_sink
from tradingd.workflows.layout import RunLayout, read_json
from tradingd.workflows.runs import MANIFEST_FORMAT, RESUMABLE, RunQueue, WorkflowRun
from tradingd.workflows.spec import SpecError, WorkflowSpec, check_safe_name, load_spec_file

__all__ = ["add_workflow_commands", "client_token", "render_progress", "run_workflow_once"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_MB = 2**20


def client_token(config: Config) -> str | None:
    """The token a client should present, found where the daemon finds it (never generated here)."""
    if token := os.environ.get("TRADINGD_API_TOKEN", "").strip():
        return token
    for candidate in (os.environ.get("TRADINGD_API_TOKEN_FILE"), config.http.token_file,
                      state_token_path(config.state_dir)):
        if not candidate:
            continue
        try:
            token = Path(candidate).read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if token:
            return token
    return None


def _config_url(config: Config) -> str:
    host = config.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind is reached over loopback
    return f"http://[{host}]:{config.http.port}" if ":" in host else f"http://{host}:{config.http.port}"


# --- progress ------------------------------------------------------------------


def _current_phase(run: WorkflowRun) -> str:
    records = run.phase_records()
    running = [r["name"] for r in records if r.get("status") == "running"]
    return running[0] if running else (records[-1]["name"] if records and run.finished else "")


def render_progress(run: WorkflowRun, *, bar: bool, width: int = 24) -> str:
    """One line: a bar (terminal) or plain words (logs) with done/total, percent and ETA."""
    p = run.progress.as_dict()
    eta = p["eta_seconds"]
    eta_text = f"ETA {eta:.0f}s" if isinstance(eta, (int, float)) and run.status == "running" else ""
    phase = _current_phase(run)
    if bar:
        filled = int(width * p["percent"] / 100)
        gauge = "#" * filled + "-" * (width - filled)
        parts = [f"[{gauge}]", f"{p['done']}/{p['total']}", f"{p['percent']:5.1f}%", eta_text, phase]
        return " ".join(part for part in parts if part)
    text = f"run {run.id}: {run.status}, {p['done']}/{p['total']} containers ({p['percent']:.0f}%)"
    if phase:
        text += f", phase {phase}"
    if eta_text:
        text += f", {eta_text}"
    return text


async def _show_progress(run: WorkflowRun, out: TextIO) -> None:
    assert run.task is not None
    tty = out.isatty()
    last_line, last_stage, last_print = "", "", 0.0
    while True:
        done, _ = await asyncio.wait({run.task}, timeout=0.2)
        line = render_progress(run, bar=tty)
        if tty:
            out.write("\r" + line.ljust(len(last_line)))
            last_line = line
        else:
            # Plain lines: at every phase or status change, else at most every 2 s; never a repeat.
            stage = f"{run.status}:{_current_phase(run)}"
            due = stage != last_stage or time.monotonic() - last_print >= 2.0
            if line != last_line and (due or done):
                out.write(line + "\n")
                last_line, last_stage, last_print = line, stage, time.monotonic()
        out.flush()
        if done:
            break
    if tty:
        out.write("\n")


# --- one-shot run -------------------------------------------------------------------


def _adopt_or_submit(queue: RunQueue, spec: WorkflowSpec, run_id: str | None) -> WorkflowRun:
    if run_id is not None:
        layout = RunLayout(queue.results_dir, check_safe_name(run_id, "run id"))
        doc = read_json(layout.manifest)
        if doc is not None and doc.get("format") == MANIFEST_FORMAT:
            run = WorkflowRun.from_manifest(doc, queue.results_dir)
            if run.spec.fingerprint() != spec.fingerprint():
                raise SpecError([f"run {run_id} was started from a different spec; choose another --run-id"])
            if run.status not in RESUMABLE:
                queue.runs[run.id] = run
                return run
            run.source = "cli"
            queue.resume(run)
            return run
    return queue.submit(spec, run_id=run_id, source="cli")


def _local_cache(config: Config) -> ManagedCache:
    settings = config.caches.entries.get("indicators")
    max_mb = settings.max_mb if settings is not None and settings.max_mb is not None else config.caches.budget_mb
    return ManagedCache("indicators", max_bytes=int(max_mb * _MB), ttl=config.caches.default_ttl)


async def run_workflow_once(config: Config, spec: WorkflowSpec, *, run_id: str | None = None,
                            out: TextIO | None = None, handle_signals: bool = False) -> WorkflowRun:
    """Run ``spec`` (or resume run ``run_id``) in this process and return the finished run."""
    stream = out if out is not None else sys.stderr
    executor = create_executor(config.executor, data_dir=config.state_dir / "executor-data")
    # The same journal a daemon on this state dir uses: SQLite WAL lets both append at once.
    journal = (
        OutcomeJournal(config.state_dir / JOURNAL_FILE, max_outcomes=config.outcomes.max_outcomes)
        if config.outcomes.enabled
        else None
    )
    services = RunServices(
        executor=executor,
        indicator_cache=_local_cache(config),
        on_trades=journal_sink(journal) if journal is not None else None,
    )
    queue = RunQueue(config.results_dir, services, max_concurrent_runs=1)
    stopping: set[asyncio.Task[None]] = set()
    try:
        run = _adopt_or_submit(queue, spec, run_id)
        if run.task is None:
            return run  # already finished earlier
        if handle_signals:
            _install_interrupt(queue, config.graceful_timeout, stopping)
        await _show_progress(run, stream)
        if stopping:
            await asyncio.wait(stopping)
        return run
    finally:
        await queue.close(0.0)
        await executor.close(5.0)
        if journal is not None:
            journal.close()


def _install_interrupt(queue: RunQueue, graceful_timeout: float, stopping: set[asyncio.Task[None]]) -> None:
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        if stopping:
            logging.shutdown()
            os._exit(128 + signal.SIGINT)
        print("\ninterrupting: letting running containers finish (Ctrl-C again to quit now)", file=sys.stderr)
        stopping.add(loop.create_task(queue.close(graceful_timeout)))

    loop.add_signal_handler(signal.SIGINT, on_sigint)


# --- command handlers -----------------------------------------------------------------


def cmd_run_workflow(args: argparse.Namespace) -> int:
    from tradingd.logs import configure_logging

    spec = load_spec_file(args.spec)  # a SpecError is reported by cli.main, like a ConfigError
    config = load_config(args.config)
    configure_logging(config.logging)
    try:
        run = asyncio.run(run_workflow_once(config, spec, run_id=args.run_id, handle_signals=True))
    except SpecError as exc:
        for line in exc.lines:
            print(f"tradingd: {line}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # an unsafe --run-id, a duplicate id
        print(f"tradingd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    summary = f"run {run.id} {run.status}: {run.progress.done}/{run.progress.total} containers"
    if run.error:
        summary += f" ({run.error})"
    print(summary)
    print(f"results: {run.layout.root}")
    if run.status == "interrupted":
        print(f"resume with: tradingd run-workflow {args.spec} --run-id {run.id}")
    return EXIT_OK if run.status == "completed" else EXIT_FAILURE


def cmd_submit(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.spec)  # a SpecError is reported by cli.main, like a ConfigError
    config = load_config(args.config, check_paths=False)
    url = args.url or (_config_url(config) if args.config is not None else default_url())
    token = args.token or client_token(config)
    path = "/runs"
    if args.run_id:
        path += "?" + urllib.parse.urlencode({"run_id": args.run_id})
    try:
        client = DaemonClient(url, token=token, timeout=args.timeout)
        answer: Any = client.request_json("POST", path, json.dumps(spec.snapshot()).encode("utf-8"))
    except ClientError as exc:
        print(f"tradingd: {exc}", file=sys.stderr)
        return exc.exit_code
    run_id = answer.get("id") if isinstance(answer, dict) else None
    print(f"submitted run {run_id} ({answer.get('status') if isinstance(answer, dict) else '?'})")
    print(f"progress: curl {client.url}/runs/{run_id}")
    return EXIT_OK


def add_workflow_commands(commands: Any) -> None:
    """Register ``submit`` and ``run-workflow`` on the CLI's subparsers."""
    submit = commands.add_parser("submit", help="submit a workflow spec to a running daemon")
    submit.add_argument("spec", type=Path, metavar="SPEC", help="workflow spec file (YAML or JSON)")
    submit.add_argument("--url", default=None,
                        help=f"daemon URL (default: from --config, else $TRADINGD_URL or {default_url()})")
    submit.add_argument("--token", default=None,
                        help="bearer token (default $TRADINGD_API_TOKEN, else the token file of the config)")
    submit.add_argument("--config", type=Path, default=None, help="daemon config (for URL and token file)")
    submit.add_argument("--run-id", default=None, help="run id (default: generated, time-sortable)")
    submit.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the daemon (default 30)")
    submit.set_defaults(handler=cmd_submit)

    run = commands.add_parser("run-workflow", help="run one workflow spec to the end, without the server")
    run.add_argument("spec", type=Path, metavar="SPEC", help="workflow spec file (YAML or JSON)")
    run.add_argument("--config", type=Path, default=None, help="config file (results dir, executor, caches)")
    run.add_argument("--run-id", default=None, help="run id; an unfinished run with this id is resumed")
    run.set_defaults(handler=cmd_run_workflow)
