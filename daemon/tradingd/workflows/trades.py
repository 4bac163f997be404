"""What a container hands the outcome journal: its closed trades, and the journal's protocol.

A completed container that kept closed trades (``retention_policy:
trade_complete`` with ``POSITION_CLOSE`` traced) builds one
:class:`ClosedTrades`; the :class:`TradeJournal` (in the daemon:
:class:`~tradingd.workflows.outcome_sink.JournalOutbox`) turns it into journal
entries that the result file stores, and appends them to the journal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tradingd.trading.data import MarketData

__all__ = ["ClosedTrades", "TradeJournal"]


@dataclass(frozen=True)
class ClosedTrades:
    """The closed trades of one completed container, for the outcome journal.

    Each trade is a folded ``trade_complete`` record (see tracing.py) plus the
    combination's parameters. ``data`` is the bars the container ran on
    (``entry_bar``/``exit_bar`` index it), for journals that record market
    features at entry; ``backtest`` the execution settings the trades ran under.
    """

    run_id: str
    phase: str
    container_id: str
    symbol: str
    strategy: str
    trades: list[dict[str, Any]]
    data: MarketData
    backtest: Mapping[str, Any] = field(default_factory=dict)


class TradeJournal(Protocol):
    """``workflows.outcome_sink.JournalOutbox``: closed trades on their way to the outcome journal.

    Every method runs in a worker thread and must be thread-safe.
    """

    def prepare(self, batch: ClosedTrades) -> list[dict[str, Any]]:
        """One JSON-safe journal entry per trade (in order), stored in the result file."""
        ...

    def stage(self, marker: Path) -> None:
        """Durably note that the result beside ``marker`` holds trades not yet journaled."""
        ...

    def commit(self, marker: Path, batch: ClosedTrades, entries: list[dict[str, Any]]) -> None:
        """Append the trades and clear ``marker``; a failure is counted and left staged, never raised."""
        ...
