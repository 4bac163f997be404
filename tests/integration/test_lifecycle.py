"""A real ``tradingd run`` subprocess: readiness, SIGTERM, the state-dir lock."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import DaemonProcess


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_sigterm_stops_cleanly_and_leaves_no_lock(
    write_config: Callable[..., Path], daemon_process: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    config = write_config(graceful_timeout=3.0)
    daemon = daemon_process(config)
    port = daemon.wait_listening()
    assert get(port, "/ready") == (200, {"status": "ready"})
    lock = tmp_path / "state" / "tradingd.lock"
    assert lock.exists()
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=3.0 + 2.0) == 0
    assert time.monotonic() - started < 5.0
    assert not lock.exists()
    assert "stopped" in daemon.log()
    assert "Traceback" not in daemon.log()


def test_second_daemon_on_same_state_dir_exits_2(
    write_config: Callable[..., Path], daemon_process: Callable[..., DaemonProcess]
) -> None:
    config = write_config()
    first = daemon_process(config)
    first.wait_listening()
    second = daemon_process(config)
    assert second.wait(timeout=20) == 2
    out = second.log()
    assert "is in use by another tradingd" in out and str(first.proc.pid) in out
    assert "Traceback" not in out
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
