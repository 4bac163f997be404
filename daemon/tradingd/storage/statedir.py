"""The state-dir lock: one daemon (or one ``run-workflow``) per state directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_FILE", "StateDirLock", "StateDirLocked"]

LOCK_FILE = "tradingd.lock"


class StateDirLocked(Exception):
    """Another daemon already owns the state dir; ``holder`` is its pid (as the lock file says)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class StateDirLock:
    """An exclusive ``flock`` on ``<state_dir>/tradingd.lock`` holding our pid.

    The kernel drops the lock when the process dies, so a crash never leaves a
    stale lock; a clean stop also removes the file.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StateDirLocked` naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirLocked(
                f"state dir {self.path.parent} is in use by another tradingd (pid {holder}); "
                "stop it or choose another paths.state_dir",
                holder,
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        # Unlink while still holding the lock so no other daemon can grab the old inode.
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
