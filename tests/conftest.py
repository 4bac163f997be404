"""Shared fixtures: configs in a temp dir, a live supervisor on port 0, daemon subprocesses."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tradingd.config import Config, parse_config
from tradingd.supervisor import Supervisor

REPO = Path(__file__).resolve().parent.parent


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """CLI commands run in-process configure logging onto pytest's captured stderr;
    put the root logger back so later tests never log to a closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def config_dict(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Build a config mapping rooted in ``tmp_path`` listening on port 0."""

    def make(**overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "http": {"host": "127.0.0.1", "port": 0},
            "paths": {"state_dir": str(tmp_path / "state"), "results_dir": str(tmp_path / "results")},
            "memory": {"monitor_interval": 0.2},
            "logging": {"level": "INFO"},
            "graceful_timeout": 3.0,
        }
        return _merge(base, overrides)

    return make


@pytest.fixture
def make_config(config_dict: Callable[..., dict[str, Any]]) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        return parse_config(config_dict(**overrides), name="test.yaml")

    return make


@pytest.fixture
def write_config(tmp_path: Path, config_dict: Callable[..., dict[str, Any]]) -> Callable[..., Path]:
    """Write a config file and return its path."""

    def write(name: str = "tradingd.yaml", **overrides: Any) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config_dict(**overrides)))
        return path

    return write


@pytest.fixture
async def supervisor(make_config: Callable[..., Config]) -> AsyncIterator[Supervisor]:
    async with Supervisor(make_config()) as sup:
        yield sup


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def base_url(sup: Supervisor) -> str:
    return f"http://127.0.0.1:{sup.port}"


class DaemonProcess:
    """A real ``tradingd run`` subprocess with its stderr captured to a file."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tradingd", "run", "--config", str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=config_path.parent,
        )
        self.port: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout: float = 20.0) -> int:
        """Wait for the 'ready on http://host:port' log line and return the port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log().splitlines():
                if " ready on http://" in line:
                    self.port = int(line.split(" ready on http://", 1)[1].split()[0].split(":")[1].rstrip(","))
                    return self.port
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"daemon did not become ready:\n{self.log()}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(config_path: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        proc = DaemonProcess(config_path, tmp_path / f"daemon-{len(started)}.log", env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()
