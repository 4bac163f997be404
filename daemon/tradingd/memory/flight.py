"""The rendezvous behind single-flight ``get_or_compute``.

When many threads or tasks miss the same cache key at once, one of them (the
leader) computes and the others wait on its :class:`Flight`; threads block on
an event, tasks await a future resolved on their own event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["Flight", "wake_async_waiters"]


class Flight:
    """One in-progress computation that concurrent callers wait on.

    Waiters register while holding the cache lock and the leader removes the
    flight from the cache under that same lock before finishing it, so no
    waiter can register after the wake-up went out.
    """

    __slots__ = ("async_waiters", "done", "error", "retry", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.retry = False
        self.async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def add_async_waiter(self) -> asyncio.Future[None]:
        """A future the calling task awaits; resolved on its loop when the flight finishes."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.async_waiters.append((loop, future))
        return future

    def finish(self) -> None:
        """Wake every waiter, thread or task (the leader sets the outcome first)."""
        self.done.set()
        wake_async_waiters(self.async_waiters)
        self.async_waiters = []


def wake_async_waiters(waiters: Iterable[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    """Resolve each future on its own loop, from any thread; closed loops are skipped."""
    for loop, future in waiters:
        try:
            loop.call_soon_threadsafe(_resolve, future)
        except RuntimeError:  # that loop is closed; nobody is waiting any more
            pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
