"""The state dir: one daemon (or one ``run-workflow``) per directory, and nobody else can read it.

The state dir is mode 0700 and every state file in it 0600, whatever the
umask: :meth:`StateDirLock.acquire` creates (or tightens) the directory, and
:func:`secure_state_files` tightens the files and their folders — the lock,
``api_token``, ``secret.key``, the outcome journal and its WAL, ``caches/``,
``models/`` and ``quarantine/``. Results under ``<state_dir>/results`` are
only reachable through the 0700 directory.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

__all__ = ["LOCK_FILE", "STATE_DIR_MODE", "STATE_FILE_MODE", "StateDirLock", "StateDirLocked", "secure_state_files"]

log = logging.getLogger(__name__)

LOCK_FILE = "tradingd.lock"
STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600
_PRIVATE_FOLDERS = ("caches", "models", "quarantine")


def _tighten(path: Path, mode: int) -> bool:
    """Chmod ``path`` to ``mode`` if it allows more; True if it did. Symlinks are left alone."""
    try:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) & ~mode == 0:
            return False
        os.chmod(path, mode)
    except FileNotFoundError:
        return False
    except OSError as exc:  # not ours: say so, it is not worth refusing to start
        log.warning("cannot tighten the mode of %s to %o: %s", path, mode, exc.strerror)
        return False
    return True


def secure_state_files(state_dir: Path) -> int:
    """Tighten the state dir to 0700, its files to 0600 and its private folders to 0700; how many changed.

    The private folders are created here (0700) if missing, so the writers that
    fill them later never create them with the umask's mode.
    """
    changed = int(_tighten(state_dir, STATE_DIR_MODE))
    folders = [state_dir, *(state_dir / name for name in _PRIVATE_FOLDERS)]
    for folder in folders:
        if folder is not state_dir:
            try:
                folder.mkdir(mode=STATE_DIR_MODE, exist_ok=True)
            except OSError as exc:
                log.warning("cannot create %s: %s", folder, exc.strerror)
            changed += _tighten(folder, STATE_DIR_MODE)
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        changed += sum(_tighten(entry, STATE_FILE_MODE) for entry in entries if entry.is_file())
    if changed:
        log.info("tightened %d state path(s) in %s to 0700/0600", changed, state_dir)
    return changed


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
        self.path.parent.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, STATE_FILE_MODE)
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
        secure_state_files(self.path.parent)

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
