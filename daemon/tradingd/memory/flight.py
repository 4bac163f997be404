"""The rendezvous behind single-flight ``get_or_compute``.

When many threads miss the same cache key at once, one of them (the leader)
computes and the others block on its :class:`Flight` until it lands.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["Flight"]


class Flight:
    """One in-progress computation that concurrent callers wait on.

    Waiters join while holding the cache lock and the leader removes the
    flight from the cache under that same lock before finishing it, so no
    waiter can join after the wake-up went out.
    """

    __slots__ = ("done", "error", "retry", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.retry = False

    def finish(self, *, value: Any = None, error: BaseException | None = None, retry: bool = False) -> None:
        """Set the outcome and wake every waiter."""
        self.value, self.error, self.retry = value, error, retry
        self.done.set()
