"""The ``thread`` executor (the default): compute on a bounded thread pool in the daemon.

numpy releases the GIL in the engine's heavy loops, so the event loop stays
responsive while batches run. A job still queued when its awaiting task is
cancelled is dropped; one already running finishes in its thread (threads
cannot be interrupted — the container's ``should_stop`` asks the engine to
give up early instead).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from tradingd.workflows.executor import Executor, available_cores, wait_in_thread

__all__ = ["ThreadExecutor"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ThreadExecutor(Executor):
    """A bounded thread pool; see the module docstring."""

    kind = "thread"
    shares_memory = True

    def __init__(self, max_workers: int | None = None) -> None:
        super().__init__(max_workers or available_cores())
        self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="tradingd-compute")

    def __repr__(self) -> str:
        counts = self.jobs.as_dict()
        state = "closed" if self.closed else f"{counts['active']}/{self.max_workers} busy"
        return f"<ThreadExecutor {state} queued={counts['queued']} done={counts['completed']}>"

    def _dispatch(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Awaitable[T]:
        future: Future[T] = self._pool.submit(self._call, fn, args)
        # Registered before wrap_future's own callback: the counters settle before the awaiter resumes.
        future.add_done_callback(self.jobs.future_settled)
        return asyncio.wrap_future(future)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        self.jobs.started()
        try:
            return fn(*args)
        finally:
            self.jobs.stopped()

    async def _release(self, join_timeout: float) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not await wait_in_thread(self._pool.shutdown, join_timeout, name="tradingd-compute-join"):
            log.warning("thread executor: %d compute threads still running after %.1f s; they finish on their own",
                        self.jobs.active, join_timeout)
        log.debug("thread executor closed (%d jobs completed)", self.jobs.settled_by["completed"])
