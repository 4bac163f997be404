"""Shared fixtures: configs in a temp dir, a live supervisor on port 0, daemon subprocesses.

Also the two ways a test waits (``wait_until`` and ``await_until``: poll a condition
until a deadline, never a fixed sleep) and the hypothesis profiles.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

import aiohttp
import pytest
import yaml
from hypothesis import HealthCheck, settings
from tradingd.config import Config, parse_config
from tradingd.supervisor import Supervisor

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# Hypothesis: the suite is a gate, so by default it is deterministic: the same examples on every
# run and every machine (derandomize), nothing read from or saved to .hypothesis/ (a failing
# example stored in one clone must not fail that clone forever, nor differ from CI), and no
# timing-based checks (deadline, too_slow) on a loaded machine. Exploring with fresh random
# examples is opt-in: HYPOTHESIS_PROFILE=explore make test.
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def wait_until(predicate: Callable[[], T | None], *, within: float = 30.0, what: str = "the condition") -> T:
    """Poll ``predicate`` (from a thread that may block) until it returns something truthy.

    Returns that value; fails the test with ``what`` once ``within`` seconds pass.
    ``within`` is a deadline for a machine under load, not a measurement.
    """
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        time.sleep(0.01)


@overload
async def await_until(predicate: Callable[[], Awaitable[T | None]], *, within: float = ..., what: str = ...) -> T: ...
@overload
async def await_until(predicate: Callable[[], T | None], *, within: float = ..., what: str = ...) -> T: ...
async def await_until(
    predicate: Callable[[], Any], *, within: float = 30.0, what: str = "the condition"
) -> Any:
    """``wait_until`` for a test on the event loop: the loop keeps running between polls.

    ``predicate`` may be a plain function or a coroutine function (an HTTP probe, say).
    """
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.01)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="session", autouse=True)
def _sweep_kernel_loaded() -> None:
    """Load the compiled sweep kernel once, before any test.

    Its one-time import (numba's code generator) would otherwise land inside
    whichever test first runs a sweep, e.g. one that traces a sweep's memory.
    """
    from tradingd.trading.acceleration import compiled

    compiled(wait=True)


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

    def wait_for_line(self, fragment: str, timeout: float = 30.0) -> str:
        """Wait until a log line contains ``fragment`` and return that line."""

        def find() -> str | None:
            line = next((line for line in self.log().splitlines() if fragment in line), None)
            if line is None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            return line

        try:
            return wait_until(find, within=timeout, what=f"a log line with {fragment!r}")
        except AssertionError as exc:
            if self.proc.poll() is not None:
                raise  # find() already said how it exited, with the log
            raise AssertionError(f"{exc}; the daemon's log:\n{self.log()}") from None

    def wait_listening(self, timeout: float = 30.0) -> int:
        """Wait for the 'ready on http://host:port' log line and return the port."""
        line = self.wait_for_line(" ready on http://", timeout)
        self.port = int(line.split(" ready on http://", 1)[1].split()[0].split(":")[1].rstrip(","))
        return self.port

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
