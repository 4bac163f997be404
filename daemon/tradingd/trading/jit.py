"""numba's ``njit`` as every compiled sweep loop uses it: on-disk cache, no GIL, numpy's error model.

``error_model="numpy"``: a division by zero gives inf or NaN, as in the numpy
kernel, instead of a check per division that keeps the loops from vectorizing.
Imported only by the compiled modules, which ``acceleration`` loads on demand.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

__all__ = ["compile_loop"]

F = TypeVar("F", bound=Callable[..., Any])


def compile_loop(fn: F) -> F:
    """``fn`` compiled by numba, cached on disk where the cache directory is writable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cast(F, numba.njit(cache=True, nogil=True, error_model="numpy")(fn))
    except RuntimeError:  # no writable cache directory (read-only install): compile per process
        return cast(F, numba.njit(nogil=True, error_model="numpy")(fn))
