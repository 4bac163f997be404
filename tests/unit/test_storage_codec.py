"""codec.py: bit-for-bit round trips, native column storage, HMAC, quarantine, legacy files."""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import os
import pickle
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tradingd.storage import chunks as chunks_module
from tradingd.storage.codec import (
    MAGIC,
    AuthenticationError,
    CodecSettings,
    CorruptPayloadError,
    FormatError,
    SecretError,
    decode,
    encode,
    load_or_create_secret,
    read_state,
    write_state,
)

SECRET = bytes(range(32))


def header_of(blob: bytes) -> dict[str, Any]:
    header_len = struct.unpack_from("<I", blob, 8)[0]
    header: dict[str, Any] = json.loads(blob[20 : 20 + header_len])
    return header


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)))


def assert_frames_identical(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True, check_freq=True)
    assert a.index.equals(b.index) and a.index.dtype == b.index.dtype
    for col in a.columns:
        assert same_bits(a[col].to_numpy(), b[col].to_numpy()), col


def ohlcv(rows: int, *, tick: float = 0.01, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close_ticks = 10_000 + np.cumsum(rng.integers(-50, 51, rows))
    spread = rng.integers(0, 40, (3, rows))
    decimals = max(0, round(-np.log10(tick)))
    close = np.round(close_ticks * tick, decimals)
    return pd.DataFrame(
        {
            "Open": np.round((close_ticks + spread[0] - 20) * tick, decimals),
            "High": np.round((close_ticks + spread[1]) * tick, decimals),
            "Low": np.round((close_ticks - spread[2]) * tick, decimals),
            "Close": close,
            "Volume": rng.integers(0, 10**6, rows) * 100,
        },
        index=pd.date_range("2015-01-01", periods=rows, freq="h", name="time"),
    )


# --- round trips -------------------------------------------------------------

ARRAYS = {
    "ticks": np.round(np.random.default_rng(1).normal(100, 5, 5000), 2),
    "random_f8": np.random.default_rng(2).normal(size=5000),
    "f4": np.random.default_rng(3).normal(size=300).astype(np.float32),
    "nan_inf_negzero": np.array([1.5, np.nan, -0.0, np.inf, -np.inf, 2.25]),
    "i8_extremes": np.array([np.iinfo(np.int64).min, -1, 0, 1, np.iinfo(np.int64).max]),
    "u8_extremes": np.array([0, 1, np.iinfo(np.uint64).max], dtype=np.uint64),
    "i1": np.array([-128, 0, 127], dtype=np.int8),
    "u2": np.arange(1000, dtype=np.uint16),
    "bool": np.random.default_rng(4).random(333) > 0.5,
    "complex": np.arange(10) * (1 + 2j),
    "datetime_nat": np.array(["2020-01-01", "NaT", "2021-06-30T12:00"], dtype="M8[ns]"),
    "timedelta": np.arange(0, 10**12, 10**9, dtype="m8[ns]"),
    "matrix": np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 4,
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "scalar": np.array(3.25),
    "empty": np.zeros((0, 3)),
    "constant": np.full(100, 7.77),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_arrays_round_trip_bit_for_bit_and_natively(name: str) -> None:
    arr = ARRAYS[name]
    blob = encode(arr)
    assert header_of(blob)["kind"] == "ndarray"
    back = decode(blob)
    assert isinstance(back, np.ndarray)
    assert same_bits(arr.copy(order="C"), back)
    assert back.flags.writeable


def test_tick_prices_are_stored_as_integers_and_noise_as_floats() -> None:
    groups_ticks = header_of(encode(ARRAYS["ticks"]))["table"]["groups"]
    assert groups_ticks[0]["enc"] == "int" and groups_ticks[0]["scale"] == 2
    groups_noise = header_of(encode(ARRAYS["random_f8"]))["table"]["groups"]
    assert groups_noise[0]["enc"] == "raw"
    # NaN / -0.0 cannot be ticks: the column falls back to raw floats, losslessly.
    assert header_of(encode(ARRAYS["nan_inf_negzero"]))["table"]["groups"][0]["enc"] == "raw"


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float64, np.float32, np.int64, np.int16, np.uint32, np.uint64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=40),
    )
)
def test_any_numeric_array_round_trips(arr: np.ndarray) -> None:
    assert same_bits(np.ascontiguousarray(arr), decode(encode(arr)))  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-(10**9), 10**9), min_size=1, max_size=200), st.integers(0, 6))
