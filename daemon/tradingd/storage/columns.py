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

__all__ = ["Column", "ColumnCodecError", "decode_table", "dtype_of", "encode_table"]

_SAMPLE_ROWS = 65_536
_MAX_SCALE = 10
_DELTA_PENALTY = 1.25  # see _plan
_EXACT_INT = 2**53  # ticks beyond this are not exact in float64
_FILTER_CHAINS: tuple[tuple[blosc2.Filter, ...], ...] = (
    (blosc2.Filter.SHUFFLE,),
    (blosc2.Filter.BITSHUFFLE,),
    (blosc2.Filter.SHUFFLE, blosc2.Filter.BYTEDELTA),
)

Column = npt.NDArray[Any]
Int64s = npt.NDArray[np.int64]
_INT64 = np.dtype(np.int64)
_FLOAT64 = np.dtype(np.float64)


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
    chain: tuple[blosc2.Filter, ...] | None = None  # best filters for ``stored`` alone, if tried


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
    best: tuple[float, dict[str, Any], Column, tuple[blosc2.Filter, ...]] | None = None
    for op, r in candidates:
        base, gcd, stored = _narrow(r)
        size, chain = _best_chain(stored, params)
        cost = size * (_DELTA_PENALTY if op["op"] == "delta" else 1.0)
        if best is None or cost < best[0]:
            # base 0 and gcd 1 are left out: a smaller header parses faster.
            extra = ({"base": base} if base else {}) | ({"gcd": gcd} if gcd != 1 else {})
            best = (cost, {"enc": "int", **op, **extra}, stored, chain)
    assert best is not None
    _, desc, stored, chain = best
    return _Plan(desc, stored, ("int", stored.dtype.str, dtype, scale), scale, t, chain)


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
        # A one-column group is the very sample _plan already tried the chains on.
        chain = plans[numbers[0]].chain if len(numbers) == 1 else None
        if chain is None:
            _, chain = _best_chain(block, params)
        chunks = compress_bytes(block, params, typesize=block.dtype.itemsize, filters=chain)
        for row, i in enumerate(numbers):
            plans[i].desc.update(group=len(groups), row=row)
        groups.append({"enc": enc, "store": store, "dtype": dtype, "scale": scale, "cols": numbers})
        group_chunks.append(chunks)
    return [p.desc for p in plans], groups, group_chunks


# --- decoding ---------------------------------------------------------------


_DTYPES: dict[str, np.dtype[Any]] = {}


def dtype_of(spec: str) -> np.dtype[Any]:
    # np.dtype("<i2") parses its string every call; decoding asks for a few
    # dtypes over and over.
    found = _DTYPES.get(spec)
    if found is None:
        found = _DTYPES.setdefault(spec, np.dtype(spec))
    return found


# Largest magnitude of each stored integer type that float64 decoding accepts
# (np.iinfo costs ~1 us a call; decoding asks for it on every group).
_WIDEST: dict[str, int] = {
    np.dtype(f"{kind}{size}").str: max(abs(int(np.iinfo(f"{kind}{size}").min)), int(np.iinfo(f"{kind}{size}").max))
    for kind in "iu"
    for size in (1, 2, 4)
}


def _exact_in_float(groups: Sequence[dict[str, Any]], numbers: Sequence[int], cols: Sequence[dict[str, Any]]) -> bool:
    """Whether these groups' ops stay exact when done in float64.

    Decimal ticks are below 2**53 (the encoder checks), so float64 holds them
    and every partial sum of a delta or a reference exactly; what remains is
    that ``s * gcd + base`` stays below 2**53 for any stored ``s``.
    """
    for g in numbers:
        widest = _WIDEST.get(groups[g]["store"])
        if widest is None:
            return False
        for c in groups[g]["cols"]:
            desc = cols[c]
            if widest * int(desc.get("gcd", 1)) + abs(int(desc.get("base", 0))) >= _EXACT_INT:
                return False
    return True


