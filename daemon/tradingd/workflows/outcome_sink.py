"""The sink that turns containers' closed trades into outcome-journal records.

``journal_sink(journal)`` is a :data:`~tradingd.workflows.container.TradeSink`:
pass it as ``on_trades`` and every completed container that kept trades
(``retention_policy: trade_complete`` with ``POSITION_CLOSE`` traced) appends
them, with the market regime and feature vector at each trade's entry bar.
Containers call it from a worker thread; the journal is thread-safe.
"""

from __future__ import annotations

from tradingd.storage.outcomes import OutcomeJournal, TradeOutcome
from tradingd.trading.regime import MarketState
from tradingd.workflows.container import ClosedTrades, TradeSink

__all__ = ["journal_sink", "trade_outcomes"]


def trade_outcomes(batch: ClosedTrades) -> list[TradeOutcome]:
    """The journal records for one container's closed trades."""
    state = MarketState.compute(batch.data.high, batch.data.low, batch.data.close)
    outcomes = []
    for trade in batch.trades:
        regime, features = state.at(int(trade["entry_bar"]))
        outcomes.append(TradeOutcome(
            run_id=batch.run_id,
            strategy=batch.strategy,
            symbol=batch.symbol,
            params=trade["params"],
            side=1 if trade["side"] == "long" else -1,
            entry_time=trade["entry_time"],
            exit_time=trade["exit_time"],
            entry_price=float(trade["entry_price"]),
            exit_price=float(trade["exit_price"]),
            pnl=float(trade["pnl"]),
            ret=float(trade["return"]),
            regime=regime,
            features=features,
            key=f"{batch.run_id}/{batch.phase}/{batch.container_id}/{trade['combo']}/{trade['entry_bar']}",
        ))
    return outcomes


def journal_sink(journal: OutcomeJournal) -> TradeSink:
    """A trade sink appending to ``journal`` in one transaction per container."""

    def sink(batch: ClosedTrades) -> None:
        journal.append_many(trade_outcomes(batch))

    return sink