def test_decimal_prices_round_trip(ticks: list[int], decimals: int) -> None:
    prices = np.array(ticks, dtype=np.int64) / 10.0**decimals
    assert same_bits(prices, decode(encode(prices)))  # type: ignore[arg-type]


def test_ohlcv_frame_round_trips_natively_with_columns_against_close() -> None:
    df = ohlcv(3000)
    blob = encode(df)
    header = header_of(blob)
    assert header["kind"] == "frame"
    placed = zip(header["pos"], header["table"]["cols"], strict=True)
    ops = {header["labels"][pos]: col.get("op") for pos, col in placed if pos >= 0}
    assert ops["Close"] in {"delta", "none"}  # delta only when it saves >20% (decode speed)
    assert {ops["Open"], ops["High"], ops["Low"]} <= {"ref", "delta"}
    back = decode(blob)
    assert isinstance(back, pd.DataFrame)
    assert_frames_identical(df, back)
    # Far smaller than the pickled frame: that is the point of ticks + deltas.
    assert len(blob) * 4 < len(pickle.dumps(df, protocol=5))


@pytest.mark.parametrize(
    "frame",
    [
        ohlcv(500, tick=0.00001),
        ohlcv(10).reset_index(drop=True),
        ohlcv(50).tz_localize("UTC").tz_convert("America/New_York"),
        ohlcv(0),
        pd.DataFrame({"a": [1.5, np.nan, 3.0], "b": [True, False, True]}, index=pd.Index([10, 20, 30], name="k")),
        pd.DataFrame({"x": np.arange(5.0)}, index=pd.date_range("2020", periods=5, freq="D")),
        pd.DataFrame({1: np.arange(3), 2: np.arange(3.0)}).rename_axis(columns="cols"),
        pd.DataFrame(index=pd.RangeIndex(4)),
        pd.DataFrame({"n": [1, 2, 3], "m": [7, 8, 9]}, index=pd.Index([4, 5, 6])),
    ],
    ids=["fx", "range_index", "tz", "empty", "nan_bool_int_index", "freq", "int_labels", "no_columns", "index_grouped"],
)
def test_frames_round_trip(frame: pd.DataFrame) -> None:
    blob = encode(frame)
    assert header_of(blob)["kind"] == "frame"
    assert_frames_identical(frame, decode(blob))  # type: ignore[arg-type]


def test_frames_that_are_not_columnar_are_pickled_and_still_exact() -> None:
    df = pd.DataFrame({"sym": ["a", "b"], "px": [1.0, 2.0]})
    blob = encode(df, secret=SECRET)
    assert header_of(blob)["kind"] == "pickle"
    pd.testing.assert_frame_equal(decode(blob, secret=SECRET), df)  # type: ignore[arg-type]


def test_series_round_trips() -> None:
    s = ohlcv(200)["Close"]
    blob = encode(s)
    assert header_of(blob)["kind"] == "series"
    back = decode(blob)
    pd.testing.assert_series_equal(back, s, check_exact=True)  # type: ignore[arg-type]


@dataclasses.dataclass
class Model:
    name: str
    weights: np.ndarray


def test_pickled_objects_round_trip_with_arrays_out_of_band() -> None:
    obj = {"model": Model("m", np.arange(1000.0)), "tags": ("a", 1, None), "nested": [ohlcv(20)]}
    blob = encode(obj, secret=SECRET)
    header = header_of(blob)
    assert header["kind"] == "pickle" and len(header["segments"]) >= 2  # arrays as their own segments
    back = decode(blob, secret=SECRET)
    assert isinstance(back, dict)
    assert back["model"].name == "m" and same_bits(back["model"].weights, obj["model"].weights)  # type: ignore[attr-defined]
    assert back["tags"] == ("a", 1, None)
    assert_frames_identical(back["nested"][0], obj["nested"][0])  # type: ignore[index]


def test_large_segments_are_split_into_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks_module, "_CHUNK_BYTES", 4096)
    arr = np.random.default_rng(5).normal(size=10_000)
    blob = encode(arr)
    assert len(header_of(blob)["segments"][0]["c"]) > 1
    assert same_bits(arr, decode(blob))  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", ["zstd", "lz4", "lz4hc", "blosclz", "zlib"])
def test_every_codec_round_trips(codec: str) -> None:
    df = ohlcv(300)
    assert_frames_identical(df, decode(encode(df, settings=CodecSettings(codec=codec, level=9))))  # type: ignore[arg-type]


