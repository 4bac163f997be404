"""Stop signals and the event loop of the commands that own one (``run``, ``run-workflow``).

The handlers only set events: the first SIGTERM/SIGINT sets ``stop`` (a
graceful stop), a second one sets ``force`` (the stop skips its remaining
waits, yet still releases the state-dir lock and closes its files).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

__all__ = ["StopSignals", "run_to_exit"]

log = logging.getLogger(__name__)


class StopSignals:
    """The stop and force events, set by SIGTERM/SIGINT once :meth:`install` ran."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        self.received: list[int] = []

    def __repr__(self) -> str:
        return f"<StopSignals received={[signal.Signals(n).name for n in self.received]}>"

    @property
    def forced(self) -> bool:
        return self.force.is_set()

    def exit_code(self) -> int | None:
        """128 + N when a second signal N forced the stop; None otherwise."""
        return 128 + self.received[-1] if self.forced else None

    def install(self) -> None:
        """Handle SIGTERM and SIGINT on the running loop (the one signal installer)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._received, signum)

    def _received(self, signum: int) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        if not self.stop.is_set():
            log.info("received %s; stopping gracefully (send again to force)", name)
            self.stop.set()
        elif not self.force.is_set():
            log.warning("received %s again; forcing exit: skipping the remaining waits", name)
            self.force.set()


def run_to_exit(main: Coroutine[Any, Any, int], signals: StopSignals) -> int:
    """Run ``main`` on a new event loop and return its exit code.

    After a forced stop the process exits at once: the supervisor has already
    released the lock and closed its files, and what is left are compute
    threads that cannot be interrupted, which closing the loop (and the
    interpreter) would otherwise wait for.
    """
    with asyncio.Runner() as runner:
        code = runner.run(main)
        if signals.forced:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code
