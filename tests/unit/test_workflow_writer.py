"""The one writer: writes land in order, a cancelled waiter never cancels its write, close drains."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from tradingd.workflows.writer import DurableWriter, WriterClosed


async def test_writes_land_in_order_and_survive_a_cancelled_waiter(tmp_path: Path) -> None:
    writer = DurableWriter()
    gate = threading.Event()
    order: list[str] = []
    blocked = asyncio.ensure_future(writer.call(lambda: (gate.wait(10), order.append("first"))))
    target = tmp_path / "result.json"
    waiter = asyncio.ensure_future(writer.write_json(target, {"status": "cancelled"}))
    await asyncio.sleep(0)
    waiter.cancel()  # e.g. a second cancellation of the container's task
    with pytest.raises(asyncio.CancelledError):
        await waiter
    writer.post(order.append, "third", what="a note")
    gate.set()
    await blocked
    assert await writer.close(10.0) is True
    # The abandoned write still happened, after the one queued before it and before the one after.
    assert json.loads(target.read_text()) == {"status": "cancelled"}
    assert order == ["first", "third"]
    assert writer.stats()["written"] == 3 and writer.stats()["queued"] == 0
    with pytest.raises(WriterClosed):
        writer.send(order.append, "late")


async def test_a_failed_write_raises_to_its_waiter_and_is_counted(tmp_path: Path) -> None:
    writer = DurableWriter()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        await writer.write_json(tmp_path / "file" / "below-a-file.json", {})
    assert writer.stats()["failed"] == 1 and "File exists" in str(writer.stats()["last_error"])
    await writer.close(5.0)
