"""The WAL check sees what SQLite silently drops, and nothing else."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from tradingd.storage.journal_check import journal_problem, wal_problem


@contextlib.contextmanager
def open_with_wal(path: Path, rows: int) -> Iterator[Path]:
    """A database whose WAL holds ``rows`` committed inserts (the connection stays open)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    for i in range(rows):
        with conn:
            conn.execute("INSERT INTO t (v) VALUES (?)", (bytes([i % 251]) * 3000,))
    try:
        yield path.with_name(path.name + "-wal")
    finally:
        conn.close()


def test_a_sound_wal_and_a_torn_tail_are_not_damage(tmp_path: Path) -> None:
    with open_with_wal(tmp_path / "db.sqlite", 20) as wal:
        data = wal.read_bytes()
        assert wal_problem(wal) is None
        torn = tmp_path / "torn-wal"
        torn.write_bytes(data[: len(data) - 1000])  # a write that never completed
        assert wal_problem(torn) is None
        assert journal_problem(tmp_path / "db.sqlite") is None
    assert wal_problem(tmp_path / "missing-wal") is None


def test_a_flipped_byte_in_a_committed_frame_is_damage(tmp_path: Path) -> None:
    with open_with_wal(tmp_path / "db.sqlite", 20) as wal:
        data = bytearray(wal.read_bytes())
    page_size = int.from_bytes(data[8:12], "big")
    frame = 32 + 5 * (24 + page_size)
    data[frame + 24 + page_size - 10] ^= 0xFF
    damaged = tmp_path / "damaged-wal"
    damaged.write_bytes(bytes(data))
    problem = wal_problem(damaged)
    assert problem is not None and "frame 5" in problem and "checksum" in problem
    not_a_wal = tmp_path / "junk-wal"
    not_a_wal.write_bytes(b"\x01" * 100)
    assert "not a SQLite WAL" in str(wal_problem(not_a_wal))


def test_a_garbled_database_is_named(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    path.write_bytes(b"this is not a database" * 300)
    assert "db.sqlite" in str(journal_problem(path))
    path.write_bytes(b"")
    assert journal_problem(path) is None  # an empty file is a new database; the caller decides
