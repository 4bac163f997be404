"""Memory limit discovery, usage sampling and pressure levels.

The effective limit is the smallest of the configured ``limit_mb``, the cgroup
limit of our own cgroup (and its ancestors) and physical RAM.
``psutil.virtual_memory()`` alone is wrong inside a container: it reports the
host. Usage is *anonymous* memory, so file-backed pages of memory-mapped market
data (which the kernel can drop at will) never count as pressure: the
daemon's own ``RssAnon``, or, when the limit is its cgroup's, the anonymous
memory of every process in that cgroup (helper processes and workers are
charged to the same limit, and the OOM killer counts them too).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "LevelListener",
    "MemoryLimit",
    "MemorySample",
    "Monitor",
    "PressureLevel",
    "discover_limit",
    "read_cgroup_anon",
    "read_cgroup_limit",
    "read_cgroup_usage",
    "sample_process",
]

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as a huge page-aligned number near 2**63.
_V1_UNLIMITED = 1 << 60


class PressureLevel(enum.IntEnum):
    NORMAL = 0
    GC = 1
    PRESSURE = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    """The limit in force and which source set it (``config``, ``cgroup``, ``physical``)."""

    bytes: int
    source: str
    candidates: dict[str, int]


@dataclass(frozen=True, slots=True)
class MemorySample:
    """One reading. ``used_bytes`` is what pressure levels are computed from."""

    time: float
    rss_bytes: int
    anon_rss_bytes: int
    cgroup_bytes: int | None
    used_bytes: int
    cgroup_anon_bytes: int | None = None  # every process of the cgroup (read when the limit is the cgroup's)

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _own_cgroup_dirs(root: Path, proc_cgroup: Path) -> tuple[list[Path], list[Path]]:
    """Directories of our v2 cgroup and its ancestors, and our v1 memory cgroup dirs."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return [], []
    v2: list[Path] = []
    v1: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if controllers == "":
            here = root / rel if rel else root
            # Walk up to the root: a parent's memory.max caps us as well.
            while True:
                v2.append(here)
                if here == root or root not in here.parents:
                    break
                here = here.parent
        elif "memory" in controllers.split(","):
            base = root / "memory"
            here = base / rel if rel else base
            v1.extend([here, base])
    return v2, v1


def read_cgroup_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Smallest memory limit of our cgroup and its ancestors (v2), or v1's limit.

    Inside a container the cgroup namespace makes our own cgroup look like the
    root, so ``/sys/fs/cgroup/memory.max`` is checked as well.
    """
    v2, v1 = _own_cgroup_dirs(root, proc_cgroup)
    limits = [limit for d in [*v2, root] if (limit := _read_int(d / "memory.max")) is not None]
    for d in v1:
        limit = _read_int(d / "memory.limit_in_bytes")
        if limit is not None and limit < _V1_UNLIMITED:
            limits.append(limit)
    return min(limits) if limits else None


def _stat_value(path: Path, keys: tuple[str, ...]) -> int:
    """First of ``keys`` found in a cgroup ``memory.stat`` file, else 0."""
    found: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in keys:
                found[key] = int(value)
    except (OSError, ValueError):
        return 0
    return next((found[k] for k in keys if k in found), 0)


def read_cgroup_usage(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Working set of our cgroup: usage minus inactive file pages (v2, else v1).

    Our own cgroup's directory comes first. Inside a container the path named in
    ``/proc/self/cgroup`` (``/docker/<id>``) does not exist in the container's view:
    there the mount point itself (``/sys/fs/cgroup`` on v2, ``/sys/fs/cgroup/memory``
    on v1) is our cgroup, so it is the fallback, as in :func:`read_cgroup_limit`.
    """
    v2, v1 = _own_cgroup_dirs(root, proc_cgroup)
    for d in [*v2[:1], root]:
        current = _read_int(d / "memory.current")
        if current is None:
            continue
        return max(current - _stat_value(d / "memory.stat", ("inactive_file",)), 0)
    for d in v1:
        usage = _read_int(d / "memory.usage_in_bytes")
        if usage is None:
            continue
        inactive = _stat_value(d / "memory.stat", ("total_inactive_file", "inactive_file"))
        return max(usage - inactive, 0)
    return None


