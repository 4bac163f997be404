"""sd_notify: tell systemd that tradingd is ready, alive, busy, or stopping.

The protocol is one datagram per message on the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the Linux abstract namespace), each
message a few ``KEY=value`` lines. Without ``$NOTIFY_SOCKET`` (a terminal, a
test, ``docker run``) every call is a cheap no-op.

The watchdog ping is sent from the event loop itself by :func:`run_watchdog`,
and only while the supervisor says the loop is healthy: a loop that is stuck
(blocked by a synchronous call, or lagging badly) stops pinging, so systemd's
``WatchdogSec=`` kills and restarts the service. Sending from a helper thread
would defeat that purpose, since a thread keeps ticking while the loop is
wedged.

Nothing here raises: a broken notify socket must never take the daemon down.
The first failure is logged as a warning, later ones at debug level.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tradingd.periodic import poll

__all__ = ["DEFAULT_STATUS_INTERVAL", "Notifier", "run_watchdog", "status_line"]

logger = logging.getLogger(__name__)

#: How often ``run_watchdog`` refreshes the ``STATUS=`` line, in seconds.
DEFAULT_STATUS_INTERVAL = 5.0


def _socket_address(raw: str) -> str | bytes | None:
    """Turn a ``$NOTIFY_SOCKET`` value into an address ``sendto`` accepts."""
    if raw.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the '@'.
        return b"\0" + os.fsencode(raw[1:])
    if raw.startswith("/"):
        return raw
    # systemd also knows vsock addresses (vsock:CID:PORT) for VMs; tradingd
    # does not run as a VM's init, so anything else is treated as unusable.
    return None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between pings: half of ``$WATCHDOG_USEC``, or None if off.

    ``$WATCHDOG_PID`` names the process the watchdog is meant for; a child
    process that inherited the environment must not ping on its behalf.
    """
    raw_usec = environ.get("WATCHDOG_USEC", "").strip()
    if not raw_usec:
        return None
    raw_pid = environ.get("WATCHDOG_PID", "").strip()
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            logger.warning("ignoring WATCHDOG_PID=%r: not a number", raw_pid)
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r: not a number", raw_usec)
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


