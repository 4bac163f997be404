"""The ``tradingd`` command line: the parser, ``main``, and the one map from failures to exit codes.

Sub-commands live beside it: ``run`` and ``check-config`` here, ``status``,
``runs`` and ``results`` in :mod:`~tradingd.cli.status`, ``submit`` and
``run-workflow`` in :mod:`~tradingd.cli.workflows`, ``data import`` and
``outcomes`` in :mod:`~tradingd.cli.data`. Exit codes: see
:mod:`tradingd.cli.errors`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tradingd import __version__
from tradingd.auth import TokenError
from tradingd.cli.client import ClientError
from tradingd.cli.data import add_data_commands
from tradingd.cli.errors import EXIT_OK, EXIT_USAGE, CommandFailed
from tradingd.cli.signals import StopSignals, run_to_exit
from tradingd.cli.status import add_status_commands
from tradingd.cli.workflows import add_workflow_commands
from tradingd.config import Config, ConfigError, load_config
from tradingd.logs import configure_logging
from tradingd.storage.codec import SecretError
from tradingd.supervisor import StateDirLocked
from tradingd.supervisor import main as supervisor_main
from tradingd.workflows.service import load_startup_specs
from tradingd.workflows.spec import SpecError

__all__ = ["build_parser", "main"]

Command = Callable[[argparse.Namespace], int]


async def _serve(config: Config, signals: StopSignals) -> int:
    signals.install()
    try:
        await supervisor_main(config, stop=signals.stop, force=signals.force)
    except OSError as exc:  # typically the port is taken: say which, without a traceback
        raise CommandFailed(f"cannot start: {exc}") from None
    return signals.exit_code() or EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config.logging)
    signals = StopSignals()
    return run_to_exit(_serve(config, signals), signals)


def cmd_check_config(args: argparse.Namespace) -> int:
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

    add_status_commands(commands)  # status, runs, results
    add_workflow_commands(commands)  # submit, run-workflow
    add_data_commands(commands)  # data import, outcomes
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``tradingd`` command; every failure becomes its message on stderr and an exit code."""
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    try:
        return handler(args)
    except (ConfigError, SpecError) as exc:  # one line per problem, naming file and key path
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except (StateDirLocked, TokenError, SecretError) as exc:  # one line naming the file and the problem
        print(f"tradingd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ClientError, CommandFailed) as exc:
        print(f"tradingd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