def test_compression_can_be_switched_off() -> None:
    df = ohlcv(300)
    blob = encode(df, settings=CodecSettings(enabled=False))
    assert blob[5] == 255
    assert_frames_identical(df, decode(blob))  # type: ignore[arg-type]


def test_settings_validate_and_map_from_config() -> None:
    from tradingd.config import CompressionConfig

    assert CodecSettings.from_config(CompressionConfig(codec="lz4", level=3)) == CodecSettings(True, "lz4", 3)
    with pytest.raises(ValueError, match="unknown codec"):
        CodecSettings(codec="brotli")
    with pytest.raises(ValueError, match="0-9"):
        CodecSettings(level=10)


# --- authentication and corruption -------------------------------------------


def test_pickle_needs_a_secret_both_ways() -> None:
    with pytest.raises(ValueError, match="secret"):
        encode({"a": 1})
    blob = encode({"a": 1}, secret=SECRET)
    with pytest.raises(AuthenticationError):
        decode(blob)
    with pytest.raises(AuthenticationError):
        decode(blob, secret=bytes(32))
    # Strip the MAC and clear the flag: refused (a CRC instead: see below).
    stripped = bytearray(blob[:-32])
    stripped[6] = 0
    with pytest.raises(FormatError, match="trailer"):
        decode(bytes(stripped), secret=SECRET)


def test_every_tampered_byte_is_refused() -> None:
    blob = encode({"x": np.arange(50.0)}, secret=SECRET)
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises((FormatError, AuthenticationError)):
            decode(bytes(bad), secret=SECRET)


def test_bad_magic_version_and_length() -> None:
    blob = encode(np.arange(10), secret=SECRET)
    with pytest.raises(FormatError, match="magic"):
        decode(b"XXXX" + blob[4:], secret=SECRET)
    with pytest.raises(FormatError, match="version"):
        decode(blob[:4] + bytes([99]) + blob[5:], secret=SECRET)
    with pytest.raises(FormatError, match="truncated"):
        decode(blob[:-1], secret=SECRET)
    with pytest.raises(FormatError, match="truncated"):
        decode(blob + b"\0", secret=SECRET)


def test_native_frames_carry_a_crc_and_every_tampered_byte_is_refused() -> None:
    blob = encode(ohlcv(40), secret=SECRET)
    assert blob[4] == 2 and blob[6] == 0x02  # format 2, CRC-32 trailer, no HMAC
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises((FormatError, CorruptPayloadError)):
            decode(bytes(bad), secret=SECRET)


def test_native_payloads_can_still_be_authenticated() -> None:
    df = ohlcv(100)
    blob = encode(df, secret=SECRET, authenticate="all")
    assert blob[6] == 0x01
    assert_frames_identical(df, decode(blob, secret=SECRET))  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError):
        decode(blob, secret=bytes(32))
    with pytest.raises(ValueError, match="authenticate"):
        encode(df, secret=SECRET, authenticate="none")


def test_a_crc_never_stands_in_for_the_hmac_on_a_pickle() -> None:
    blob = encode({"a": 1}, secret=SECRET)
    body = blob[:-32]
    forged = bytearray(body)
    forged[6] = 0x02
    forged += struct.pack("<I", zlib.crc32(bytes(forged)))
    with pytest.raises(AuthenticationError, match="unpickle"):
        decode(bytes(forged), secret=SECRET)


def test_version_2_needs_an_integrity_trailer() -> None:
    blob = bytearray(encode(np.arange(10.0))[:-4])
    blob[6] = 0
    with pytest.raises(FormatError, match="trailer"):
        decode(bytes(blob))


def _version_1_blob(obj: object) -> bytes:
    """What the version-1 writer produced: HMAC on every file, base/gcd spelt out."""
    blob = encode(obj, secret=SECRET, authenticate="all")
    header = header_of(blob)
    for col in header["table"]["cols"]:
        if col["enc"] == "int":
            col.setdefault("base", 0)
            col.setdefault("gcd", 1)
    text = json.dumps(header).encode()
    header_len = struct.unpack_from("<I", blob, 8)[0]
    payload = blob[20 + header_len : -32]
    body = struct.pack("<4sBBBBIQ", MAGIC, 1, blob[5], 0x01, 0, len(text), len(payload)) + text + payload
    return body + hmac.digest(SECRET, body, "sha256")


