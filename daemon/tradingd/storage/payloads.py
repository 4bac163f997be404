"""Turning Python objects into a JSON header plus compressed segments, and back.

Kinds, tried in order:

* ``ndarray`` — a numeric numpy array (bool, int, uint, float, complex,
  datetime64, timedelta64), stored natively through :mod:`.columns`.
* ``frame`` / ``series`` — a pandas DataFrame or Series whose columns are
  numeric numpy dtypes, with unique str/int labels, and a RangeIndex, a
  DatetimeIndex (naive or with a time zone) or a numeric index.
* ``pickle`` — anything else: pickle protocol 5 with out-of-band buffers, so
  the numpy arrays inside still get a typed shuffle; the only kind that needs
  an authenticated (HMAC) file, because unpickling runs code.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .chunks import BloscParams, compress_bytes, decompress_array, decompress_into, uncompressed_size
from .columns import Column, decode_table, dtype_of, encode_table

__all__ = ["Encoded", "PayloadError", "decode_payload", "encode_payload"]

_NATIVE_KINDS = "biufcmM"


class PayloadError(ValueError):
    """The header and segments do not describe a decodable object."""


class Encoded:
    """The result of encoding: a JSON-able header and the segments' chunks."""

    def __init__(self, kind: str) -> None:
        self.header: dict[str, Any] = {"kind": kind, "segments": []}
        self.chunks: list[bytes] = []

    def add_segment(self, chunks: list[bytes]) -> int:
        """Record one segment; returns its number."""
        self.header["segments"].append({"n": uncompressed_size(chunks), "c": [len(c) for c in chunks]})
        self.chunks.extend(chunks)
        return len(self.header["segments"]) - 1

    def add_table(self, columns: list[Column], params: BloscParams) -> dict[str, Any]:
        """Encode equal-length columns; returns the table descriptor."""
        rows = int(columns[0].size) if columns else 0
        cols, groups, group_chunks = encode_table(columns, params)
        for group, chunks in zip(groups, group_chunks, strict=True):
            group["seg"] = self.add_segment(chunks)
        return {"rows": rows, "cols": cols, "groups": groups}


def _json_label(label: object) -> bool:
    return label is None or (type(label) in (str, int))


def _native_dtype(dtype: object) -> bool:
    return isinstance(dtype, np.dtype) and dtype.kind in _NATIVE_KINDS and dtype.names is None


def _index_spec(index: pd.Index) -> tuple[dict[str, Any], Column | None] | None:
    """How an index is stored: (descriptor, values to add as table column 0)."""
    if not _json_label(index.name):
        return None
    if isinstance(index, pd.RangeIndex):
        return {"t": "range", "start": index.start, "stop": index.stop, "step": index.step, "name": index.name}, None
    if isinstance(index, pd.DatetimeIndex):
        tz = None if index.tz is None else str(index.tz)
        if tz is not None and pd.DatetimeIndex([], tz=tz).tz != index.tz:
            return None  # a time zone that does not survive as its name
        values = np.asarray(index.asi8).view(f"M8[{index.unit}]")
        freq = index.freqstr if index.freq is not None else None
        return {"t": "datetime", "tz": tz, "freq": freq, "name": index.name}, values
    if type(index) is pd.Index and _native_dtype(index.dtype):
        return {"t": "array", "name": index.name}, index.to_numpy()
    return None


def _encode_frame(df: pd.DataFrame, params: BloscParams) -> Encoded | None:
    labels = list(df.columns)
    if df.attrs or isinstance(df.columns, pd.MultiIndex) or len(set(labels)) != len(labels):
        return None
    if not all(_json_label(c) for c in labels) or not _json_label(df.columns.name):
        return None
    if not all(_native_dtype(dt) for dt in df.dtypes):
        return None
    spec = _index_spec(df.index)
    if spec is None:
        return None
    index, index_values = spec
    # A close column goes first so open/high/low can be stored against it.
    order = sorted(range(len(labels)), key=lambda i: str(labels[i]).lower() not in ("close", "adj close", "price"))
    columns = [df.iloc[:, i].to_numpy() for i in order]
    positions: list[int] = list(order)
    if index_values is not None:
        columns.insert(0, index_values)
        positions.insert(0, -1)  # -1: the index
    enc = Encoded("frame")
    table = enc.add_table(columns, params)
    ranged = df.columns if isinstance(df.columns, pd.RangeIndex) else None
    enc.header.update(
        index=index,
        table=table,
        pos=positions,
        labels=labels,
        columns_name=df.columns.name,
        columns_range=None if ranged is None else [ranged.start, ranged.stop, ranged.step],
        rows=len(df),
    )
    return enc


