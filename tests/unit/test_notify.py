"""sd_notify and the watchdog, against a real datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from tradingd.notify import Notifier, run_watchdog, status_line

from tests.conftest import await_until, wait_until

pytestmark = pytest.mark.timeout(10)


class FakeSystemd:
    """A bound AF_UNIX datagram socket that records what the daemon sends.

    A background thread receives, so arrival times are measured independently
    of the event loop under test.
    """

    def __init__(self, address: str | bytes, env_value: str) -> None:
        self.env_value = env_value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.messages)

    def texts(self) -> list[str]:
        return [text for _, text in self.snapshot()]

    def times_of(self, text: str) -> list[float]:
        return [at for at, msg in self.snapshot() if msg == text]

    def wait_for_count(self, expected: int, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.snapshot()) < expected:
            time.sleep(0.005)

    def wait_for_text(self, text: str, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and text not in self.texts():
            time.sleep(0.005)

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.env_value}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
            env["WATCHDOG_PID"] = str(os.getpid())
        return env

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.sock.close()


NotifierFactory = Callable[[Mapping[str, str]], Notifier]


def record_pings(notifier: Notifier, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When the notifier sent each ``WATCHDOG=1``, seen from the sender (no receive-side jitter)."""
    sent: list[float] = []
    watchdog = notifier.watchdog

    def ping() -> bool:
        sent.append(time.monotonic())
        return watchdog()

    monkeypatch.setattr(notifier, "watchdog", ping)
    return sent


@pytest.fixture
def notifier_for() -> Iterator[NotifierFactory]:
    """A factory of notifiers that closes every one it made."""
    made: list[Notifier] = []

    def make(environ: Mapping[str, str]) -> Notifier:
        notifier = Notifier(environ)
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close()


@pytest.fixture
def path_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = str(tmp_path / "notify.sock")
    fake = FakeSystemd(path, path)
    yield fake
    fake.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    name = f"tradingd-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(b"\0" + name.encode(), "@" + name)
    yield fake
    fake.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(
    request: pytest.FixtureRequest,
    path_systemd: FakeSystemd,
    abstract_systemd: FakeSystemd,
) -> FakeSystemd:
    return path_systemd if request.param == "path" else abstract_systemd


def test_messages_arrive_in_order(systemd: FakeSystemd, notifier_for: NotifierFactory) -> None:
    notifier = notifier_for(systemd.env(watchdog_usec=1_000_000))
    assert notifier.ready()
    assert notifier.status("mem 120/2048 MB level ok runs 0 containers 0")
    assert notifier.watchdog()
    assert notifier.stopping()
    notifier.close()
    systemd.wait_for_count(4)
    assert systemd.texts() == [
        "READY=1",
        "STATUS=mem 120/2048 MB level ok runs 0 containers 0",
        "WATCHDOG=1",
        "STOPPING=1",
    ]
    assert notifier.sent == 4


def test_ready_and_stopping_can_carry_a_status(path_systemd: FakeSystemd, notifier_for: NotifierFactory) -> None:
    notifier = notifier_for(path_systemd.env())
    notifier.ready("serving on 127.0.0.1:8787")
    notifier.stopping("stopping: 2 containers finishing")
    notifier.close()
    path_systemd.wait_for_count(2)
    assert path_systemd.texts() == [
        "READY=1\nSTATUS=serving on 127.0.0.1:8787",
        "STOPPING=1\nSTATUS=stopping: 2 containers finishing",
    ]


def test_a_newline_in_a_status_cannot_inject_an_assignment(
    path_systemd: FakeSystemd, notifier_for: NotifierFactory
) -> None:
    notifier = notifier_for(path_systemd.env())
    notifier.status("ok\nREADY=1")
    notifier.close()
    path_systemd.wait_for_count(1)
    assert path_systemd.texts() == ["STATUS=ok READY=1"]


