"""The journal outbox retries what failed, never a container whose writer is still on it."""

from __future__ import annotations

from pathlib import Path

from tradingd.storage.outcomes import OutcomeJournal
from tradingd.workflows.outcome_sink import JournalOutbox


def test_drain_leaves_a_staged_container_to_its_writer(tmp_path: Path) -> None:
    outbox = JournalOutbox(OutcomeJournal(tmp_path / "outcomes.sqlite"))
    marker = tmp_path / "SYM01-0000.journal-pending"
    outbox.stage(marker)  # its result file is not written yet
    assert outbox.drain() == 0
    assert marker.exists(), "the writer still commits it; a drain must not drop the marker"
    assert outbox.stats()["pending_containers"] == 0
    # Found at start (a crash between stage and commit): the drain is what finishes it.
    outbox.adopt([marker])
    assert outbox.drain() == 0  # no completed result beside it: nothing to journal
    assert not marker.exists() and outbox.stats()["pending_containers"] == 0