def _encode_series(s: pd.Series, params: BloscParams) -> Encoded | None:
    if s.attrs or not _json_label(s.name) or not _native_dtype(s.dtype):
        return None
    spec = _index_spec(s.index)
    if spec is None:
        return None
    index, index_values = spec
    columns = [s.to_numpy()] if index_values is None else [index_values, s.to_numpy()]
    enc = Encoded("series")
    enc.header.update(index=index, name=s.name, table=enc.add_table(columns, params))
    return enc


def _encode_ndarray(arr: Column, params: BloscParams) -> Encoded:
    enc = Encoded("ndarray")
    flat = np.ascontiguousarray(arr).reshape(-1)
    enc.header.update(shape=list(arr.shape), table=enc.add_table([flat], params))
    return enc


def _encode_pickle(obj: object, params: BloscParams) -> Encoded:
    enc = Encoded("pickle")
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    enc.add_segment(compress_bytes(stream, params, typesize=1, filters=()))
    for buf in buffers:
        itemsize = memoryview(buf).itemsize
        enc.add_segment(compress_bytes(buf.raw(), params, typesize=itemsize))
    return enc


def encode_payload(obj: object, params: BloscParams) -> Encoded:
    """Pick the most specific kind for ``obj`` and encode it."""
    if type(obj) is np.ndarray and _native_dtype(obj.dtype):
        return _encode_ndarray(obj, params)
    if type(obj) is pd.DataFrame:
        enc = _encode_frame(obj, params)
        if enc is not None:
            return enc
    if type(obj) is pd.Series:
        enc = _encode_series(obj, params)
        if enc is not None:
            return enc
    return _encode_pickle(obj, params)


class _Segments:
    """Random access to the payload's segments."""

    def __init__(self, header: dict[str, Any], payload: memoryview) -> None:
        self._segments: list[dict[str, Any]] = header["segments"]
        self._payload = payload
        self._offsets: list[int] = []
        pos = 0
        for seg in self._segments:
            self._offsets.append(pos)
            pos += sum(seg["c"])
        if pos != len(payload):
            raise PayloadError(f"segments cover {pos} bytes, payload has {len(payload)}")

    def __len__(self) -> int:
        return len(self._segments)

    def _chunks(self, number: int) -> list[memoryview]:
        pos = self._offsets[number]
        chunks = []
        for length in self._segments[number]["c"]:
            chunks.append(self._payload[pos : pos + length])
            pos += length
        return chunks

    def get(self, number: int) -> bytearray:
        return decompress_into(self._chunks(number), int(self._segments[number]["n"]))

    def table(self, table: dict[str, Any]) -> _Table:
        groups = table["groups"]
        flats = [
            decompress_array(self._chunks(g["seg"]), self._segments[g["seg"]]["n"], dtype_of(g["store"]))
            for g in groups
        ]
        return _Table(table["cols"], decode_table(table["cols"], groups, flats, table["rows"]))


class _Table:
    """Decoded blocks plus where each table column sits in them."""

    def __init__(self, cols: list[dict[str, Any]], blocks: list[tuple[Column, list[int]]]) -> None:
        self.cols = cols
        self.blocks = blocks

    def column(self, number: int) -> Column:
        for block, members in self.blocks:
            if number in members:
                row: Column = block[members.index(number)]
                return row
        raise PayloadError(f"table has no column {number}")


