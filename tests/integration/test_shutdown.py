"""The ordered stop: whatever fails or is cancelled in a step, the lock, the journal, HTTP and the
notify socket are still released; concurrent callers wait for the same completion; ``__init__``
touches nothing."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from tradingd import supervisor as supervisor_module
from tradingd.config import Config, ConfigError
from tradingd.storage.statedir import StateDirLock
from tradingd.supervisor import Lifecycle, Supervisor

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A systemd notify socket, so the supervisor's notifier is live (and must be closed)."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def fail_after(original: Callable[..., Any], failure: type[BaseException]) -> Callable[..., Any]:
    """``original``, which still does its work, then raises ``failure``."""
    if inspect.iscoroutinefunction(original):

        async def failing_async(*args: Any, **kwargs: Any) -> Any:
            await original(*args, **kwargs)
            raise failure("injected")

        return failing_async

    def failing(*args: Any, **kwargs: Any) -> Any:
        original(*args, **kwargs)
        raise failure("injected")

    return failing


# Each stop step and the callee it runs on a real supervisor.
STEPS: dict[str, Callable[[Supervisor], tuple[Any, str]]] = {
    "runs": lambda sup: (sup.workflows, "drain"),
    "background tasks": lambda sup: (sup.tasks, "close"),
    "caches": lambda sup: (sup.memory, "persist"),
    "executor": lambda sup: (sup.workflows, "close_executor"),
    "http": lambda sup: (web.AppRunner, "cleanup"),
    "files": lambda sup: (sup.outcomes, "close"),
}


def assert_released(sup: Supervisor, port: int) -> None:
    assert sup.state is Lifecycle.STOPPED
    assert not (sup.state_dir / "tradingd.lock").exists()
    lock = StateDirLock(sup.state_dir)
    lock.acquire()  # nobody holds it any more
    lock.release()
    assert sup.outcomes is not None
    with pytest.raises(RuntimeError, match="closed"):
        sup.outcomes.count()
    assert not sup.notifier.enabled
    assert len(sup.tasks) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.parametrize("failure", [RuntimeError, asyncio.CancelledError], ids=["exception", "cancellation"])
@pytest.mark.parametrize("step", list(STEPS))
async def test_a_failing_step_still_releases_everything(
    step: str,
    failure: type[BaseException],
    make_config: Callable[..., Config],
    notify_socket: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup = Supervisor(make_config())
    await sup.start()
    port = sup.port
    owner, name = STEPS[step](sup)
    monkeypatch.setattr(owner, name, fail_after(getattr(owner, name), failure))
    if failure is asyncio.CancelledError:
        with pytest.raises(asyncio.CancelledError):
            await sup.shutdown()
    else:
        await sup.shutdown()  # a failing step is logged; the stop goes on
    assert_released(sup, port)
    assert "STOPPING=1" in received(notify_socket)
    await asyncio.wait_for(sup.shutdown(), 5)  # idempotent: done already


async def test_a_cancelled_stop_still_releases_everything_and_every_caller_waits_for_it(
    make_config: Callable[..., Config], notify_socket: socket.socket
) -> None:
    sup = Supervisor(make_config(graceful_timeout=60.0))
    await sup.start()
    port = sup.port
    never = asyncio.Event()
    slow = sup.spawn(never.wait(), name="slow-work")  # keeps the stop in its background-task drain
    first = asyncio.create_task(sup.shutdown())
    deadline = time.monotonic() + 30
    while not sup.tasks.closed:  # the drain of background tasks has begun
        assert time.monotonic() < deadline, "the stop never reached the background tasks"
        await asyncio.sleep(0.01)
    second = asyncio.create_task(sup.shutdown())
    await asyncio.sleep(0)  # let the second caller start waiting
    assert not second.done() and not first.done()

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 10)  # returns once the first caller's stop has finished
    assert slow.cancelled()
    assert_released(sup, port)


async def test_concurrent_callers_return_only_when_the_stop_is_complete(make_config: Callable[..., Config]) -> None:
    sup = Supervisor(make_config(graceful_timeout=60.0))
    await sup.start()
    release = asyncio.Event()
    sup.spawn(release.wait(), name="slow-work")
    callers = [asyncio.create_task(sup.shutdown()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(c.done() for c in callers)
    release.set()
    await asyncio.wait_for(asyncio.gather(*callers), 30)
    assert sup.state is Lifecycle.STOPPED and not (sup.state_dir / "tradingd.lock").exists()


async def test_force_skips_the_graceful_waits(make_config: Callable[..., Config]) -> None:
    force = asyncio.Event()
    sup = Supervisor(make_config(graceful_timeout=600.0), force=force)
    await sup.start()
    never = asyncio.Event()
    slow = sup.spawn(never.wait(), name="slow-work")
    stopping = asyncio.create_task(sup.shutdown())
    deadline = time.monotonic() + 30
    while not sup.tasks.closed:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    force.set()  # a second signal: the 600 s grace is not waited for
    await asyncio.wait_for(stopping, 30)
    assert slow.cancelled()
    assert sup.state is Lifecycle.STOPPED and not (sup.state_dir / "tradingd.lock").exists()


def test_init_does_no_io(tmp_path: Path, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    def untouchable(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("I/O in Supervisor.__init__")

    for name in ("discover_limit", "load_startup_specs", "resolve_api_token", "OutcomeJournal"):
        monkeypatch.setattr(supervisor_module, name, untouchable)
    sup = Supervisor(make_config(startup_workflows=["missing.yaml"]))
    assert sup.state is Lifecycle.STARTING
    assert not (tmp_path / "state").exists() and not (tmp_path / "results").exists()


async def test_a_bad_startup_spec_fails_start_before_any_state_exists(
    tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    sup = Supervisor(make_config(startup_workflows=["missing.yaml"]))
    with pytest.raises(ConfigError, match=r"missing\.yaml: file not found"):
        await sup.start()
    assert sup.state is Lifecycle.STOPPED
    assert not (tmp_path / "state").exists() and not (tmp_path / "results").exists()
