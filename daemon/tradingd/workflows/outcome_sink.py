"""Closed trades into the outcome journal, through a durable outbox.

:class:`JournalOutbox` is the daemon's
:class:`~tradingd.workflows.trades.TradeJournal`. For every completed container
that kept closed trades:

1. :meth:`~JournalOutbox.prepare` computes each trade's journal entry (its
   identity key, the market regime and feature vector at its entry bar); the
   result file stores them beside the trades, so the result files alone can
   rebuild the journal (:func:`tradingd.workflows.recovery.rebuild_journal`).
2. :meth:`~JournalOutbox.stage` creates ``containers/<id>.journal-pending``
   (durably) before the result file is written;
3. :meth:`~JournalOutbox.commit` appends the trades in one transaction and
   removes the marker. If the journal cannot be written (a full disk, a
   locked database) the failure is counted and logged and the marker stays:
   :meth:`~JournalOutbox.drain` retries every such container (periodically
   while the daemon runs, and at start for markers left by a crash) by
   reading its result file; a container still being written is not its
   business (reading a result mid-write would find nothing and drop the marker).

A trade's key is what the trade *is* — symbol, data version, strategy,
parameters, execution settings, entry and exit bar, side — so running an
identical spec again never journals a trade twice, while different data,
parameters or costs add their own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from tradingd.storage.atomic import atomic_create_bytes
from tradingd.storage.outcomes import OutcomeJournal, TradeOutcome
from tradingd.trading.regime import MarketState
from tradingd.workflows.layout import read_json
from tradingd.workflows.trades import ClosedTrades

__all__ = ["JournalOutbox", "outcomes_from_result", "trade_key"]

log = logging.getLogger(__name__)


def trade_key(batch: ClosedTrades, trade: dict[str, Any]) -> str:
    """The identity of one trade: equal for the same trade however often it is computed."""
    identity = [
        batch.symbol, batch.data.version, batch.strategy, trade["params"], dict(batch.backtest),
        int(trade["entry_bar"]), int(trade["exit_bar"]), str(trade["side"]),
    ]
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def _outcome(run_id: str, strategy: str, symbol: str, trade: dict[str, Any], params: dict[str, Any],
             entry: dict[str, Any]) -> TradeOutcome:
    features = entry.get("features") or []
    return TradeOutcome(
        run_id=run_id,
        strategy=strategy,
        symbol=symbol,
        params=params,
        side=1 if trade["side"] == "long" else -1,
        entry_time=str(trade["entry_time"]),
        exit_time=str(trade["exit_time"]),
        entry_price=float(trade["entry_price"]),
        exit_price=float(trade["exit_price"]),
        pnl=float(trade["pnl"]),
        ret=float(trade["return"]),
        regime=str(entry.get("regime")),
        features=tuple(float("nan") if v is None else float(v) for v in features),
        key=str(entry["key"]),
    )


def outcomes_from_result(doc: dict[str, Any]) -> list[TradeOutcome]:
    """The journal records a completed result file holds (none for results written without a journal)."""
    events = doc.get("events") or {}
    trades = events.get("trades") or []
    entries = doc.get("journal")
    if doc.get("status") != "completed" or not isinstance(entries, list) or len(entries) != len(trades):
        return []
    params = {int(p["index"]): dict(p["params"]) for p in doc.get("parameters") or []}
    return [
        _outcome(str(doc.get("run_id")), str(doc.get("strategy")), str(doc.get("symbol")), trade,
                 params.get(int(trade["combo"]), {}), entry)
        for trade, entry in zip(trades, entries, strict=True)
    ]


class JournalOutbox:
    """The daemon's trade journal; see the module docstring. Counters change under ``_lock``."""

    def __init__(self, journal: OutcomeJournal) -> None:
        self.journal = journal
        self.appended = 0
        self.failures = 0
        self.last_error: str | None = None
        self._pending: set[Path] = set()  # failed or found at start: what drain() retries
        self._in_flight: set[Path] = set()  # staged; its container's writer commits it
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<JournalOutbox {len(self._pending)} pending, {self.failures} failures>"

    def prepare(self, batch: ClosedTrades) -> list[dict[str, Any]]:
        state = MarketState.compute(batch.data.high, batch.data.low, batch.data.close)
        entries = []
        for trade in batch.trades:
            regime, features = state.at(int(trade["entry_bar"]))
            entries.append({"key": trade_key(batch, trade), "regime": regime,
                            "features": [float(v) if v == v else None for v in features]})
        return entries

    def stage(self, marker: Path) -> None:
        atomic_create_bytes(marker, b"", mode=0o600)
        with self._lock:
            # Not pending: drain() must neither read a result still being written nor race the commit.
            self._in_flight.add(marker)

    def commit(self, marker: Path, batch: ClosedTrades, entries: list[dict[str, Any]]) -> None:
        outcomes = [_outcome(batch.run_id, batch.strategy, batch.symbol, trade, trade["params"], entry)
                    for trade, entry in zip(batch.trades, entries, strict=True)]
        self._append(marker, outcomes)

    def _append(self, marker: Path, outcomes: list[TradeOutcome]) -> bool:
        try:
            added = self.journal.append_many(outcomes)
        except Exception as exc:  # sqlite3.Error (disk full, locked...), OSError
            with self._lock:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._in_flight.discard(marker)
                self._pending.add(marker)
            log.warning("outcome journal: %d trade(s) of %s not written (%s); kept in the outbox, will retry",
                        len(outcomes), marker.name.removesuffix(".journal-pending"), exc)
            return False
        try:
            os.unlink(marker)
        except FileNotFoundError:
            pass
        with self._lock:
            self.appended += added
            self._pending.discard(marker)
            self._in_flight.discard(marker)
        return True

    def adopt(self, markers: list[Path]) -> None:
        """Markers found on disk at start (a crash or a full disk before the last stop)."""
        with self._lock:
            self._pending.update(markers)

    def drain(self) -> int:
        """Retry every staged container; returns how many trades were journaled. Runs in a thread."""
        with self._lock:
            pending = sorted(self._pending)
        done = 0
        for marker in pending:
            result = marker.with_name(marker.name.removesuffix(".journal-pending") + ".json")
            doc = read_json(result)
            outcomes = outcomes_from_result(doc) if doc is not None else []
            if not outcomes:  # the result did not complete (or is gone): nothing to journal
                self._append(marker, [])
                continue
            if self._append(marker, outcomes):
                done += len(outcomes)
            else:
                break  # the journal still fails; the next drain tries again
        if done:
            log.info("outcome journal: %d trade(s) from the outbox journaled", done)
        return done

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"pending_containers": len(self._pending), "write_failures": self.failures,
                    "last_error": self.last_error, "appended": self.appended}
