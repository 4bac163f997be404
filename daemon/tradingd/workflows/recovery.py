"""Start-up recovery: put the state and results directories right before any work starts.

Result files are primary data; the outcome journal, aggregates and reports are
derived from them. The supervisor calls :func:`recover` (in a worker thread)
after it locks the state dir and before it opens the journal and the run queue:

- temp files of atomic writes a crash interrupted (``.<name>.<random>.tmp``)
  are removed, in the state dir and the results tree;
- ``containers/<id>.journal-pending`` markers (trades in a result file that
  never reached the journal) are collected for the outbox to drain;
- the journal is checked (:func:`tradingd.storage.journal_check.journal_problem`).
  A damaged one — a WAL that fails its checksums, a database that fails
  ``PRAGMA integrity_check`` or does not open — is moved to
  ``<state_dir>/quarantine/``; a damaged *or empty* journal while result
  files hold trades is rebuilt from them (plus whatever rows the damaged file
  still yields), with one log line saying how many trades were recovered.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tradingd.storage.journal_check import journal_problem, quarantine_journal
from tradingd.storage.outcomes import JOURNAL_FILE, OutcomeJournal, TradeOutcome, salvage_outcomes
from tradingd.workflows.layout import JOURNAL_PENDING, read_json
from tradingd.workflows.outcome_sink import outcomes_from_result

__all__ = ["Recovery", "open_journal", "rebuild_journal", "recover_files"]

log = logging.getLogger(__name__)

# What tempfile.mkstemp(prefix=".<name>.", suffix=".tmp") makes in storage.atomic.
TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")
_BATCH = 5_000


@dataclass
class Recovery:
    """What :func:`recover_files` found."""

    temp_files_removed: int = 0
    journal_markers: list[Path] = field(default_factory=list)


def recover_files(state_dir: Path, results_dir: Path) -> Recovery:
    """Remove interrupted atomic writes' temp files; collect journal markers."""
    found = Recovery()
    for root in dict.fromkeys((state_dir, results_dir)):
        for directory, _dirs, files in os.walk(root):
            for name in files:
                path = Path(directory) / name
                if TEMP_FILE.match(name):
                    try:
                        path.unlink()
                        found.temp_files_removed += 1
                    except OSError as exc:
                        log.warning("cannot remove the leftover temp file %s: %s", path, exc)
                elif name.endswith(JOURNAL_PENDING) and Path(directory).name == "containers":
                    found.journal_markers.append(path)
    if found.temp_files_removed:
        log.info("removed %d temp file(s) left by interrupted writes", found.temp_files_removed)
    return found


def _result_files(results_dir: Path) -> Iterator[Path]:
    if not results_dir.is_dir():
        return
    yield from sorted(results_dir.glob("*/*/containers/*.json"))


def _results_hold_trades(results_dir: Path) -> bool:
    for path in _result_files(results_dir):
        try:
            if b'"journal"' not in path.read_bytes():  # cheap: most results of trade-less runs stop here
                continue
        except OSError:
            continue
        doc = read_json(path)
        if doc is not None and outcomes_from_result(doc):
            return True
    return False


def rebuild_journal(journal: OutcomeJournal, results_dir: Path,
                    salvaged: Sequence[TradeOutcome] = ()) -> tuple[int, int]:
    """Append every trade the result files hold (and ``salvaged``); returns (trades added, files read)."""
    added = journal.append_many(salvaged) if salvaged else 0
    files = 0
    batch: list[TradeOutcome] = []
    for path in _result_files(results_dir):
        doc = read_json(path)
        outcomes = outcomes_from_result(doc) if doc is not None else []
        if not outcomes:
            continue
        files += 1
        batch.extend(outcomes)
        if len(batch) >= _BATCH:
            added += journal.append_many(batch)
            batch = []
    added += journal.append_many(batch)
    return added, files


def open_journal(state_dir: Path, results_dir: Path, max_outcomes: int) -> OutcomeJournal:
    """The state dir's outcome journal, quarantined (to ``quarantine/``) and rebuilt first if it is damaged
    or lost its trades."""
    path, quarantine_dir = state_dir / JOURNAL_FILE, state_dir / "quarantine"
    problem = journal_problem(path)
    salvaged: list[TradeOutcome] = []
    moved: Path | None = None
    if problem is not None:
        moved = quarantine_journal(path, quarantine_dir)
        salvaged = _salvage(moved) if moved is not None else []
    try:
        journal = OutcomeJournal(path, max_outcomes=max_outcomes)
    except sqlite3.DatabaseError as exc:  # damage the check did not see
        problem = f"{path.name}: {exc}"
        moved = quarantine_journal(path, quarantine_dir)
        journal = OutcomeJournal(path, max_outcomes=max_outcomes)
    if problem is None:
        if journal.count() > 0 or not _results_hold_trades(results_dir):
            return journal
        problem = f"{path.name} is empty while result files hold trades"
    added, files = rebuild_journal(journal, results_dir, salvaged)
    log.warning("outcome journal rebuilt (%s%s): %d trade(s) recovered from %d result file(s)%s", problem,
                f"; the damaged files are in {moved.parent}" if moved is not None else "", added, files,
                f" and {len(salvaged)} readable row(s) of the damaged file" if salvaged else "")
    return journal


def _salvage(quarantined: Path) -> list[TradeOutcome]:
    """Rows still readable from a quarantined journal, read from a copy (the quarantine stays as found)."""
    with tempfile.TemporaryDirectory(dir=quarantined.parent) as tmp:
        for suffix in ("", "-wal"):
            source = quarantined.with_name(quarantined.name + suffix)
            if source.exists():
                shutil.copyfile(source, Path(tmp) / f"{JOURNAL_FILE}{suffix}")
        return salvage_outcomes(Path(tmp) / JOURNAL_FILE)
