"""The one way tradingd writes a file.

Write to a temporary file in the same directory, flush, fsync, rename over the
target, fsync the directory. A crash at any point leaves either the old file or
the new one, never a torn one.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tradingd.storage.json_pieces import json_pieces

__all__ = [
    "atomic_create_bytes",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
]


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_temp(target: Path, data: bytes | Iterable[bytes], mode: int) -> str:
    """Write ``data`` (or its pieces) to a fsynced temp file beside ``target`` (created with ``mode``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as tmp:
            if isinstance(data, bytes):
                tmp.write(data)
            else:
                tmp.writelines(data)
            tmp.flush()
            os.fsync(tmp.fileno())
    except BaseException:
        # Includes CancelledError/KeyboardInterrupt: never leave temp files behind.
        _discard(tmp_name)
        raise
    return tmp_name


def _discard(tmp_name: str) -> None:
    try:
        os.unlink(tmp_name)
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: Path | str, data: bytes | Iterable[bytes], *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (bytes, or their pieces in order) atomically and durably.

    ``mode`` is applied to the temp file before any byte is written, so a
    secret is never readable by others, not even for a moment.
    """
    target = Path(path)
    tmp_name = _durable_temp(target, data, mode)
    try:
        os.replace(tmp_name, target)
    except BaseException:
        _discard(tmp_name)
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: Path | str, text: str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: Path | str, obj: Any, *, mode: int = 0o644, indent: int | None = 2) -> None:
    """Replace ``path`` with ``obj`` serialised as JSON atomically.

    NaN and infinities are refused: they are not JSON and would make the file
    unreadable by strict parsers (``jq``, browsers). The text is encoded and
    written in pieces (:func:`~tradingd.storage.json_pieces.json_pieces`): the
    GIL is never held for the whole document, and the document's text is never
    in memory all at once.
    """
    pieces = (piece.encode("utf-8") for piece in json_pieces(obj, indent=indent))
    atomic_write_bytes(path, itertools.chain(pieces, [b"\n"]), mode=mode)


def atomic_create_bytes(path: Path | str, data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``path`` with ``data`` only if it does not exist yet; never overwrite.

    The file appears complete or not at all (written to a temp file, then
    hard-linked into place, which fails if the name exists). Returns True when
    this call created the file, False when another writer got there first.
    """
    target = Path(path)
    tmp_name = _durable_temp(target, data, mode)
    try:
        try:
            os.link(tmp_name, target)
        except FileExistsError:
            return False
        except OSError:
            # Filesystems without hard links: a best-effort check-then-rename.
            if target.exists():
                return False
            os.replace(tmp_name, target)
    finally:
        _discard(tmp_name)
    fsync_dir(target.parent)
    return True
