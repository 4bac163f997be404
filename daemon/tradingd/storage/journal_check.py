"""Is the outcome journal's SQLite file sound? The start-up check behind its rebuild.

SQLite is forgiving in a way that loses data silently: when it replays a
write-ahead log it stops at the first frame whose checksum fails and serves
whatever came before, so a damaged ``outcomes.sqlite-wal`` shows up as a
journal with fewer trades and no error. :func:`journal_problem` looks for
that before SQLite opens the file (it walks the WAL's frames and their
cumulative checksums), then runs ``PRAGMA integrity_check``.
:func:`quarantine_journal` moves the database and its ``-wal``/``-shm`` files
aside so the caller can rebuild from the primary data.

WAL format: https://www.sqlite.org/fileformat2.html#walformat
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import time
from pathlib import Path

from tradingd.storage.atomic import fsync_dir

__all__ = ["journal_problem", "quarantine_journal", "wal_problem"]

_WAL_MAGIC = (0x377F0682, 0x377F0683)
_WAL_HEADER = 32
_FRAME_HEADER = 24
_MASK = 0xFFFFFFFF


def _checksum(data: bytes, big_endian: bool, s0: int, s1: int) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & _MASK
        s1 = (s1 + words[i + 1] + s0) & _MASK
    return s0, s1


def wal_problem(wal: Path) -> str | None:
    """What is wrong with the write-ahead log ``wal``, or None (also for a missing or empty one).

    A frame of the current WAL generation (its salts match the header) whose
    checksum fails means committed transactions would be dropped on replay.
    A partial frame at the end is a write that never committed: not damage.
    """
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return None
    if not data:
        return None
    if len(data) < _WAL_HEADER:
        return f"{wal.name}: {len(data)}-byte header (a WAL header is {_WAL_HEADER} bytes)"
    magic, _version, page_size, _seq, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:_WAL_HEADER])
    if magic not in _WAL_MAGIC:
        return f"{wal.name}: not a SQLite WAL (magic {magic:#010x})"
    big_endian = bool(magic & 1)
    s0, s1 = _checksum(data[:24], big_endian, 0, 0)
    if (s0, s1) != (c1, c2):
        return f"{wal.name}: header checksum mismatch"
    if page_size < 512 or page_size & (page_size - 1):
        return f"{wal.name}: page size {page_size} is impossible"
    frame = _FRAME_HEADER + page_size
    offset = _WAL_HEADER
    number = 0
    while offset + frame <= len(data):
        header = data[offset:offset + _FRAME_HEADER]
        _page, _size, f_salt1, f_salt2, f1, f2 = struct.unpack(">6I", header)
        if (f_salt1, f_salt2) != (salt1, salt2):
            return None  # frames of an older generation follow: the current log ended here
        s0, s1 = _checksum(header[:8], big_endian, s0, s1)
        s0, s1 = _checksum(data[offset + _FRAME_HEADER:offset + frame], big_endian, s0, s1)
        if (s0, s1) != (f1, f2):
            return f"{wal.name}: frame {number} (offset {offset}) fails its checksum"
        offset += frame
        number += 1
    return None


def journal_problem(path: Path) -> str | None:
    """What is wrong with the SQLite database ``path`` (and its WAL), or None if it is sound or absent."""
    if not path.exists():
        return None
    problem = wal_problem(path.with_name(path.name + "-wal"))
    if problem is not None:
        return problem
    try:
        size = path.stat().st_size
        if size == 0:
            return None  # SQLite treats it as a new database; the caller decides whether that is a loss
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"{path.name}: {exc}"
    except OSError as exc:
        return f"{path.name}: cannot read it: {exc}"
    verdict = [str(row[0]) for row in rows]
    if verdict != ["ok"]:
        return f"{path.name}: integrity_check: {'; '.join(verdict[:3])}"
    return None


def quarantine_journal(path: Path, quarantine_dir: Path) -> Path | None:
    """Move the database and its ``-wal``/``-shm`` files into ``quarantine_dir``, as they are.

    Returns the database's new path (None if there was none). The caller logs
    (one line for the whole recovery); an OSError propagates.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = quarantine_dir / f"{path.name}.{stamp}"
    n = 1
    while target.exists():
        target = quarantine_dir / f"{path.name}.{stamp}.{n}"
        n += 1
    moved: Path | None = None
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            destination = target.with_name(target.name + suffix)
            try:
                os.replace(source, destination)
            except OSError:
                shutil.move(str(source), str(destination))  # another filesystem
            if not suffix:
                moved = destination
    fsync_dir(quarantine_dir)
    fsync_dir(path.parent)
    return moved