def decode_table(
    cols: Sequence[dict[str, Any]], groups: Sequence[dict[str, Any]], segments: Sequence[Column], rows: int
) -> list[tuple[Column, list[int]]]:
    """Inverse of :func:`encode_table`: the decoded columns as (k x rows) blocks.

    ``segments[g]`` is group g's decompressed segment as a flat array of the
    group's stored dtype. Groups that decode to the same dtype (and scale) come
    back as one block, so a frame gets one block per dtype, as pandas would
    build it. Returns (block, column numbers of its rows) pairs.
    """
    if len(segments) != len(groups):
        raise ColumnCodecError("segment count does not match the groups")
    outputs: dict[tuple[str, str, Any], list[int]] = {}
    for number, (group, flat) in enumerate(zip(groups, segments, strict=True)):
        if group["enc"] not in ("raw", "int"):
            raise ColumnCodecError(f"unknown column encoding {group['enc']!r}")
        if flat.dtype != dtype_of(group["store"]) or flat.size != len(group["cols"]) * rows:
            raise ColumnCodecError(
                f"group holds {flat.size} {flat.dtype} values, expected {len(group['cols'])} x {rows}"
            )
        if group["enc"] == "raw" and flat.dtype != dtype_of(group["dtype"]):
            raise ColumnCodecError("raw group stored with another dtype")
        outputs.setdefault((group["enc"], group["dtype"], group["scale"]), []).append(number)
    work: list[Column] = [np.empty(0)] * len(groups)
    float_blocks: list[tuple[Column, list[int], float]] = []
    other: list[tuple[str, str, Any]] = []
    for key, numbers in outputs.items():
        enc, dtype_spec, scale = key
        if (
            enc == "int"
            and scale is not None
            and dtype_of(dtype_spec) == _FLOAT64
            and _exact_in_float(groups, numbers, cols)
        ):
            # Decimal prices: widen the stored ints straight into the output
            # block, undo the ops there and divide once, in place. No int64
            # intermediate: a third of the allocations and passes.
            members = [c for g in numbers for c in groups[g]["cols"]]
            block = np.empty((len(members), rows), dtype=_FLOAT64)
            at = 0
            for g in numbers:
                k = len(groups[g]["cols"])
                work[g] = block[at : at + k]
                np.copyto(work[g], segments[g].reshape(k, rows))
                at += k
            float_blocks.append((block, members, 10.0 ** int(scale)))
            continue
        other.append(key)
        for g in numbers:
            arr = segments[g].reshape(len(groups[g]["cols"]), rows)
            # One widening pass per group (none when stored as int64: the
            # segment array is ours and writable); the ops then work in place.
            work[g] = arr if enc == "raw" or arr.dtype == _INT64 else arr.astype(np.int64)
    _undo_ops(cols, work)
    blocks: list[tuple[Column, list[int]]] = []
    for block, members, divisor in float_blocks:
        # Division, not multiplication by 10**-scale: the encoder verified
        # exactly this expression, bit for bit.
        block /= divisor
        blocks.append((block, members))
    for enc, dtype_spec, scale in other:
        numbers = outputs[(enc, dtype_spec, scale)]
        blocks.append(_materialise(enc, dtype_of(dtype_spec), scale, [work[g] for g in numbers], groups, numbers))
    return blocks


def _undo_ops(cols: Sequence[dict[str, Any]], work: Sequence[Column]) -> None:
    ticks: list[Column | None] = [None] * len(cols)
    for number, desc in enumerate(cols):  # column order: references come first
        if desc["enc"] == "raw":
            continue
        t = work[desc["group"]][desc["row"]]
        gcd, base, op = desc.get("gcd", 1), desc.get("base", 0), desc["op"]
        if gcd != 1:
            t *= gcd
        if base:
            t += base
        if op == "ref":
            ref = desc["ref"]
            source = ticks[ref] if type(ref) is int and 0 <= ref < number else None
            if source is None:
                raise ColumnCodecError(f"column {number} refers to {ref}, not an earlier int column")
            # Either side may be float64 (exact integers below 2**53) or int64.
            np.add(t, source, out=t, casting="unsafe")
        elif op == "delta":
            # r[0] is 0, so seeding it with the first value lets one cumsum
            # do the whole job (same result modulo 2**64 as adding after).
            t[0] = desc["first"]
            np.cumsum(t, out=t)
        elif op != "none":
            raise ColumnCodecError(f"unknown column op {op!r}")
        ticks[number] = t


def _materialise(
    enc: str,
    dtype: np.dtype[Any],
    scale: int | None,
    parts: list[Column],
    groups: Sequence[dict[str, Any]],
    numbers: Sequence[int],
) -> tuple[Column, list[int]]:
    members = [c for g in numbers for c in groups[g]["cols"]]
    if enc == "int" and scale is not None:
        divisor = 10.0 ** int(scale)
        parts = [part / divisor for part in parts]
        parts = [part if part.dtype == dtype else part.astype(dtype) for part in parts]
    elif enc == "int" and dtype.kind not in "mM" and dtype != _INT64:
        parts = [part.astype(dtype) for part in parts]
    else:
        parts = [part.view(dtype) for part in parts]
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), members