def test_version_1_files_still_load(state: tuple[Path, bytes]) -> None:
    df = ohlcv(500)
    old = _version_1_blob(df)
    assert old[4] == 1
    assert_frames_identical(df, decode(old, secret=SECRET))  # type: ignore[arg-type]
    state_dir, _ = state
    path = state_dir / "v1.bin"
    path.write_bytes(_version_1_blob(ohlcv(50)))
    back = read_state(path, secret=SECRET, quarantine_dir=state_dir / "q")
    assert isinstance(back, pd.DataFrame) and not (state_dir / "q").exists()
    # A version-1 file never had a CRC trailer.
    bad = bytearray(old)
    bad[6] = 0x02
    with pytest.raises(FormatError, match="flags"):
        decode(bytes(bad), secret=SECRET)


@pytest.mark.parametrize(
    "values",
    [
        np.array([2.0**52, 2.0**52 + 7, 2.0**52 - 3, -(2.0**52)]),  # ticks need int64 storage
        2.0**52 + np.arange(300.0),  # narrow storage, huge base: still exact in float
        np.round(1e9 + np.cumsum(np.random.default_rng(6).integers(-9, 10, 400)) * 0.001, 3),
    ],
    ids=["int64_ticks", "huge_base", "large_prices"],
)
def test_large_tick_values_decode_exactly(values: np.ndarray) -> None:
    df = pd.DataFrame({"Close": values, "Open": values[::-1].copy()})
    assert_frames_identical(df, decode(encode(df)))  # type: ignore[arg-type]


def test_corrupt_payload_without_mac_is_a_codec_error() -> None:
    blob = bytearray(encode(np.arange(1000.0)))
    blob[-10] ^= 0xFF
    with pytest.raises((CorruptPayloadError, FormatError)):
        decode(bytes(blob))


# --- files ---------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, bytes]:
    return tmp_path, load_or_create_secret(tmp_path)


def test_write_and_read_state(state: tuple[Path, bytes]) -> None:
    state_dir, secret = state
    path = state_dir / "caches" / "indicators.bin"
    df = ohlcv(1000)
    size = write_state(path, {"frame": df}, secret=secret)
    assert size == path.stat().st_size
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = read_state(path, secret=secret, quarantine_dir=state_dir / "quarantine")
    assert isinstance(back, dict)
    assert_frames_identical(back["frame"], df)
    assert read_state(state_dir / "missing.bin", secret=secret, quarantine_dir=state_dir / "quarantine") is None
    assert not (state_dir / "quarantine").exists()


@pytest.mark.parametrize(
    "damage", ["flip", "truncate", "version", "garbage", "legacy_garbage", "other_secret", "frame_flip"]
)
def test_bad_files_are_quarantined_and_logged(
    state: tuple[Path, bytes], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir, secret = state
    path = state_dir / "cache.bin"
    write_state(path, {"x": np.arange(100.0)}, secret=secret)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "version":
        data[4] = 99
    elif damage == "garbage":
        data = bytearray(b"hello world")
    elif damage == "legacy_garbage":
        data = bytearray(b"\x80\x05garbage")
    elif damage == "other_secret":
        data = bytearray(encode({"x": 1}, secret=bytes(32)))
    elif damage == "frame_flip":
        data = bytearray(encode(ohlcv(200), secret=secret))
        data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    quarantine = state_dir / "quarantine"
    with caplog.at_level(logging.WARNING, logger="tradingd.storage.codec"):
        assert read_state(path, secret=secret, quarantine_dir=quarantine) is None
    assert not path.exists()
    moved = list(quarantine.iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("cache.bin.")
    assert moved[0].read_bytes() == bytes(data)
    assert any("moved to" in r.getMessage() for r in caplog.records)
    # The next start does not trip over it again.
    assert read_state(path, secret=secret, quarantine_dir=quarantine) is None


def test_quarantine_never_overwrites(state: tuple[Path, bytes]) -> None:
    state_dir, secret = state
    for _ in range(3):
        (state_dir / "c.bin").write_bytes(b"junk")
        assert read_state(state_dir / "c.bin", secret=secret, quarantine_dir=state_dir / "q") is None
    assert len(list((state_dir / "q").iterdir())) == 3


def test_legacy_pickle_loads_and_is_migrated(state: tuple[Path, bytes]) -> None:
    state_dir, secret = state
    path = state_dir / "models" / "old.pkl"
    path.parent.mkdir()
    legacy = {"weights": np.arange(10.0), "name": "old"}
    path.write_bytes(pickle.dumps(legacy, protocol=4))
    back = read_state(path, secret=secret, quarantine_dir=state_dir / "quarantine")
    assert isinstance(back, dict) and back["name"] == "old"
    assert path.read_bytes().startswith(MAGIC)
    again = read_state(path, secret=secret, quarantine_dir=state_dir / "quarantine")
    assert isinstance(again, dict) and same_bits(again["weights"], legacy["weights"])  # type: ignore[arg-type]


def test_legacy_pickle_can_be_left_alone(state: tuple[Path, bytes]) -> None:
    state_dir, secret = state
    path = state_dir / "old.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    assert read_state(path, secret=secret, quarantine_dir=state_dir / "q", migrate=False) == [1, 2, 3]
    assert not path.read_bytes().startswith(MAGIC)


def test_secret_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path)
    key = tmp_path / "secret.key"
    assert len(first) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert load_or_create_secret(tmp_path) == first
    os.chmod(key, 0o644)
    assert load_or_create_secret(tmp_path) == first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temp files left


def test_damaged_secret_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_bytes(b"short")
    with pytest.raises(SecretError, match="expected 32"):
        load_or_create_secret(tmp_path)


def test_threads_encode_and_decode_concurrently() -> None:
    from concurrent.futures import ThreadPoolExecutor

    frames = [ohlcv(2000 + 10 * i, seed=i) for i in range(8)]

    def round_trip(df: pd.DataFrame) -> bool:
        for _ in range(5):
            assert_frames_identical(df, decode(encode(df, secret=SECRET), secret=SECRET))  # type: ignore[arg-type]
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(round_trip, frames))


