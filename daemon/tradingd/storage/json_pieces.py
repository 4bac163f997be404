"""JSON text in pieces, each encoded by the C encoder: fast, and the GIL is never held for long.

``json.dumps`` with an ``indent`` runs CPython's pure-Python encoder, 2-3x
slower than the C one; without it, the C encoder holds the GIL for the whole
document — 0.2-0.4 s for a container result with a hundred equity curves,
during which the daemon's event loop cannot run. :func:`json_pieces` walks the
outer structure in Python and hands every leaf (a container of scalars, or a
slice of at most :data:`SLICE` of them) to the C encoder, so each hold is a
couple of milliseconds and the whole is about as fast as one C call.

With ``indent``, the outer structure is laid out one member per line and each
leaf is written on one line (a curve of 2,609 floats is one line, not 2,609).
The text parses to the same value as ``json.dumps`` gives. A one-dimensional
numpy array (an equity curve) is written as the list of its values, a slice at
a time, so a document may carry curves as arrays until it is written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["SLICE", "json_pieces"]

#: Scalars per C-encoder call when a list of scalars is long.
SLICE = 1024


def json_pieces(obj: Any, *, indent: int | None = None) -> Iterator[str]:
    """The JSON text of ``obj`` in pieces (NaN and infinities raise ``ValueError``)."""
    return _pieces(obj, indent, 0)


def _leaf(obj: Any) -> str:
    return json.dumps(obj, allow_nan=False)


def _is_scalar(obj: Any) -> bool:
    return not isinstance(obj, (dict, list, tuple, np.ndarray))


def _pieces(obj: Any, indent: int | None, depth: int) -> Iterator[str]:
    if isinstance(obj, np.ndarray) and obj.ndim == 1:
        yield from _sliced(obj)
    elif isinstance(obj, dict) and obj and all(type(key) is str for key in obj) \
            and not all(_is_scalar(value) for value in obj.values()):
        first, between, outer = _breaks(indent, depth)
        yield "{"
        for number, (key, value) in enumerate(obj.items()):
            yield f"{between if number else first}{_leaf(key)}: "
            yield from _pieces(value, indent, depth + 1)
        yield f"{outer}}}"
    elif isinstance(obj, (list, tuple)) and obj and not all(_is_scalar(item) for item in obj):
        first, between, outer = _breaks(indent, depth)
        yield "["
        for number, item in enumerate(obj):
            yield between if number else first
            yield from _pieces(item, indent, depth + 1)
        yield f"{outer}]"
    elif isinstance(obj, (list, tuple)) and len(obj) > SLICE:
        yield from _sliced(obj)
    else:
        yield _leaf(obj)


def _sliced(values: list[Any] | tuple[Any, ...] | np.ndarray[Any, Any]) -> Iterator[str]:
    """A list of scalars (or a 1-d array) as JSON, :data:`SLICE` values per C-encoder call."""
    yield "["
    for start in range(0, len(values), SLICE):
        part = values[start:start + SLICE]
        text = _leaf(part.tolist() if isinstance(part, np.ndarray) else list(part))  # numpy -> Python numbers
        yield f"{', ' if start else ''}{text[1:-1]}"
    yield "]"


def _breaks(indent: int | None, depth: int) -> tuple[str, str, str]:
    """What goes before the first member, between members, and before the closing bracket."""
    if indent is None:
        return "", ", ", ""
    inner = "\n" + " " * (indent * (depth + 1))
    return inner, "," + inner, "\n" + " " * (indent * depth)
