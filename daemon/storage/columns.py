"""Lossless encodings of a table of equal-length numeric columns.

Each column is stored either as its raw values (``"raw"``) or, when it can be
represented exactly as integers, through an integer pipeline (``"int"``)::

    values --ticks--> t (int64) --op--> r (int64) --gcd/base--> s (narrowest int)

* ticks: floats become ``rint(x * 10**scale)``; kept only when
  ``t / 10**scale`` reproduces every value bit for bit (NaN, -0.0 or prices
  off any decimal grid fall back to raw floats). Integers, datetimes and
  timedeltas are their own ticks.
* op: ``none``; ``delta`` (differences to the previous row, ``r[0] = 0`` and
  the first value in the descriptor: timestamps, close prices); or ``ref``
  (difference to an earlier column with the same scale: open/high/low
  against close).
* ``r == s * gcd + base`` with ``s`` in the narrowest signed (base 0) or
  unsigned (frame of reference) integer type.

The encoder tries every op on a sample and keeps whichever compresses smallest.
Columns that end up with the same stored type, output type and scale form a
*group*: one (k x n) array, one compressed segment, one filter chain chosen by
trial. Decoding a group is a handful of numpy calls whatever k is, which is
what keeps small frames fast (per-call overhead dominates there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import blosc2
import numpy as np
import numpy.typing as npt

from .chunks import BloscParams, compress_bytes

__all__ = ["Column", "ColumnCodecError", "decode_table", "encode_table"]

_SAMPLE_ROWS = 65_536
_MAX_SCALE = 10
_EXACT_INT = 2**53  # ticks beyond this are not exact in float64
_FILTER_CHAINS: tuple[tuple[blosc2.Filter, ...], ...] = (
    (blosc2.Filter.SHUFFLE,),
    (blosc2.Filter.BITSHUFFLE,),
    (blosc2.Filter.SHUFFLE, blosc2.Filter.BYTEDELTA),
)

Column = npt.NDArray[Any]
Int64s = npt.NDArray[np.int64]


class ColumnCodecError(ValueError):
    """A table descriptor or its stored bytes do not decode."""


# --- ticks and narrowing ----------------------------------------------------


def _reproduces(x: Column, factor: float) -> bool:
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.rint(x.astype(np.float64) * factor)
        if not (np.abs(scaled) < _EXACT_INT).all():
            return False
        # Exactly the decoder's expression: int64 ticks / 10**scale, cast.
        back = (scaled.astype(np.int64) / factor).astype(x.dtype)
    bits = np.dtype(f"u{x.dtype.itemsize}")
    return bool(np.array_equal(back.view(bits), x.view(bits)))


def _float_ticks(x: Column) -> tuple[int, Int64s] | None:
    """Smallest decimal scale whose integer ticks reproduce ``x`` bit for bit."""
    if x.size == 0:
        return None
    sample = x[: min(x.size, 4096)]
    if not np.isfinite(sample).all():
        return None
    for scale in range(_MAX_SCALE + 1):
        factor = 10.0**scale
        if _reproduces(sample, factor):
            # The sample fits at this scale; the whole column must too.
            if x.size > sample.size and not _reproduces(x, factor):
                return None
            return scale, np.rint(x.astype(np.float64) * factor).astype(np.int64)
    return None


def _ticks_of(values: Column) -> tuple[int | None, Int64s] | None:
    """Integer ticks of a column: (scale, or None for integer types; ticks)."""
    kind = values.dtype.kind
    if kind == "f":
        return _float_ticks(values)
    if kind in "mMi":
        return None, values.view(np.int64) if values.dtype.itemsize == 8 else values.astype(np.int64)
    if kind == "u" and (values.dtype.itemsize < 8 or values.size == 0 or int(values.max()) < 2**63):
        return None, values.astype(np.int64)
    return None


def _smallest(lo: int, hi: int, kind: str) -> np.dtype[Any] | None:
    for size in (1, 2, 4, 8):
        info = np.iinfo(np.dtype(f"{kind}{size}"))
        if info.min <= lo and hi <= info.max:
            return np.dtype(f"{kind}{size}")
    return None


def _narrow(r: Int64s) -> tuple[int, int, Column]:
    """(base, gcd, stored) with ``r == stored * gcd + base``, as narrow as possible.

    A signed type with base 0 is preferred when it is as narrow as the
    frame-of-reference unsigned one: it saves an addition when decoding.
    """
    if r.size == 0:
        return 0, 1, np.zeros(0, dtype=np.int8)
    lo, hi = int(r.min()), int(r.max())
    gcd = 1
    if max(abs(lo), abs(hi)) < 2**62 and (lo, hi) != (0, 0):
        gcd = max(int(np.gcd.reduce(r)), 1)
    signed = _smallest(lo // gcd, hi // gcd, "i")
    unsigned = _smallest(0, (hi - lo) // gcd, "u")
    if signed is not None and (unsigned is None or signed.itemsize <= unsigned.itemsize):
        return 0, gcd, (r // np.int64(gcd) if gcd > 1 else r).astype(signed)
    assert unsigned is not None  # hi - lo always fits 64 unsigned bits
    shifted = (r - np.int64(lo)).astype(np.uint64)  # modular: exact even when it wraps
    if gcd > 1:
        shifted //= np.uint64(gcd)
    return lo, gcd, shifted.astype(unsigned)


# --- encoding ---------------------------------------------------------------


@dataclass
class _Plan:
    desc: dict[str, Any]
    stored: Column
    key: tuple[str, str, str, int | None]  # enc, stored dtype, dtype, scale
    scale: int | None = None
    ticks: Int64s | None = None


def _compressed_size(arr: Column, params: BloscParams, chain: Sequence[blosc2.Filter]) -> int:
    sample = np.ascontiguousarray(arr[..., :_SAMPLE_ROWS])
    return sum(len(c) for c in compress_bytes(sample, params, typesize=arr.dtype.itemsize, filters=chain))


def _best_chain(arr: Column, params: BloscParams) -> tuple[int, tuple[blosc2.Filter, ...]]:
    sizes = [(_compressed_size(arr, params, chain), n) for n, chain in enumerate(_FILTER_CHAINS)]
    size, best = min(sizes)
    return size, _FILTER_CHAINS[best]


def _plan(values: Column, params: BloscParams, earlier: Sequence[_Plan]) -> _Plan:
    values = np.ascontiguousarray(values)
    dtype = values.dtype.str
    found = _ticks_of(values) if values.dtype.kind in "fiumM" else None
    if found is None:
        return _Plan({"enc": "raw"}, values, ("raw", dtype, dtype, None))
    scale, t = found
    candidates: list[tuple[dict[str, Any], Int64s]] = [({"op": "none"}, t)]
    if t.size > 1:
        candidates.append(({"op": "delta", "first": int(t[0])}, np.diff(t, prepend=t[:1])))
    for number, ref in enumerate(earlier):
        if ref.ticks is not None and ref.scale == scale:
            candidates.append(({"op": "ref", "ref": number}, t - ref.ticks))
    best: tuple[int, dict[str, Any], Column] | None = None
    for op, r in candidates:
        base, gcd, stored = _narrow(r)
        size, _ = _best_chain(stored, params)
        if best is None or size < best[0]:
            best = (size, {"enc": "int", **op, "base": base, "gcd": gcd}, stored)
    assert best is not None
    _, desc, stored = best
    return _Plan(desc, stored, ("int", stored.dtype.str, dtype, scale), scale, t)


def encode_table(
    columns: Sequence[Column], params: BloscParams
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[list[bytes]]]:
    """Encode equal-length 1-D columns (a ``ref`` only points to an earlier one).

    Returns (column descriptors, group descriptors, each group's chunks).
    """
    plans: list[_Plan] = []
    for values in columns:
        plans.append(_plan(values, params, plans))
    members: dict[tuple[str, str, str, int | None], list[int]] = {}
    for number, plan in enumerate(plans):
        members.setdefault(plan.key, []).append(number)
    groups: list[dict[str, Any]] = []
    group_chunks: list[list[bytes]] = []
    for (enc, store, dtype, scale), numbers in members.items():
        block = np.stack([plans[i].stored for i in numbers]) if numbers else np.zeros((0, 0))
        _, chain = _best_chain(block, params)
        chunks = compress_bytes(block, params, typesize=block.dtype.itemsize, filters=chain)
        for row, i in enumerate(numbers):
            plans[i].desc.update(group=len(groups), row=row)
        groups.append({"enc": enc, "store": store, "dtype": dtype, "scale": scale, "cols": numbers})
        group_chunks.append(chunks)
    return [p.desc for p in plans], groups, group_chunks


# --- decoding ---------------------------------------------------------------


def decode_table(
    cols: Sequence[dict[str, Any]], groups: Sequence[dict[str, Any]], raws: Sequence[bytearray], rows: int
) -> list[Column]:
    """Inverse of :func:`encode_table`: one (k x rows) array per group, in group order.

    ``raws[g]`` is group g's decompressed segment. Row i of group g's array is
    column ``groups[g]["cols"][i]``.
    """
    if len(raws) != len(groups):
        raise ColumnCodecError("segment count does not match the groups")
    stored: list[Column] = []
    for group, raw in zip(groups, raws, strict=True):
        k = len(group["cols"])
        arr = np.frombuffer(raw, dtype=np.dtype(group["store"]))
        if arr.size != k * rows:
            raise ColumnCodecError(f"group holds {arr.size} values, expected {k} x {rows}")
        arr = arr.reshape(k, rows)
        # One widening pass per group; the ops below then work in place.
        stored.append(arr if group["enc"] == "raw" else arr.astype(np.int64))
    ticks: list[Int64s | None] = [None] * len(cols)
    for number, desc in enumerate(cols):  # column order: references come first
        if desc["enc"] == "raw":
            continue
        t = stored[int(desc["group"])][int(desc["row"])]
        gcd, base = int(desc["gcd"]), int(desc["base"])
        if gcd != 1:
            t *= np.int64(gcd)
        if base:
            t += np.int64(base)
        op = desc["op"]
        if op == "delta":
            np.cumsum(t, out=t)
            t += np.int64(int(desc["first"]))
        elif op == "ref":
            ref = int(desc["ref"])
            source = ticks[ref] if 0 <= ref < number else None
            if source is None:
                raise ColumnCodecError(f"column {number} refers to {ref}, not an earlier int column")
            t += source
        elif op != "none":
            raise ColumnCodecError(f"unknown column op {op!r}")
        ticks[number] = t
    return [_materialise(group, arr) for group, arr in zip(groups, stored, strict=True)]


def _materialise(group: dict[str, Any], arr: Column) -> Column:
    dtype = np.dtype(group["dtype"])
    if group["enc"] == "raw":
        if arr.dtype != dtype:
            raise ColumnCodecError("raw group stored with another dtype")
        return arr
    if group["enc"] != "int":
        raise ColumnCodecError(f"unknown column encoding {group['enc']!r}")
    scale = group["scale"]
    if scale is not None:
        # Division, not multiplication by 10**-scale: the encoder verified
        # exactly this expression, bit for bit.
        values = arr / (10.0 ** int(scale))
        return values if dtype == values.dtype else values.astype(dtype)
    if dtype.kind in "mM" or dtype == arr.dtype:
        return arr.view(dtype)
    return arr.astype(dtype)