def _with_header(blob: bytes, header_text: bytes) -> bytes:
    """``blob`` (CRC-trailed) with its JSON header replaced and the CRC recomputed."""
    header_len = struct.unpack_from("<I", blob, 8)[0]
    payload = blob[20 + header_len : -4]
    body = blob[:8] + struct.pack("<IQ", len(header_text), len(payload)) + header_text + payload
    return body + struct.pack("<I", zlib.crc32(body))


def test_a_header_that_places_a_column_twice_is_refused() -> None:
    # The decoder assembles frames from its own blocks; it must refuse
    # positions that do not cover each column exactly once.
    blob = encode(ohlcv(200))
    header = header_of(blob)
    header["pos"][2] = header["pos"][1]
    with pytest.raises(CorruptPayloadError):
        decode(_with_header(blob, json.dumps(header).encode()))


def test_a_header_with_surrounding_whitespace_still_parses() -> None:
    df = ohlcv(50)
    blob = encode(df)
    text = b"  " + json.dumps(header_of(blob), indent=1).encode() + b"\n"
    assert_frames_identical(df, decode(_with_header(blob, text)))  # type: ignore[arg-type]
    with pytest.raises(CorruptPayloadError, match="JSON"):
        decode(_with_header(blob, text + b"}"))


def test_frames_mixing_block_kinds_round_trip() -> None:
    rng = np.random.default_rng(11)
    df = pd.DataFrame(
        {
            "Close": np.round(100 + rng.normal(size=300).cumsum(), 2),
            "when": pd.date_range("2024-01-01", periods=300, freq="h").as_unit("ns"),
            "flag": rng.integers(0, 2, 300).astype(bool),
            "n": rng.integers(-5, 5, 300).astype(np.int16),
            "ratio": rng.normal(size=300).astype(np.float32),
        },
        index=pd.date_range("2020-01-01", periods=300, freq="D", tz="Europe/Paris", name="t"),
    )
    assert_frames_identical(df, decode(encode(df)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "frame",
    [
        ohlcv(300).astype(np.float64),
        pd.DataFrame({"a": np.arange(5.0), "b": np.arange(5.0) * 2}, index=pd.Index(np.arange(5.0) / 4, name="x")),
        pd.DataFrame(np.random.default_rng(5).normal(size=(100, 3)), columns=["p", "q", "r"]),
    ],
    ids=["ohlcv_all_float", "float_index_beside_columns", "one_block_in_order"],
)
def test_frames_of_one_dtype_round_trip(frame: pd.DataFrame) -> None:
    # Decoded in blocks by scale and with the close first, they come back as
    # one array in the frame's own column order.
    back = decode(encode(frame))
    assert_frames_identical(frame, back)  # type: ignore[arg-type]
    assert list(back.dtypes) == list(frame.dtypes)  # type: ignore[union-attr]
