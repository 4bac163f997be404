"""The ``tradingd`` command line.

Exit codes: 0 success, 1 runtime failure, 2 bad input (config, arguments,
state dir in use), 128+N when stopped by a second signal N.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tradingd import __version__
from tradingd.config import ConfigError, load_config
from tradingd.storage.commands import add_storage_commands
from tradingd.views import add_operator_commands
from tradingd.workflows.commands import add_workflow_commands
from tradingd.workflows.spec import SpecError

__all__ = ["main"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Command = Callable[[argparse.Namespace], int]


def cmd_run(args: argparse.Namespace) -> int:
    from tradingd.auth import TokenError
    from tradingd.logs import configure_logging
    from tradingd.supervisor import StateDirLocked
    from tradingd.supervisor import main as supervisor_main

    config = load_config(args.config)
    configure_logging(config.logging)
    try:
        return asyncio.run(supervisor_main(config, handle_signals=True))
    except (StateDirLocked, TokenError) as exc:
        print(f"tradingd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        # Typically the port is taken: say which, without a traceback.
        print(f"tradingd: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_check_config(args: argparse.Namespace) -> int:
    from tradingd.workflows.service import load_startup_specs

    config = load_config(args.path)
    load_startup_specs(config)  # a bad startup workflow is a config error
    where = f"state {config.state_dir}, results {config.results_dir}"
    print(f"{config.source}: ok ({where}, http {config.http.host}:{config.http.port})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tradingd", description="Trading-research daemon with bounded memory.")
    parser.add_argument("--version", action="version", version=f"tradingd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon (the embedded default config without --config)")
    run.add_argument("--config", type=Path, default=None, help="config file (YAML)")
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check-config", help="validate a config file without starting")
    check.add_argument("path", type=Path, nargs="?", default=None, help="config file (default: the embedded default)")
    check.set_defaults(handler=cmd_check_config)

    add_operator_commands(commands)  # status, runs, results
    add_workflow_commands(commands)  # submit, run-workflow
    add_storage_commands(commands)  # data import, outcomes
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Command = args.handler
    try:
        return handler(args)
    except (ConfigError, SpecError) as exc:  # one line per problem, naming file and key path
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
