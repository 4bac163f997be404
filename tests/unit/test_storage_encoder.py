"""The document encoder: a real helper process writes the same file atomic_write_json would, errors included."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
from tradingd.storage import encoder as encoder_module
from tradingd.storage.atomic import atomic_write_json
from tradingd.storage.encoder import DocumentEncoder
from tradingd.workflows.writer import DurableWriter


def _document() -> dict[str, object]:
    curve = np.cumprod(np.full(3000, 1.0001))
    return {"format": "tradingd-container/1", "metrics": [{"total_return": 0.1, "trades": 3}],
            "equity": {"timestamps": list(range(3000)), "curves": {"10_20": curve, "5_30": curve[::-1].copy()}}}


def test_the_helper_writes_what_atomic_write_json_writes(tmp_path: Path) -> None:
    encoder = DocumentEncoder()
    try:
        encoder.write_json(tmp_path / "by_helper.json", _document(), mode=0o600)
        stats = encoder.stats()
        atomic_write_json(tmp_path / "in_thread.json", _document(), mode=0o600)
        assert (tmp_path / "by_helper.json").read_bytes() == (tmp_path / "in_thread.json").read_bytes()
        assert stat.S_IMODE((tmp_path / "by_helper.json").stat().st_mode) == 0o600
        assert stats == {"documents": 1, "in_a_thread": 0, "running": True}
        assert json.loads((tmp_path / "by_helper.json").read_text())["equity"]["curves"]["10_20"][0] == 1.0001
    finally:
        encoder.close()
    assert encoder.stats()["running"] is False


def test_errors_come_back_as_raised(tmp_path: Path) -> None:
    encoder = DocumentEncoder()
    try:
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "result.json"  # a parent that is a file: an OSError, like a full disk
        with pytest.raises(OSError) as in_thread:
            atomic_write_json(target, {"a": 1})
        with pytest.raises(OSError) as by_helper:
            encoder.write_json(target, {"a": 1})
        assert type(by_helper.value) is type(in_thread.value)
        assert (by_helper.value.errno, by_helper.value.filename) == (in_thread.value.errno, in_thread.value.filename)
        with pytest.raises(ValueError):  # NaN is not JSON
            encoder.write_json(tmp_path / "nan.json", {"a": float("nan")})
        assert not (tmp_path / "nan.json").exists() and not list(tmp_path.glob(".nan.json.*"))
        encoder.write_json(tmp_path / "after.json", {"a": 2})  # the same helper goes on
        assert json.loads((tmp_path / "after.json").read_text()) == {"a": 2}
        assert encoder.stats() == {"documents": 1, "in_a_thread": 0, "running": True}
    finally:
        encoder.close()


def test_a_helper_killed_between_documents_is_replaced(tmp_path: Path) -> None:
    encoder = DocumentEncoder()
    try:
        encoder.write_json(tmp_path / "one.json", {"n": 1})
        first = _helper_pid(encoder)
        os.kill(first, signal.SIGKILL)
        os.waitpid(first, 0)
        encoder.write_json(tmp_path / "two.json", {"n": 2})
        assert _helper_pid(encoder) != first
        assert json.loads((tmp_path / "two.json").read_text()) == {"n": 2}
        assert encoder.stats() == {"documents": 2, "in_a_thread": 0, "running": True}
    finally:
        encoder.close()


def test_the_helper_is_replaced_after_its_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_module, "MAX_DOCUMENTS_PER_HELPER", 2)
    encoder = DocumentEncoder()
    try:
        pids = []
        for number in range(3):
            encoder.write_json(tmp_path / f"{number}.json", {"n": number})
            pids.append(_helper_pid(encoder))
        assert pids[0] == pids[1] != pids[2]
        assert encoder.stats() == {"documents": 3, "in_a_thread": 0, "running": True}
    finally:
        encoder.close()


async def test_the_writer_hands_documents_to_its_encoder_and_stops_it(tmp_path: Path) -> None:
    writer = DurableWriter(encoder=DocumentEncoder())
    target = tmp_path / "result.json"
    await writer.call(writer.write_document, target, _document())
    assert writer.stats()["encoder"] == {"documents": 1, "in_a_thread": 0, "running": True}
    assert await writer.close(30.0) is True
    assert writer.stats()["encoder"]["running"] is False
    assert json.loads(target.read_text())["metrics"] == [{"total_return": 0.1, "trades": 3}]


def _helper_pid(encoder: DocumentEncoder) -> int:
    """The helper's pid, read from /proc: the child of this process running the encoder."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    for pid in children:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"encoder_main" in cmdline:
            return int(pid)
    raise AssertionError(f"no encoder helper among {children} ({encoder!r})")
