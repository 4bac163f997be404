"""Which kernel a sweep runs: numba's compiled loops when installed, else numpy.

Both give the same results bit for bit (``compiled.py`` repeats the numpy
arithmetic in the same order); the compiled loops are several times faster
(docs/engine.md, "Kernel"). ``TRADINGD_KERNEL=numpy`` in the environment
forces the numpy path (tests run both). numba is imported on the first
sweep, not with the package, so the daemon starts as fast as before.
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType

__all__ = ["KERNEL_ENV", "compiled", "kernel_name"]

log = logging.getLogger(__name__)

KERNEL_ENV = "TRADINGD_KERNEL"
_lock = threading.Lock()
_loaded: dict[str, ModuleType | None] = {}


def compiled() -> ModuleType | None:
    """``tradingd.trading.compiled`` when numba is usable and not switched off, else None."""
    if os.environ.get(KERNEL_ENV, "").strip().lower() == "numpy":
        return None
    try:
        return _loaded["module"]
    except KeyError:
        pass
    with _lock:  # two sweep threads must not both import (and compile) at once
        if "module" not in _loaded:
            try:
                from tradingd.trading import compiled as module
            except ImportError as exc:
                log.info("numba not available (%s): the sweep kernel runs on numpy", exc)
                _loaded["module"] = None
            else:
                _loaded["module"] = module
        return _loaded["module"]


def kernel_name() -> str:
    """``"numba"`` or ``"numpy"``: the kernel the next sweep runs (for logs and benches)."""
    return "numpy" if compiled() is None else "numba"
