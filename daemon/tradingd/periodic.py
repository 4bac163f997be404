"""The one shape of every periodic task: ``async for _ in poll(stop, interval)``.

arq's ``poll``: each iteration starts one ``interval`` after the previous one
started (the body's own run time is subtracted from the sleep, so the cadence
does not drift), the sleep ends early when ``stop`` is set, and the loop ends
then. A ``wake`` event, when given, also cuts a sleep short (and is cleared),
for loops that must react to something sooner than their interval.

The loop body owns its error handling: log and continue on ``Exception``;
cancellation propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

__all__ = ["poll", "wait_or_stop"]


async def wait_or_stop(stop: asyncio.Event, seconds: float, *, wake: asyncio.Event | None = None) -> None:
    """Sleep up to ``seconds``, returning early when ``stop`` (or ``wake``) is set."""
    if stop.is_set() or seconds <= 0:
        return
    waiters = {asyncio.ensure_future(stop.wait())}
    if wake is not None:
        waiters.add(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        if wake is not None:
            wake.clear()


async def poll(
    stop: asyncio.Event,
    interval: float | Callable[[], float],
    *,
    wake: asyncio.Event | None = None,
    first_delay: float | None = None,
) -> AsyncIterator[float]:
    """Yield the loop time of each tick until ``stop`` is set.

    ``interval`` may be a callable, read before every sleep (for cadences that
    change at run time). The first tick comes after ``first_delay`` (default:
    one interval); pass ``0`` to tick at once.
    """
    loop = asyncio.get_running_loop()
    step = interval if callable(interval) else (lambda: interval)
    delay = step() if first_delay is None else first_delay
    while not stop.is_set():
        await wait_or_stop(stop, delay, wake=wake)
        if stop.is_set():
            return
        started = loop.time()
        yield started
        delay = max(0.0, step() - (loop.time() - started))
