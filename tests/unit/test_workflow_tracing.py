"""Event tracing: events from trades, the three retention policies, merging, the stream file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tradingd.workflows.spec import EVENT_TYPES
from tradingd.workflows.tracing import (
    EventBudgets,
    EventStream,
    EventTracer,
    empty_summary,
    encode_events,
    merge_summaries,
    trade_events,
)


def trade(entry: int, exit_: int, *, side: str = "long", is_open: bool = False) -> dict[str, Any]:
    return {
        "entry_bar": entry, "exit_bar": exit_, "entry_time": f"t{entry}", "exit_time": f"t{exit_}",
        "side": side, "size": 1.0, "entry_price": 100.0 + entry, "exit_price": 100.0 + exit_,
        "return": 0.01, "pnl": 10.0, "is_open": is_open,
    }


TRADES = [trade(2, 5), trade(7, 9, side="short"), trade(11, 12, is_open=True)]


def test_events_follow_trades_in_bar_order() -> None:
    events = list(trade_events(4, TRADES, types=EVENT_TYPES))
    kinds = [(e["type"], e["bar"]) for e in events]
    assert kinds == [
        ("POSITION_OPEN", 2), ("FILL", 2), ("FILL", 5), ("POSITION_CLOSE", 5),
        ("POSITION_OPEN", 7), ("FILL", 7), ("FILL", 9), ("POSITION_CLOSE", 9),
        ("POSITION_OPEN", 11), ("FILL", 11),  # still open: no exit
    ]
    assert {e["combo"] for e in events} == {4}
    assert [e["action"] for e in events if e["type"] == "FILL"] == ["buy", "sell", "sell", "buy", "buy"]


def test_only_requested_types_and_portfolio_updates_interleave() -> None:
    equity = np.linspace(100.0, 113.0, 14)
    times = [f"t{i}" for i in range(14)]
    events = list(trade_events(0, TRADES[:1], types=["POSITION_CLOSE", "PORTFOLIO_UPDATE"],
                               equity=equity, times=times))
    assert [e["type"] for e in events].count("PORTFOLIO_UPDATE") == 14
    close_at = next(i for i, e in enumerate(events) if e["type"] == "POSITION_CLOSE")
    assert events[close_at + 1] == {"type": "PORTFOLIO_UPDATE", "combo": 0, "bar": 5, "time": "t5",
                                    "equity": 105.0}
    assert [e["bar"] for e in events] == sorted(e["bar"] for e in events)


def record_all(policy: str, window: int = 3) -> EventTracer:
    tracer = EventTracer(EVENT_TYPES, policy, window)  # type: ignore[arg-type]
    for event in trade_events(1, TRADES, types=EVENT_TYPES):
        tracer.record(event)
    return tracer


def test_trade_complete_folds_closed_trades_and_keeps_open_ones() -> None:
    summary = record_all("trade_complete").summary()
    assert summary["counts"] == {"FILL": 5, "POSITION_OPEN": 3, "POSITION_CLOSE": 2, "PORTFOLIO_UPDATE": 0}
    assert [(t["entry_bar"], t["exit_bar"], t["events"]) for t in summary["trades"]] == [(2, 5, 4), (7, 9, 4)]
    assert [e["type"] for e in summary["open_events"]] == ["POSITION_OPEN", "FILL"]
    assert all(e["trade"] == "1:2" for e in summary["open_events"])


def test_sliding_window_keeps_the_last_n() -> None:
    summary = record_all("sliding_window", window=3).summary()
    assert [(e["type"], e["bar"]) for e in summary["events"]] == [
        ("POSITION_CLOSE", 9), ("POSITION_OPEN", 11), ("FILL", 11)]
    assert sum(summary["counts"].values()) == 10


def test_minimal_keeps_counters_only() -> None:
    summary = record_all("minimal").summary()
    assert set(summary) == {"policy", "types", "counts"}
    assert sum(summary["counts"].values()) == 10


@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from(["trade_complete", "sliding_window", "minimal"]),
    window=st.integers(1, 8),
    lengths=st.lists(st.integers(0, 4), min_size=1, max_size=5),
)
def test_merging_batches_equals_tracing_in_one_go(policy: str, window: int, lengths: list[int]) -> None:
    """Containers trace batch by batch; the merged summary must not depend on the cut."""
    batches = []
    for combo, n in enumerate(lengths):
        trades = [trade(3 * i, 3 * i + 1, is_open=(i == n - 1 and combo % 2 == 0)) for i in range(n)]
        batches.append(list(trade_events(combo, trades, types=EVENT_TYPES)))
    whole = EventTracer(EVENT_TYPES, policy, window)  # type: ignore[arg-type]
    merged = empty_summary(EVENT_TYPES, policy, window)  # type: ignore[arg-type]
    for events in batches:
        part = EventTracer(EVENT_TYPES, policy, window)  # type: ignore[arg-type]
        for event in events:
            whole.record(event)
            part.record(event)
        merged = merge_summaries(merged, part.summary())
    if policy == "trade_complete":
        # Open events are grouped per batch either way; compare as sets of ids.
        expected = whole.summary()
        assert merged["trades"] == expected["trades"] and merged["counts"] == expected["counts"]
        assert sorted(map(json.dumps, merged["open_events"])) == sorted(map(json.dumps, expected["open_events"]))
    else:
        assert merged == whole.summary()


def test_event_stream_appears_under_its_final_name_only_when_closed(tmp_path: Path) -> None:
    final = tmp_path / "events" / "c-0000.jsonl"
    stream = EventStream(final)
    events = list(trade_events(0, TRADES, types=EVENT_TYPES))
    stream.write(encode_events(events[:4]))
    stream.write(encode_events(events[4:]))
    assert not final.exists() and stream.partial.exists()
    stream.close()
    stream.close()  # idempotent
    assert not stream.partial.exists()
    lines = final.read_text().splitlines()
    assert [json.loads(line) for line in lines] == events
    assert stream.bytes_written == final.stat().st_size


def test_event_stream_truncates_a_leftover_part_file(tmp_path: Path) -> None:
    final = tmp_path / "c.jsonl"
    final.with_name("c.jsonl.part").write_bytes(b"torn half line from a crash")
    stream = EventStream(final)
    stream.write(b'{"a":1}\n')
    stream.close()
    assert final.read_bytes() == b'{"a":1}\n'


def test_event_streams_of_a_phase_share_one_byte_cap(tmp_path: Path) -> None:
    events = tmp_path / "run" / "train" / "events"
    events.mkdir(parents=True)
    (events / "earlier.jsonl").write_bytes(b"x" * 40)  # a resumed phase: what is there counts
    budgets = EventBudgets(100)
    first = EventStream(events / "c1.jsonl", budgets.for_phase(events))
    second = EventStream(events / "c2.jsonl", budgets.for_phase(events))
    first.write(b"a" * 30)
    second.write(b"b" * 20)
    second.write(b"c" * 20)  # 40 + 30 + 20 + 20 > 100: refused, and the stream stops here
    first.write(b"d" * 5)
    second.write(b"e" * 1)  # fits, but a stopped stream stays a prefix of its events
    first.close()
    second.close()
    assert (events / "c1.jsonl").read_bytes() == b"a" * 30 + b"d" * 5
    assert (events / "c2.jsonl").read_bytes() == b"b" * 20
    assert (first.dropped_bytes, second.dropped_bytes) == (0, 21)
    other = tmp_path / "run" / "test" / "events"
    assert budgets.for_phase(other).used == 0 and budgets.for_phase(events).used == 95