def test_without_notify_socket_everything_is_a_no_op(
    notifier_for: NotifierFactory,
) -> None:
    notifier = notifier_for({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert notifier.sent == 0
    assert repr(notifier) == "<Notifier disabled>"


def test_a_dead_socket_never_raises_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, notifier_for: NotifierFactory
) -> None:
    notifier = notifier_for({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level(logging.DEBUG, logger="tradingd.notify"):
        assert not notifier.ready()
        assert not notifier.status("still fine")
        assert not notifier.stopping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "sd_notify" in warnings[0].getMessage()
    assert notifier.failures == 3


def test_unsupported_address_is_disabled(notifier_for: NotifierFactory) -> None:
    notifier = notifier_for({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.ready()


def test_watchdog_interval_is_half_of_watchdog_usec(path_systemd: FakeSystemd, notifier_for: NotifierFactory) -> None:
    notifier = notifier_for(path_systemd.env(watchdog_usec=30_000_000))
    assert notifier.watchdog_interval == pytest.approx(15.0)
    assert "watchdog every 15 s" in repr(notifier)


def test_watchdog_meant_for_another_process_is_ignored(
    path_systemd: FakeSystemd, notifier_for: NotifierFactory
) -> None:
    env = path_systemd.env(watchdog_usec=2_000_000) | {"WATCHDOG_PID": str(os.getpid() + 1)}
    notifier = notifier_for(env)
    assert notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.watchdog()


@pytest.mark.parametrize("usec", ["", "0", "soon", "-5"])
def test_bad_or_missing_watchdog_usec_disables_the_watchdog(
    path_systemd: FakeSystemd, usec: str, notifier_for: NotifierFactory
) -> None:
    notifier = notifier_for({"NOTIFY_SOCKET": path_systemd.env_value, "WATCHDOG_USEC": usec})
    assert notifier.watchdog_interval is None


def test_close_is_idempotent_and_stops_sending(path_systemd: FakeSystemd, notifier_for: NotifierFactory) -> None:
    notifier = notifier_for(path_systemd.env())
    notifier.close()
    notifier.close()
    assert not notifier.ready()
    assert not notifier.enabled


async def test_watchdog_pings_at_half_the_watchdog_timeout(
    systemd: FakeSystemd, notifier_for: NotifierFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # WatchdogSec=200ms -> a ping every 100 ms.
    notifier = notifier_for(systemd.env(watchdog_usec=200_000))
    sent = record_pings(notifier, monkeypatch)
    stop = asyncio.Event()
    task = asyncio.create_task(run_watchdog(notifier, stop=stop, healthy=lambda: True))
    await await_until(lambda: len(sent) >= 6, what="six pings")
    stop.set()
    await asyncio.wait_for(task, 5)
    await await_until(lambda: len(systemd.times_of("WATCHDOG=1")) == len(sent), what="the pings to arrive")
    # Ping k goes out on its slot, k x 100 ms after the first, never before it (a loaded machine
    # only delays them); and typically well within the 200 ms systemd allows.
    assert all(at - sent[0] >= k * 0.1 - 0.03 for k, at in enumerate(sent)), sent
    gaps = sorted(b - a for a, b in itertools.pairwise(sent))
    assert gaps[len(gaps) // 2] < 0.2, gaps


async def test_no_watchdog_while_the_loop_is_blocked(
    path_systemd: FakeSystemd, notifier_for: NotifierFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = notifier_for(path_systemd.env(watchdog_usec=100_000))  # ping every 50 ms
    sent = record_pings(notifier, monkeypatch)
    stop = asyncio.Event()
    task = asyncio.create_task(run_watchdog(notifier, stop=stop, healthy=lambda: True))
    await await_until(lambda: len(sent) >= 2, what="two pings")
    # From here the loop is wedged (the waits below block it), so nothing can be sent from it;
    # first the receiver thread takes in what was sent before.
    before = len(sent)
    wait_until(lambda: len(path_systemd.times_of("WATCHDOG=1")) == before, what="the pings sent so far to arrive")
    time.sleep(0.5)  # noqa: ASYNC251 - ten ping intervals with the loop wedged
    blocked_until = time.monotonic()
    assert len(sent) == before
    assert len(path_systemd.times_of("WATCHDOG=1")) == before

    # Once the loop runs again, pings resume, without a burst for the missed slots.
    await await_until(lambda: len(sent) >= before + 3, what="pings to resume")
    stop.set()
    await asyncio.wait_for(task, 5)
    # One ping at once, then one per 50 ms slot: no burst for the ten slots missed.
    after = [t for t in sent if t >= blocked_until]
    assert all(at - blocked_until >= (k - 1) * 0.05 - 0.01 for k, at in enumerate(after) if k >= 1), after


async def test_no_watchdog_while_unhealthy(
    path_systemd: FakeSystemd,
    notifier_for: NotifierFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="tradingd.notify")
    notifier = notifier_for(path_systemd.env(watchdog_usec=100_000))
    sent = record_pings(notifier, monkeypatch)
    stop = asyncio.Event()
    healthy = True
    checks = 0

    def check() -> bool:
        nonlocal checks
        checks += 1
        return healthy

    task = asyncio.create_task(run_watchdog(notifier, stop=stop, healthy=check))
    await await_until(lambda: len(sent) >= 2, what="two pings")

    healthy = False  # from here (the watchdog runs on this loop) nothing more may be sent
    at_start, checks_at_start = len(sent), checks
    await await_until(lambda: checks >= checks_at_start + 8, what="eight checks while unhealthy")
    assert len(sent) == at_start
    healthy = True
    await await_until(lambda: len(sent) >= at_start + 2, what="pings to resume")
    stop.set()
    await asyncio.wait_for(task, 5)
    await await_until(lambda: len(path_systemd.times_of("WATCHDOG=1")) == len(sent), what="the pings to arrive")
    # One warning for the whole episode (the journal says why a restart came), one recovery note.
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("event loop unhealthy: withholding WATCHDOG=1") == 1
    assert messages.count("event loop healthy again: WATCHDOG=1 resumed") == 1


async def test_a_failing_health_check_counts_as_unhealthy(
    path_systemd: FakeSystemd,
    caplog: pytest.LogCaptureFixture,
    notifier_for: NotifierFactory,
) -> None:
    checks = 0

    def broken() -> bool:
        nonlocal checks
        checks += 1
        raise RuntimeError("lag probe broke")

    notifier = notifier_for(path_systemd.env(watchdog_usec=100_000))
    stop = asyncio.Event()
    with caplog.at_level(logging.ERROR, logger="tradingd.notify"):
        task = asyncio.create_task(run_watchdog(notifier, stop=stop, healthy=broken))
        await await_until(lambda: checks >= 3, what="three health checks")
        stop.set()
        await asyncio.wait_for(task, 5)
    assert notifier.sent == 0
    assert path_systemd.times_of("WATCHDOG=1") == []
    assert any("health check failed" in r.getMessage() for r in caplog.records)


async def test_status_is_refreshed_periodically(path_systemd: FakeSystemd, notifier_for: NotifierFactory) -> None:
    notifier = notifier_for(path_systemd.env())  # no watchdog: STATUS only
    stop = asyncio.Event()
    calls = 0

    def summary() -> str:
        nonlocal calls
        calls += 1
        return f"tick {calls}"

    task = asyncio.create_task(
        run_watchdog(
            notifier,
            stop=stop,
            healthy=lambda: True,
            status=summary,
            status_interval=0.05,
        )
    )
    await await_until(lambda: len(path_systemd.texts()) >= 3, what="three STATUS lines")
    stop.set()
    await asyncio.wait_for(task, 5)
    texts = path_systemd.texts()
    assert texts[:3] == ["STATUS=tick 1", "STATUS=tick 2", "STATUS=tick 3"]
    assert "WATCHDOG=1" not in texts


async def test_a_failing_status_line_does_not_stop_the_watchdog(
    path_systemd: FakeSystemd,
    caplog: pytest.LogCaptureFixture,
    notifier_for: NotifierFactory,
) -> None:
    attempts = 0

    def broken() -> str:
        nonlocal attempts
        attempts += 1
        raise ValueError("no snapshot yet")

    notifier = notifier_for(path_systemd.env(watchdog_usec=100_000))
    stop = asyncio.Event()
    with caplog.at_level(logging.ERROR, logger="tradingd.notify"):
        task = asyncio.create_task(
            run_watchdog(
                notifier,
                stop=stop,
                healthy=lambda: True,
                status=broken,
                status_interval=0.05,
            )
        )
        await await_until(lambda: attempts >= 2 and len(path_systemd.times_of("WATCHDOG=1")) >= 3,
                          what="pings after two failed STATUS lines")
        stop.set()
        await asyncio.wait_for(task, 5)
    assert any("STATUS line failed" in r.getMessage() for r in caplog.records)


async def test_run_watchdog_returns_at_once_without_a_socket(
    notifier_for: NotifierFactory,
) -> None:
    stop = asyncio.Event()
    await asyncio.wait_for(
        run_watchdog(notifier_for({}), stop=stop, healthy=lambda: True, status=lambda: "x"),
        0.5,
    )


async def test_stop_ends_the_watchdog_promptly(path_systemd: FakeSystemd, notifier_for: NotifierFactory) -> None:
    notifier = notifier_for(path_systemd.env(watchdog_usec=60_000_000))  # ping every 30 s
    stop = asyncio.Event()
    task = asyncio.create_task(run_watchdog(notifier, stop=stop, healthy=lambda: True))
    await await_until(lambda: notifier.sent >= 1, what="the first ping")  # now it sleeps for 30 s
    stop.set()
    await asyncio.wait_for(task, 10)  # far less than the 30 s it would sleep


async def test_full_lifecycle_in_order(systemd: FakeSystemd, notifier_for: NotifierFactory) -> None:
    """READY, STATUS, periodic WATCHDOG, STOPPING: the order the supervisor uses."""
    notifier = notifier_for(systemd.env(watchdog_usec=100_000))
    stop = asyncio.Event()
    notifier.ready()
    task = asyncio.create_task(
        run_watchdog(
            notifier,
            stop=stop,
            healthy=lambda: True,
            status=lambda: "runs 0",
            status_interval=0.12,
        )
    )
    await await_until(lambda: systemd.texts().count("WATCHDOG=1") >= 4 and "STATUS=runs 0" in systemd.texts(),
                      what="four pings and a STATUS line")
    notifier.stopping()
    stop.set()
    await asyncio.wait_for(task, 5)
    notifier.close()
    systemd.wait_for_text("STOPPING=1")
    texts = systemd.texts()
    assert texts[0] == "READY=1"
    assert texts[-1] == "STOPPING=1"
    assert "STATUS=runs 0" in texts
    assert texts.count("WATCHDOG=1") >= 4


def test_status_line_summarises_memory_level_runs_and_containers() -> None:
    snapshot = {
        "memory": {"used_bytes": 412 * 2**20, "limit_bytes": 2048 * 2**20, "level": "pressure"},
        "runs": {"by_status": {"running": 1, "completed": 4}, "containers_running": 3},
    }
    assert status_line(snapshot) == "mem 412/2048 MB (20%), level pressure, runs 1 running, containers 3 running"


def test_status_line_leaves_out_what_is_missing() -> None:
    assert status_line({"memory": {"used_bytes": None, "limit_bytes": 100, "level": "normal"}}) == "level normal"
    assert status_line({}) == "running"
    assert status_line({"runs": {"by_status": {"completed": 2}, "containers_running": 0}}) == (
        "runs 0 running, containers 0 running"
    )
