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

try:  # pandas >= 2.3: build a frame from ready-made blocks, no consolidation pass
    from pandas.api.internals import create_dataframe_from_blocks as _from_blocks
except ImportError:  # pragma: no cover - older pandas
    _from_blocks = None

try:  # the internals that public function wraps, minus its integrity pass
    from pandas._libs.internals import BlockPlacement as _Placement
    from pandas.core.internals.blocks import NumpyBlock as _NumpyBlock
    from pandas.core.internals.managers import BlockManager as _BlockManager
except ImportError:  # pragma: no cover - other pandas versions
    _NumpyBlock = None


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
        index = _datetime_index(values, spec["name"])
        if spec["tz"] is not None:
            index = index.tz_localize("UTC").tz_convert(spec["tz"])
        if spec["freq"] is not None:
            index.freq = spec["freq"]
        return index
    if kind == "array":
        return pd.Index(values, name=spec["name"], copy=False)
    raise PayloadError(f"unknown index type {kind!r}")


def _datetime_index(values: Column, name: Any) -> pd.DatetimeIndex:
    """A naive DatetimeIndex over ``values`` (datetime64 in s/ms/us/ns), no copy.

    The public constructor re-validates and re-infers what the encoder already
    guarantees and costs ~8 us, a tenth of decoding a 2,000-row frame; pandas'
    ``_simple_new`` pair wraps the array as is (~1 us). It is private API, so
    any surprise falls back to the public constructor, and the round-trip
    tests compare the result with the original index either way.
    """
    if values.dtype in _DATETIME_DTYPES and values.flags.c_contiguous:
        try:
            array = _DatetimeArray._simple_new(values, dtype=values.dtype)
            index: pd.DatetimeIndex = pd.DatetimeIndex._simple_new(array, name=name)
        except (AttributeError, TypeError, ValueError):  # pragma: no cover - other pandas versions
            pass
        else:
            if type(index) is pd.DatetimeIndex and index.dtype == values.dtype:
                return index
    return pd.DatetimeIndex(values, name=name)


_DatetimeArray: Any = pd.arrays.DatetimeArray
_DATETIME_DTYPES = frozenset(np.dtype(f"M8[{unit}]") for unit in ("s", "ms", "us", "ns"))


@functools.lru_cache(maxsize=256)
def _columns_index(labels: tuple[Any, ...], name: Any) -> pd.Index:
    # Index objects are immutable, so frames with the same columns can share
    # one; building a string Index costs more than decoding a small column.
    return pd.Index(list(labels), name=name)


def _frame_from_blocks(blocks: list[tuple[Column, Column]], index: pd.Index, columns: pd.Index) -> pd.DataFrame | None:
    """A DataFrame over ready-made 2-D numpy blocks, or None to use the public path.

    ``create_dataframe_from_blocks`` costs ~6 us, most of it re-checking what
    the decoder has already checked (one row per column, every position once,
    equal lengths); building the manager without that pass costs ~2 us. These
    are private pandas APIs, so only numpy float/int/bool blocks take this path
    (datetime blocks need pandas' own wrapping), any surprise falls back, and
    the round-trip tests compare every decoded frame with its original.
    """
    if _NumpyBlock is None:  # pragma: no cover - other pandas versions
        return None
    seen = 0
    for block, places in blocks:
        if block.ndim != 2 or block.dtype.kind not in "biuf" or block.shape != (len(places), len(index)):
            return None
        seen += len(places)
    if seen != len(columns):
        return None
    try:
        made = tuple(_NumpyBlock(block, _Placement(places), 2) for block, places in blocks)
        manager = _BlockManager(made, [columns, index], verify_integrity=False)
        frame: pd.DataFrame = pd.DataFrame._from_mgr(manager, manager.axes)
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - other pandas versions
        return None
    return frame


def _decode_frame(header: dict[str, Any], segs: _Segments) -> pd.DataFrame:
    table = segs.table(header["table"])
    positions: list[int] = header["pos"]
    has_index = bool(positions) and positions[0] == -1
    # Every frame column stored exactly once: neither pandas' public block
    # constructor nor the fast path below would notice a duplicate.
    if sorted(positions) != list(range(-has_index, len(header["labels"]))):
        raise PayloadError("column positions do not place each column exactly once")
    index = _make_index(header["index"], table.column(0) if has_index else None)
    if header.get("columns_range") is not None:
        start, stop, step = header["columns_range"]
        columns: pd.Index = pd.RangeIndex(start, stop, step, name=header["columns_name"])
    else:
        columns = _columns_index(tuple(header["labels"]), header["columns_name"])
    # Each decoded block is already a (k x rows) array of one dtype: it
    # becomes a DataFrame block as is, without copying or consolidating.
    blocks: list[tuple[Column, Column]] = []
    for block, members in table.blocks:
        places = [positions[c] for c in members]
        if -1 in places:
            keep = [row for row, pos in enumerate(places) if pos >= 0]
            if not keep:
                continue
            block = block[keep]
            places = [places[row] for row in keep]
        blocks.append((block, np.array(places, dtype=np.intp)))
    if blocks:
        frame = _frame_from_blocks(blocks, index, columns)
        if frame is not None:
            return frame
    if _from_blocks is not None and blocks:
        return _from_blocks(blocks, index=index, columns=columns)
    data = {int(pos): block[i] for block, places in blocks for i, pos in enumerate(places)}
    df = pd.DataFrame(dict(sorted(data.items())), index=index, copy=False)
    df.columns = columns
    return df


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
