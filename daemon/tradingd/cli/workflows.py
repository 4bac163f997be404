"""``tradingd submit SPEC`` and ``tradingd run-workflow SPEC``.

``submit`` validates the spec locally (clear errors before any request, and
relative data paths made absolute against the spec file), then POSTs it to a
running daemon (token: see :func:`~tradingd.cli.client.client_token`).

``run-workflow`` runs one spec to the end through the same
:class:`~tradingd.supervisor.Supervisor` the daemon uses, under the state-dir
lock, without HTTP: a progress bar on a terminal, plain lines otherwise. The
first Ctrl-C lets in-flight containers finish (``graceful_timeout``) and leaves
the run ``interrupted``; the same command with ``--run-id`` resumes it. A
second Ctrl-C skips the waits. When a daemon already holds the state dir, the
spec is submitted to that daemon instead and its progress followed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from tradingd.cli.client import DaemonClient, HttpError, client_token, config_url, default_url
from tradingd.cli.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandFailed
from tradingd.cli.progress import WRITING_REPORTS, ProgressPrinter, RunView, render_progress
from tradingd.cli.signals import StopSignals, run_to_exit
from tradingd.config import Config, load_config
from tradingd.logs import configure_logging
from tradingd.periodic import poll
from tradingd.supervisor import StateDirLocked, Supervisor
from tradingd.tasks import wait_any
from tradingd.workflows.runs import DuplicateRun, WorkflowRun
from tradingd.workflows.spec import WorkflowSpec, load_spec_file

__all__ = ["ProgressPrinter", "add_workflow_commands", "follow_run", "render_progress", "run_workflow_once"]

log = logging.getLogger(__name__)

ACTIVE = frozenset({"queued", "running"})


# --- progress ------------------------------------------------------------------


async def follow_run(view: Callable[[], Awaitable[RunView]], out: TextIO, *, until: asyncio.Event,
                     interval: float) -> RunView:
    """Show the run's progress until it is no longer queued or running (or ``until`` is set); its last view."""
    printer = ProgressPrinter(out)
    async for _ in poll(until, interval, first_delay=0):
        run = await view()
        if run["status"] not in ACTIVE and run.get("stage") != WRITING_REPORTS:
            break
        printer.show(run)
    run = await view()
    printer.show(run, final=True)
    printer.close()
    return run


# --- run-workflow: here, or in the daemon that holds the state dir --------------------


async def run_workflow_once(config: Config, spec: WorkflowSpec, *, run_id: str | None = None,
                            out: TextIO | None = None, stop: asyncio.Event | None = None,
                            force: asyncio.Event | None = None) -> WorkflowRun:
    """Run ``spec`` (or resume run ``run_id``) through a supervisor without HTTP; the run as it ended.

    Raises StateDirLocked when a daemon holds the state dir.
    """
    stream = out if out is not None else sys.stderr
    async with Supervisor(config, serve=False, force=force) as supervisor:
        run = supervisor.runs.submit_or_resume(spec, run_id=run_id, source="cli")
        if run.task is not None:
            ended = asyncio.Event()
            run.task.add_done_callback(lambda _: ended.set())

            async def view() -> RunView:
                described = run.describe(detail=True)
                if run.status == "completed" and run.task is not None and not run.task.done():
                    described["stage"] = WRITING_REPORTS  # finished computing; the report is being drawn
                return described

            supervisor.spawn(follow_run(view, stream, until=ended, interval=0.2), name="progress")
            await wait_any(ended, supervisor.stop_event, *([stop] if stop is not None else []))
    return run


def _submit(client: DaemonClient, spec: WorkflowSpec, run_id: str | None) -> Any:
    path = "/runs" + ("?" + urllib.parse.urlencode({"run_id": run_id}) if run_id else "")
    return client.request_json("POST", path, json.dumps(spec.snapshot()).encode("utf-8"))


async def _run_in_daemon(config: Config, spec: WorkflowSpec, run_id: str | None, stop: asyncio.Event) -> RunView:
    """Submit ``spec`` to the daemon of ``config`` (or find run ``run_id`` there) and follow it."""
    client = DaemonClient(config_url(config), token=client_token(config), timeout=30.0)
    try:
        answer = await asyncio.to_thread(_submit, client, spec, run_id)
    except HttpError as exc:
        if exc.status != 409 or run_id is None:
            raise
        print(f"tradingd: the daemon already has run {run_id}; following it", file=sys.stderr)
        answer = {"id": run_id}
    path = f"/runs/{answer['id']}"

    async def view() -> RunView:
        found: RunView = await asyncio.to_thread(client.get_json, path)
        return found

    run = await follow_run(view, sys.stderr, until=stop, interval=1.0)
    if run["status"] in ACTIVE:
        print(f"stopped following; run {run['id']} goes on in the daemon ({client.url}{path})", file=sys.stderr)
    return run


async def _run_workflow(config: Config, spec: WorkflowSpec, args: argparse.Namespace, signals: StopSignals) -> int:
    signals.install()
    run: RunView
    try:
        run = (await run_workflow_once(config, spec, run_id=args.run_id, stop=signals.stop,
                                       force=signals.force)).describe(detail=True)
    except (ValueError, DuplicateRun) as exc:  # an unsafe --run-id; an id taken by something else
        raise CommandFailed(str(exc), EXIT_USAGE) from None
    except StateDirLocked as exc:
        print(f"tradingd: a daemon (pid {exc.holder}) holds the state dir {config.state_dir}; "
              f"submitting the run to it at {config_url(config)}", file=sys.stderr)
        run = await _run_in_daemon(config, spec, args.run_id, signals.stop)
    progress = run["progress"]
    summary = f"run {run['id']} {run['status']}: {progress['done']}/{progress['total']} containers"
    print(summary + (f" ({run['error']})" if run.get("error") else ""))
    if run.get("results_dir"):
        print(f"results: {run['results_dir']}")
    if run["status"] == "interrupted":
        print(f"resume with: tradingd run-workflow {args.spec} --run-id {run['id']}")
    code = signals.exit_code()
    if code is not None:
        return code
    return EXIT_OK if run["status"] == "completed" else EXIT_FAILURE


# --- command handlers -----------------------------------------------------------------


def cmd_run_workflow(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.spec)  # a SpecError is reported by cli.main, like a ConfigError
    config = load_config(args.config)
    configure_logging(config.logging)
    signals = StopSignals()
    return run_to_exit(_run_workflow(config, spec, args, signals), signals)


def cmd_submit(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.spec)  # a SpecError is reported by cli.main, like a ConfigError
    config = load_config(args.config, check_paths=False)
    url = args.url or (config_url(config) if args.config is not None else default_url())
    client = DaemonClient(url, token=args.token or client_token(config), timeout=args.timeout)
    answer = _submit(client, spec, args.run_id)
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

    run = commands.add_parser("run-workflow", help="run one workflow spec to the end, without the HTTP server")
    run.add_argument("spec", type=Path, metavar="SPEC", help="workflow spec file (YAML or JSON)")
    run.add_argument("--config", type=Path, default=None, help="config file (state and results dirs, executor)")
    run.add_argument("--run-id", default=None, help="run id; an unfinished run with this id is resumed")
    run.set_defaults(handler=cmd_run_workflow)
