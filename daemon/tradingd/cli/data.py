"""``tradingd data import`` and ``tradingd outcomes``: commands on files, daemon or not.

Both work on files only, with or without a running daemon: the store import
builds a new directory and renames it into place; the outcome journal is
SQLite in WAL mode, which readers in another process can query while the
daemon appends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from tradingd.cli.errors import EXIT_OK, EXIT_USAGE, CommandFailed
from tradingd.cli.tables import Style, render_table
from tradingd.config import load_config
from tradingd.formatting import fmt_amount, fmt_count, fmt_number, fmt_percent
from tradingd.storage.mmapstore import StoreError, StoreExistsError
from tradingd.storage.outcomes import JOURNAL_FILE, OutcomeJournal
from tradingd.trading.data import DataError
from tradingd.workflows.datastore import import_files

__all__ = ["add_data_commands"]


def cmd_data_import(args: argparse.Namespace) -> int:
    try:
        index = import_files(args.paths, args.store, overwrite=args.overwrite, timeframe=args.timeframe)
    except StoreExistsError:
        raise CommandFailed(f"data import: the store {args.store} already exists; "
                            "add --overwrite to replace it (atomically)") from None
    except (StoreError, DataError) as exc:
        raise CommandFailed(f"data import: {exc}") from None
    except FileNotFoundError as exc:
        raise CommandFailed(f"data import: {exc.filename}: no such file or directory", EXIT_USAGE) from None
    rows = sum(entry.rows for entry in index.symbols.values())
    print(f"imported {len(index.symbols)} symbols, {rows} rows into {args.store} (content {index.content_hash[:16]})")
    return EXIT_OK


def _style() -> Style:
    return Style(tty=sys.stdout.isatty() and os.environ.get("NO_COLOR") is None)


def _journal(args: argparse.Namespace) -> OutcomeJournal:
    config = load_config(args.config, check_paths=False)
    path = config.state_dir / JOURNAL_FILE
    if not path.exists():
        raise CommandFailed(f"outcomes: no journal at {path} (no trade has been recorded yet)")
    return OutcomeJournal(path, max_outcomes=config.outcomes.max_outcomes)


def _summary_tables(summary: dict[str, Any], style: Style) -> str:
    blocks = [f"{fmt_count(summary['outcomes'])} outcomes (cap {fmt_count(summary['max_outcomes'])})"]
    for key, title in (("by_strategy", "strategy"), ("by_regime", "regime")):
        rows = [
            [
                name,
                fmt_count(row["trades"], style.missing),
                fmt_percent(row["win_rate"], style.missing),
                fmt_percent(row["mean_return"], style.missing, digits=2),
                fmt_percent(row.get("best_return"), style.missing, digits=2),
                fmt_percent(row.get("worst_return"), style.missing, digits=2),
                fmt_amount(row["total_pnl"], style.missing),
            ]
            for name, row in summary[key].items()
        ]
        headers = [title, "trades", "win rate", "mean return", "best", "worst", "total pnl"]
        blocks.append(render_table(headers, rows, style=style, title=f"by {title}"))
    return "\n\n".join(blocks)


def cmd_outcomes(args: argparse.Namespace) -> int:
    journal = _journal(args)
    try:
        if args.similar is not None:
            try:
                features = [float(x) for x in args.similar.split(",")]
            except ValueError:
                raise CommandFailed(f"outcomes: --similar takes comma-separated numbers, got {args.similar!r}",
                                    EXIT_USAGE) from None
            result: Any = journal.similar(features, args.k)
            if not args.json:
                style = _style()
                rows = [
                    [
                        fmt_number(r["distance"], style.missing),
                        r["strategy"],
                        r["symbol"],
                        r["regime"],
                        r["entry_time"][:10],
                        fmt_percent(r["ret"], style.missing, digits=2),
                        fmt_amount(r.get("pnl"), style.missing),
                    ]
                    for r in result
                ]
                headers = ["distance", "strategy", "symbol", "regime", "entry", "return", "pnl"]
                print(render_table(headers, rows, style=style))
                return EXIT_OK
        else:
            result = journal.summary()
            if not args.json:
                print(_summary_tables(result, _style()))
                return EXIT_OK
        print(json.dumps(result, indent=2))
        return EXIT_OK
    finally:
        journal.close()


def add_data_commands(commands: Any) -> None:
    """Register ``data import`` and ``outcomes`` on the CLI's subparsers."""
    data = commands.add_parser("data", help="market data stores")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    imp = data_commands.add_parser("import", help="convert CSV/Parquet OHLCV into a memory-mapped store")
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="CSV/Parquet files or directories of them")
    imp.add_argument("--store", type=Path, required=True, help="the store directory to create")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing store (atomically)")
    imp.add_argument("--timeframe", default=None, help="e.g. 1d, 1h (default: inferred)")
    imp.set_defaults(handler=cmd_data_import)

    outcomes = commands.add_parser("outcomes", help="the trade-outcome journal: performance by strategy and regime")
    outcomes.add_argument("--config", type=Path, default=None, help="config naming the state dir")
    outcomes.add_argument("--similar", default=None, metavar="F1,F2,...", help="k nearest outcomes to this vector")
    outcomes.add_argument("--k", type=int, default=10, help="how many neighbours (default 10)")
    outcomes.add_argument("--json", action="store_true", help="print JSON instead of tables")
    outcomes.set_defaults(handler=cmd_outcomes)