def _make_index(spec: dict[str, Any], values: Column | None) -> pd.Index:
    kind = spec["t"]
    if kind == "range":
        return pd.RangeIndex(spec["start"], spec["stop"], spec["step"], name=spec["name"])
    if values is None:
        raise PayloadError("index values missing")
    if kind == "datetime":
        index = pd.DatetimeIndex(values, name=spec["name"], copy=False)
        if spec["tz"] is not None:
            index = index.tz_localize("UTC").tz_convert(spec["tz"])
        if spec["freq"] is not None:
            index.freq = spec["freq"]
        return index
    if kind == "array":
        return pd.Index(values, name=spec["name"], copy=False)
    raise PayloadError(f"unknown index type {kind!r}")


@functools.lru_cache(maxsize=256)
def _columns_index(labels: tuple[Any, ...], name: Any) -> pd.Index:
    # Index objects are immutable, so frames with the same columns can share
    # one; building a string Index costs more than decoding a small column.
    return pd.Index(list(labels), name=name)


def _one_block(parts: list[tuple[Column, list[tuple[int, int]]]], width: int, rows: int) -> Column:
    """The frame's columns as one (width x rows) array in frame order; ``parts`` share one dtype."""
    block, pairs = parts[0]
    if len(parts) == 1 and len(block) == width and all(row == pos for row, pos in pairs):
        return block  # decoded in frame order already: no copy
    out = np.empty((width, rows), dtype=block.dtype)
    for block, pairs in parts:
        used, places = zip(*pairs, strict=True)
        out[list(places)] = block[list(used)]
    return out


def _decode_frame(header: dict[str, Any], segs: _Segments) -> pd.DataFrame:
    table = segs.table(header["table"])
    positions: list[int] = header["pos"]
    has_index = bool(positions) and positions[0] == -1
    # Every frame column stored exactly once, so the assembly below neither
    # leaves a column out nor fills one twice.
    if sorted(positions) != list(range(-has_index, len(header["labels"]))):
        raise PayloadError("column positions do not place each column exactly once")
    index = _make_index(header["index"], table.column(0) if has_index else None)
    if header.get("columns_range") is not None:
        start, stop, step = header["columns_range"]
        columns: pd.Index = pd.RangeIndex(start, stop, step, name=header["columns_name"])
    else:
        columns = _columns_index(tuple(header["labels"]), header["columns_name"])
    # Each decoded block is a (k x rows) array of one dtype: its (row, frame
    # position) pairs, leaving out the index's row.
    parts: list[tuple[Column, list[tuple[int, int]]]] = []
    for block, members in table.blocks:
        pairs = [(row, positions[number]) for row, number in enumerate(members) if positions[number] >= 0]
        if pairs:
            parts.append((block, pairs))
    if parts and all(block.dtype == parts[0][0].dtype for block, _ in parts):
        # One dtype: a single 2-D array, which the public constructor takes as
        # the frame's one block without copying (~10 us).
        values = _one_block(parts, len(columns), len(index))
        return pd.DataFrame(values.T, index=index, columns=columns, copy=False)
    # Several dtypes: the public constructor makes a block of each column
    # (~10 us a column; int keys are the cheapest labels for it to index).
    data = {pos: block[row] for block, pairs in parts for row, pos in pairs}
    frame = pd.DataFrame(dict(sorted(data.items())), index=index, copy=False)
    frame.columns = columns
    return frame


def decode_payload(header: dict[str, Any], payload: memoryview) -> object:
    """Inverse of :func:`encode_payload`."""
    segs = _Segments(header, payload)
    kind = header["kind"]
    if kind == "frame":
        return _decode_frame(header, segs)
    if kind == "ndarray":
        return segs.table(header["table"]).column(0).reshape(header["shape"])
    if kind == "series":
        table = segs.table(header["table"])
        has_index = len(table.cols) == 2
        index = _make_index(header["index"], table.column(0) if has_index else None)
        values = table.column(len(table.cols) - 1)
        return pd.Series(values, index=index, name=header["name"], copy=False)
    if kind == "pickle":
        stream = segs.get(0)
        buffers: Sequence[bytearray] = [segs.get(i) for i in range(1, len(segs))]
        return pickle.loads(stream, buffers=buffers)
    raise PayloadError(f"unknown payload kind {kind!r}")