class Notifier:
    """A client for systemd's notify socket that never raises.

    Build it with :meth:`from_environ` in the daemon; tests pass an explicit
    mapping. The socket is created lazily on the first send and closed by
    :meth:`close` (idempotent).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "").strip()
        self._socket_name = raw or None
        self._address = _socket_address(raw) if raw else None
        if raw and self._address is None:
            logger.warning("ignoring NOTIFY_SOCKET=%r: unsupported address", raw)
        self._watchdog_interval = _watchdog_interval(env) if self._address is not None else None
        self._sock: socket.socket | None = None
        self._failed_once = False
        self._closed = False
        self.sent = 0
        self.failures = 0

    @classmethod
    def from_environ(cls) -> Notifier:
        """The notifier for this process, configured from ``os.environ``."""
        return cls(os.environ)

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to."""
        return self._address is not None and not self._closed

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None."""
        return self._watchdog_interval if self.enabled else None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True if it was sent.

        Newlines inside a value would start a new assignment, so they are
        replaced by spaces.
        """
        if self._address is None or self._closed or not assignments:
            return False
        payload = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop: if systemd's queue is full the
                # message is dropped and counted, like sd_notify would fail.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload, self._address)
        except OSError as exc:  # refused, missing, full queue: all OSErrors
            self.failures += 1
            level = logging.DEBUG if self._failed_once else logging.WARNING
            self._failed_once = True
            logger.log(level, "sd_notify to %s failed: %s", self._socket_name, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: the HTTP server listens and state is loaded."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, line: str) -> bool:
        """``STATUS=``: the one-line summary ``systemctl status`` shows."""
        return self.notify(f"STATUS={line}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the event loop is alive and healthy."""
        if self.watchdog_interval is None:
            return False
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        if status is None:
            return self.notify("STOPPING=1")
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        """Close the socket; later calls are no-ops. Idempotent."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __repr__(self) -> str:
        if self._address is None:
            return "<Notifier disabled>"
        interval = self._watchdog_interval
        watchdog = f"watchdog every {interval:.3g} s" if interval else "no watchdog"
        state = "closed" if self._closed else "open"
        return f"<Notifier {self._socket_name} {state} {watchdog} sent {self.sent} failed {self.failures}>"


async def run_watchdog(
    notifier: Notifier,
    *,
    stop: asyncio.Event,
    healthy: Callable[[], bool],
    status: Callable[[], str] | None = None,
    status_interval: float = DEFAULT_STATUS_INTERVAL,
) -> None:
    """Ping ``WATCHDOG=1`` and refresh ``STATUS=`` until ``stop`` is set.

    Runs as a task on the daemon's own event loop. ``WATCHDOG=1`` goes out
    every ``notifier.watchdog_interval`` seconds, but only when ``healthy()``
    is true; ``STATUS=`` (if ``status`` is given) every ``status_interval``
    seconds. Ticks are scheduled against fixed deadlines (a :func:`poll`
    loop whose interval is the time to the next deadline), so the cadence
    does not drift by the time each tick takes. Returns at once when there is
    nothing to send.
    """
    if not notifier.enabled:
        return
    ping_interval = notifier.watchdog_interval
    if ping_interval is None and status is None:
        return
    now = asyncio.get_running_loop().time()
    due = _Deadlines(ping=now if ping_interval is not None else math.inf,
                     status=now + status_interval if status is not None else math.inf)
    withholding = False
    async for tick in poll(stop, due.until_next, first_delay=0):
        due.tick = tick
        if ping_interval is not None and tick >= due.ping:
            if _is_healthy(healthy):
                notifier.watchdog()
                if withholding:
                    logger.info("event loop healthy again: WATCHDOG=1 resumed")
                    withholding = False
            elif not withholding:
                # Said once per episode: if it lasts WatchdogSec, systemd restarts us,
                # and this line in the journal says why.
                logger.warning("event loop unhealthy: withholding WATCHDOG=1")
                withholding = True
            # After a stall, skip the missed slots instead of bursting pings.
            due.ping += ping_interval * (int((tick - due.ping) // ping_interval) + 1)
        if status is not None and tick >= due.status:
            try:
                notifier.status(status())
            except Exception:
                logger.exception("building the sd_notify STATUS line failed")
            due.status = tick + status_interval


@dataclass
class _Deadlines:
    """The watchdog's next ping and status times, and the tick being handled (loop time)."""

    ping: float
    status: float
    tick: float = 0.0

    def until_next(self) -> float:
        """Seconds from this tick to the next deadline (``poll`` subtracts the tick's own run time)."""
        return min(self.ping, self.status) - self.tick


def _is_healthy(healthy: Callable[[], bool]) -> bool:
    """``healthy()``, treating an exception as unhealthy."""
    try:
        return bool(healthy())
    except Exception:
        logger.exception("loop health check failed; treating the loop as unhealthy")
        return False


def status_line(snapshot: Mapping[str, Any]) -> str:
    """The one-line ``STATUS=`` summary built from a stats snapshot.

    Reads ``memory.used_bytes``/``limit_bytes``/``level`` and, when the runs
    section exists, ``runs.by_status.running`` and ``runs.containers_running``;
    anything missing is left out rather than guessed. Example:
    ``mem 412/2048 MB (20%), level ok, runs 1 running, containers 3 running``.
    """
    parts: list[str] = []
    memory = snapshot.get("memory")
    if isinstance(memory, Mapping):
        used, limit = memory.get("used_bytes"), memory.get("limit_bytes")
        if isinstance(used, int | float) and isinstance(limit, int | float) and limit > 0:
            parts.append(f"mem {used / 2**20:.0f}/{limit / 2**20:.0f} MB ({used / limit:.0%})")
        level = memory.get("level")
        if isinstance(level, str):
            parts.append(f"level {level}")
    runs = snapshot.get("runs")
    if isinstance(runs, Mapping):
        by_status = runs.get("by_status")
        running = by_status.get("running", 0) if isinstance(by_status, Mapping) else None
        if isinstance(running, int):
            parts.append(f"runs {running} running")
        if isinstance(runs.get("containers_running"), int):
            parts.append(f"containers {runs['containers_running']} running")
    return ", ".join(parts) if parts else "running"
