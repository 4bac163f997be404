"""Binding failures name the config key and leave no state behind (the daemon binds before it creates state)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tradingd", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_a_port_in_use_names_http_port_and_creates_no_state(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(http={"host": "127.0.0.1", "port": port})
        done = run_daemon(config)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (f"{config}: http.port: 127.0.0.1:{port} is already in use "
                         "(another tradingd? choose another http.port)"), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists(), "no state dir, token, secret or journal for a daemon that never ran"
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1"])
def test_a_bad_host_names_http_host_and_creates_no_state(
    tmp_path: Path, write_config: Callable[..., Path], host: str
) -> None:
    config = write_config(http={"host": host, "port": 0})
    done = run_daemon(config)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{config}: http.host: ") and host in last, done.stderr
    assert not (tmp_path / "state").exists()
