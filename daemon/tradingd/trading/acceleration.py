"""Which kernel a sweep runs: numba's compiled loops when ready, else numpy.

Both give the same results bit for bit (``compiled.py`` repeats the numpy
arithmetic in the same order, tests/unit/test_trading_kernels.py checks it),
so the choice can change at any chunk of any sweep without changing a result.
That is what happens by default: numba costs ~0.3 s to import, ~0.5 s to set
up its code generator before the first call (its machine code comes from the
on-disk cache) and ~170 MB of RSS, more than a sweep of a few million
bar-combinations takes on numpy. So the first sweep big enough to be worth it
(``preload``, called by ``engine.run_sweep`` from ``LOAD_CELLS``
bar-combinations) starts loading it on a background thread, and
``compiled()`` answers None (numpy) until it is ready. Processes that only run
small sweeps (tests, tiny batches) never load it. The loader holds the GIL
most of the time, so it starts with a sweep only when the sweep outlasts it
(``EARLY_LOAD_CELLS``: the sweep switches to the compiled kernel once it is
ready); a shorter sweep would only be slowed by it and starts it when it ends.

``TRADINGD_KERNEL`` in the environment: ``numpy`` never loads numba,
``numba`` waits for it (benches, tests), anything else is the default.
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType

__all__ = ["EARLY_LOAD_CELLS", "KERNEL_ENV", "LOAD_CELLS", "compiled", "kernel_name", "preload"]

log = logging.getLogger(__name__)

KERNEL_ENV = "TRADINGD_KERNEL"
# A sweep of this many bar-combinations takes ~0.1 s on numpy: from here on,
# loading numba (about a second of CPU, once per process) starts paying.
LOAD_CELLS = 2_000_000
# ... and from this many (about a second on numpy, more than the load takes),
# loading numba while the sweep runs makes the sweep itself faster.
EARLY_LOAD_CELLS = 40_000_000


class _Loader:
    """Imports and warms ``tradingd.trading.compiled`` once, on a thread of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.module: ModuleType | None = None

    def get(self, *, start: bool, wait: bool) -> ModuleType | None:
        if not self._done.is_set() and (start or wait):
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._load, name="tradingd-numba", daemon=True)
                    self._thread.start()
            if wait:
                self._done.wait()
        return self.module

    def _load(self) -> None:
        try:
            from tradingd.trading import compiled as module

            # What a crossover sweep runs first: sweeps use the kernel from here on ...
            module.warm_up(crossings_only=True)
        except Exception as exc:  # ImportError, or numba failing on this machine: numpy it is
            log.info("compiled sweep kernel not available (%s): sweeps run on numpy", exc)
            self._done.set()
            return
        self.module = module
        self._done.set()
        try:  # ... while the other signatures load (a sweep needing one first waits for numba's lock)
            module.warm_up()
        except Exception as exc:  # pragma: no cover - the same machine code loaded a moment ago
            log.info("compiled sweep kernel: warming the other loops failed (%s)", exc)


_loader = _Loader()


def _mode() -> str:
    return os.environ.get(KERNEL_ENV, "").strip().lower()


def compiled(*, wait: bool = False) -> ModuleType | None:
    """``tradingd.trading.compiled`` when loaded and not switched off, else None (use numpy).

    ``wait``: load it now and block until the load has finished (or failed).
    """
    mode = _mode()
    if mode == "numpy":
        return None
    return _loader.get(start=False, wait=wait or mode == "numba")


def preload(cells: int, *, ending: bool = False) -> None:
    """Start loading the compiled kernel in the background if a sweep of ``cells`` is worth it.

    Called as the sweep starts and again (``ending``) when it has finished:
    the load starts at the first call for sweeps of ``EARLY_LOAD_CELLS`` and
    more, at the second for the others.
    """
    if cells >= (LOAD_CELLS if ending else EARLY_LOAD_CELLS) and _mode() != "numpy":
        _loader.get(start=True, wait=False)


def kernel_name() -> str:
    """``"numba"`` or ``"numpy"``: the kernel a sweep starting now runs."""
    return "numpy" if compiled() is None else "numba"
