"""The one way tradingd writes a file.

Write to a temporary file in the same directory, flush, fsync, rename over the
target, fsync the directory. A crash at any point leaves either the old file or
the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

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


def _durable_temp(target: Path, data: bytes, mode: int) -> str:
    """Write ``data`` to a fsynced temp file beside ``target`` (created with ``mode``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
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


def atomic_write_bytes(path: Path | str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

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
    unreadable by strict parsers (``jq``, browsers).
    """
    text = json.dumps(obj, indent=indent, allow_nan=False, sort_keys=False)
    atomic_write_text(path, text + "\n", mode=mode)


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
