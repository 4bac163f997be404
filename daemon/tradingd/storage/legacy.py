"""Loading pre-authentication pickle files without letting them run code.

State files written before the framed format were plain pickles with no
HMAC, so nothing vouches for their origin: anyone who could drop a file into
``caches/`` or ``models/`` could make ``pickle.loads`` call ``os.system``.
:func:`load_legacy_pickle` uses an unpickler whose ``find_class`` admits only
builtin containers and scalars, ``datetime`` values, and the numpy, pandas
(and pandas' pyarrow string) types and reconstructors that arrays, frames and
series pickle to; any other global raises :class:`LegacyPickleRefused` before
it is even imported.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["LegacyPickleRefused", "load_legacy_pickle"]

_BUILTINS = frozenset({
    "dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float",
    "complex", "bool", "slice", "range", "object",
})
_EXACT: dict[str, frozenset[str]] = {
    "builtins": _BUILTINS,
    "__builtin__": _BUILTINS,
    "collections": frozenset({"OrderedDict", "deque"}),
    "datetime": frozenset({"date", "datetime", "time", "timedelta", "timezone"}),
    "_codecs": frozenset({"encode"}),  # protocol 2 spells bytes as encode(str, "latin1")
    "copyreg": frozenset({"_reconstructor"}),  # the class it rebuilds goes through find_class too
    "pyarrow.lib": frozenset({"_restore_array", "py_buffer", "type_for_alias", "_reconstruct_table",
                              "_reconstruct_record_batch", "chunked_array", "schema", "field"}),
}
# Modules whose *classes* may be rebuilt, plus the reconstructor functions they pickle to.
_TYPE_MODULES = (
    "numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric",
    "numpy.dtypes", "pandas", "pandas.arrays",
)
_TYPE_PREFIXES = ("pandas.core.", "pandas._libs.")
_REFUSED_PREFIXES = ("pandas.core.computation", "pandas._libs.testing", "pandas.io", "pandas.plotting")
_RECONSTRUCTORS = frozenset({
    "_reconstruct", "scalar", "_frombuffer", "_unpickle_block", "_new_Index", "_new_DatetimeIndex",
    "_new_PeriodIndex", "_new_IntervalIndex", "_unpickle_timestamp", "_timedelta_unpickle",
    "__pyx_unpickle_NDArrayBacked", "_unpickle_period",
})


# What frames, series and indexes are made of, whatever module pandas says defines them.
_PANDAS_DATA: tuple[type, ...] = (
    pd.DataFrame, pd.Series, pd.Index, pd.api.extensions.ExtensionArray, pd.api.extensions.ExtensionDtype,
    pd.Timestamp, pd.Timedelta, pd.Period, pd.Interval, pd.offsets.BaseOffset,
)


class LegacyPickleRefused(pickle.UnpicklingError):
    """A legacy pickle names a global outside the admitted numpy/pandas/builtin set."""


def _admitted_module(module: str) -> bool:
    if module.startswith(_REFUSED_PREFIXES):
        return False
    return module in _TYPE_MODULES or module.startswith(_TYPE_PREFIXES)


def _admitted_class(found: type) -> bool:
    """numpy arrays, scalars and dtypes (never ``memmap``, which opens files); pandas' data classes.

    pandas re-exports I/O classes at the top level (``pandas.HDFStore`` opens
    and truncates files), so a class is judged by the module it is defined in.
    """
    if issubclass(found, (np.ndarray, np.generic, np.dtype)):
        return not issubclass(found, np.memmap)
    if issubclass(found, _PANDAS_DATA):
        return True
    home = found.__module__ or ""  # public pandas classes say "pandas": those passed the check above
    return home.startswith(_TYPE_PREFIXES) and not home.startswith(_REFUSED_PREFIXES)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _EXACT.get(module, ()):
            return super().find_class(module, name)
        if _admitted_module(module) and "." not in name:
            found = getattr(importlib.import_module(module), name, None)
            if (isinstance(found, type) and _admitted_class(found)) or name in _RECONSTRUCTORS:
                return super().find_class(module, name)
        raise LegacyPickleRefused(f"refusing global {module}.{name} (only numpy, pandas and builtin containers)")


def load_legacy_pickle(data: bytes) -> object:
    """Unpickle ``data`` admitting only numpy, pandas and builtin container types.

    Raises :class:`LegacyPickleRefused` for anything else, and whatever a
    malformed pickle raises (callers quarantine the file either way).
    """
    return _RestrictedUnpickler(io.BytesIO(data)).load()
