"""The real daemon, run as systemd would run it, talks sd_notify in the right order.

A bound datagram socket stands in for systemd: the daemon subprocess gets
``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` in its environment, then a real SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


class NotifyListener:
    """The systemd side of the notify socket: collects datagrams with arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def collect(self, *, until: str | None = None, timeout: float) -> list[str]:
        """Receive until a message contains ``until`` (or ``timeout`` elapses)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            text = data.decode()
            self.messages.append((time.monotonic(), text))
            if until is not None and until in text.splitlines():
                break
        return [text for _, text in self.messages]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    fake = NotifyListener(tmp_path / "notify.sock")
    yield fake
    fake.close()


def _write_config(tmp_path: Path) -> Path:
    config = tmp_path / "tradingd.yaml"
    config.write_text(
        "http: {host: 127.0.0.1}\n"
        f"paths: {{state_dir: {tmp_path / 'state'}, results_dir: {tmp_path / 'results'}}}\n"
        "memory: {monitor_interval: 0.2}\n"
        "logging: {format: json}\n"
        "graceful_timeout: 2.0\n",
        encoding="utf-8",
    )
    return config


def _status_of(messages: list[str]) -> list[str]:
    return [line for m in messages for line in m.splitlines() if line.startswith("STATUS=")]


def test_daemon_sends_ready_watchdog_status_and_stopping(tmp_path: Path, listener: NotifyListener) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(listener.path),
        "WATCHDOG_USEC": "400000",  # WatchdogSec=0.4s: a ping every 0.2 s
        "TRADINGD_HTTP_PORT": str(port),
    }
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tradingd", "run", "--config", str(_write_config(tmp_path))],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        messages = listener.collect(until="READY=1", timeout=30)
        assert messages, "the daemon sent nothing on NOTIFY_SOCKET"
        assert messages[0].splitlines()[0] == "READY=1", messages

        # READY means HTTP already listens: /health answers.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
            assert reply.status == 200

        # Pings at the watchdog cadence: three of them, however long a loaded machine takes.
        deadline = time.monotonic() + 30
        while len([text for _, text in listener.messages if text == "WATCHDOG=1"]) < 3:
            assert time.monotonic() < deadline, listener.messages
            listener.collect(until="WATCHDOG=1", timeout=deadline - time.monotonic())

        proc.send_signal(signal.SIGTERM)
        messages = listener.collect(until="STOPPING=1", timeout=15)
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    firsts = [m.splitlines()[0] for m in messages]
    ready = firsts.index("READY=1")
    stopping = firsts.index("STOPPING=1")
    assert ready < firsts.index("WATCHDOG=1") < stopping
    assert "WATCHDOG=1" not in firsts[stopping:], "pinged after STOPPING=1"
    statuses = _status_of(messages)
    assert statuses, messages
    assert "level" in statuses[0] and "MB" in statuses[0], statuses


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