def read_cgroup_anon(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Anonymous memory charged to our cgroup, all its processes (v2 ``anon``, v1 ``total_rss``).

    The same directories as :func:`read_cgroup_usage`, in the same order.
    """
    v2, v1 = _own_cgroup_dirs(root, proc_cgroup)
    for d in [*v2[:1], root]:
        if (d / "memory.current").exists():
            return _stat_value(d / "memory.stat", ("anon",))
    for d in v1:
        if (d / "memory.usage_in_bytes").exists():
            return _stat_value(d / "memory.stat", ("total_rss", "rss"))
    return None


def discover_limit(limit_mb: float | None, *, cgroup_limit: int | None = None) -> MemoryLimit:
    """Pick the smallest of the configured, cgroup and physical limits."""
    candidates: dict[str, int] = {"physical": int(psutil.virtual_memory().total)}
    cgroup = cgroup_limit if cgroup_limit is not None else read_cgroup_limit()
    if cgroup is not None:
        candidates["cgroup"] = cgroup
    if limit_mb is not None:
        candidates["config"] = int(limit_mb * 1024 * 1024)
    source = min(candidates, key=lambda k: candidates[k])
    return MemoryLimit(bytes=candidates[source], source=source, candidates=candidates)


def _anon_rss(process: psutil.Process) -> int:
    """Anonymous RSS: ``RssAnon`` from /proc, falling back to RSS minus shared."""
    try:
        with open(f"/proc/{process.pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    info = process.memory_info()
    shared = getattr(info, "shared", 0)
    return max(int(info.rss) - int(shared), 0)


def sample_process(process: psutil.Process | None = None, *, whole_cgroup: bool = False) -> MemorySample:
    """Read RSS, anonymous RSS and cgroup working set of this process now.

    ``whole_cgroup``: usage is the larger of our anonymous RSS and the
    cgroup's anonymous memory (our helper processes are in it too).
    """
    proc = process or psutil.Process()
    rss = int(proc.memory_info().rss)
    anon = _anon_rss(proc)
    group = read_cgroup_anon() if whole_cgroup else None
    return MemorySample(time=time.time(), rss_bytes=rss, anon_rss_bytes=anon, cgroup_bytes=read_cgroup_usage(),
                        used_bytes=max(anon, group or 0), cgroup_anon_bytes=group)


def _sample_cgroup() -> MemorySample:
    return sample_process(whole_cgroup=True)


Sampler = Callable[[], MemorySample]
LevelListener = Callable[[PressureLevel, PressureLevel], None]


class Monitor:
    """Samples memory into a ring buffer and turns usage into a pressure level.

    Levels rise as soon as usage crosses a threshold and fall only once usage is
    ``hysteresis`` (a fraction of the limit) below it, so the cleanup ladder does
    not flap around a boundary.
    """

    def __init__(
        self,
        limit: MemoryLimit,
        *,
        thresholds: tuple[float, float, float] = (0.70, 0.80, 0.90),
        hysteresis: float = 0.05,
        history_size: int = 600,
        sampler: Sampler | None = None,
    ) -> None:
        self.limit = limit
        self.thresholds = thresholds
        self.hysteresis = hysteresis
        self.history: deque[MemorySample] = deque(maxlen=history_size)
        self.level = PressureLevel.NORMAL
        # The limit of our cgroup binds every process in it: count them all.
        self._sampler = sampler or (_sample_cgroup if limit.source == "cgroup" else sample_process)
        self._listeners: list[LevelListener] = []

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else None
        used = f"{last.used_bytes / 2**20:.1f} MB" if last else "no samples"
        return f"<Monitor {used} of {self.limit.bytes / 2**20:.0f} MB ({self.limit.source}) level={self.level.label}>"

    @property
    def latest(self) -> MemorySample | None:
        return self.history[-1] if self.history else None

    def marks_bytes(self) -> dict[str, int]:
        """The gc/pressure/critical thresholds in bytes."""
        names = ("gc", "pressure", "critical")
        return {name: int(frac * self.limit.bytes) for name, frac in zip(names, self.thresholds, strict=True)}

    def stats(self) -> dict[str, Any]:
        """The ``memory`` section of /stats: limit, usage, level, marks and the last 300 samples."""
        latest = self.latest
        history = list(self.history)[-300:]
        return {
            "limit_bytes": self.limit.bytes,
            "limit_source": self.limit.source,
            "limit_candidates": self.limit.candidates,
            "rss_bytes": latest.rss_bytes if latest else None,
            "anon_rss_bytes": latest.anon_rss_bytes if latest else None,
            "cgroup_bytes": latest.cgroup_bytes if latest else None,
            "cgroup_anon_bytes": latest.cgroup_anon_bytes if latest else None,
            "used_bytes": latest.used_bytes if latest else None,
            "level": self.level.label,
            "marks_bytes": self.marks_bytes(),
            "history": {
                "time": [round(s.time, 3) for s in history],
                "used_bytes": [s.used_bytes for s in history],
                "rss_bytes": [s.rss_bytes for s in history],
            },
        }

    def level_for(self, used_bytes: int) -> PressureLevel:
        """Level for ``used_bytes`` given the current level (hysteresis on the way down)."""
        fraction = used_bytes / self.limit.bytes
        raw = PressureLevel.NORMAL
        for level, threshold in zip(
            (PressureLevel.GC, PressureLevel.PRESSURE, PressureLevel.CRITICAL), self.thresholds, strict=True
        ):
            if fraction >= threshold:
                raw = level
        if raw >= self.level:
            return raw
        # Falling: only step down to a level whose threshold (minus hysteresis) we are below.
        level = self.level
        while level > raw and fraction < self.thresholds[level - 1] - self.hysteresis:
            level = PressureLevel(level - 1)
        return level

    def sample(self) -> tuple[MemorySample, PressureLevel]:
        """Take a reading, record it, and return it with the (possibly new) level."""
        reading = self._sampler()
        self.history.append(reading)
        previous, self.level = self.level, self.level_for(reading.used_bytes)
        if self.level != previous:
            for listener in self._listeners:
                try:
                    listener(previous, self.level)
                except Exception:  # a broken listener must not stop sampling
                    log.exception("pressure level listener failed")
        return reading, self.level

    def add_listener(self, listener: LevelListener) -> None:
        """Call ``listener(old, new)`` from :meth:`sample` whenever the level changes."""
        self._listeners.append(listener)

    def usage_now(self) -> int:
        """Used bytes right now, without recording a sample or changing the level."""
        return self._sampler().used_bytes
