"""Memory limit and usage from cgroup files, in the layouts a daemon meets.

Fake cgroup trees on disk (real files, the real parsing code): cgroup v2 and v1,
seen from the host (our own directory exists under the mount point) and from
inside a container (``/proc/self/cgroup`` names a host-side path such as
``/docker/<id>`` that does not exist in the container's view; the mount point
itself is our cgroup).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tradingd.memory.monitor import MemoryLimit, Monitor, read_cgroup_anon, read_cgroup_limit, read_cgroup_usage

MIB = 1 << 20
DOCKER_ID = "0123456789abcdef" * 4


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _proc_cgroup(tmp_path: Path, text: str) -> Path:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(text)
    return proc


def _v2_files(d: Path, *, limit: str, current: int, inactive_file: int) -> None:
    _write(d / "memory.max", f"{limit}\n")
    _write(d / "memory.current", f"{current}\n")
    _write(d / "memory.stat", f"anon {7 * MIB}\nfile 2\ninactive_file {inactive_file}\nactive_file 3\n")


def _v1_files(d: Path, *, limit: int, usage: int, inactive_file: int) -> None:
    _write(d / "memory.limit_in_bytes", f"{limit}\n")
    _write(d / "memory.usage_in_bytes", f"{usage}\n")
    _write(d / "memory.stat", f"cache 5\nrss 3\ninactive_file 7\ntotal_inactive_file {inactive_file}\n"
                              f"total_rss {9 * MIB}\n")


@pytest.mark.parametrize("where", ["host", "container-private-ns", "container-host-ns"])
def test_v2_limit_and_usage(tmp_path: Path, where: str) -> None:
    root = tmp_path / "cgroup"
    if where == "host":  # a systemd service: its own directory under the mount point
        rel = "system.slice/tradingd.service"
        own = root / rel
        _write(root / "system.slice" / "memory.max", "max\n")
    elif where == "container-private-ns":  # docker on v2: the namespace makes us the root
        rel, own = "", root
    else:  # --cgroupns=host: the named path is absent in the container's view
        rel, own = f"system.slice/docker-{DOCKER_ID}.scope", root
    _v2_files(own, limit=str(512 * MIB), current=300 * MIB, inactive_file=100 * MIB)
    proc = _proc_cgroup(tmp_path, f"0::/{rel}\n")

    assert read_cgroup_limit(root, proc) == 512 * MIB
    assert read_cgroup_usage(root, proc) == 200 * MIB
    assert read_cgroup_anon(root, proc) == 7 * MIB


def test_v2_parent_limit_caps_an_unlimited_child(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _v2_files(root / "app.slice" / "svc", limit="max", current=10 * MIB, inactive_file=0)
    _write(root / "app.slice" / "memory.max", f"{256 * MIB}\n")
    proc = _proc_cgroup(tmp_path, "0::/app.slice/svc\n")
    assert read_cgroup_limit(root, proc) == 256 * MIB
    assert read_cgroup_usage(root, proc) == 10 * MIB


@pytest.mark.parametrize("where", ["host", "container"])
def test_v1_limit_and_usage(tmp_path: Path, where: str) -> None:
    root = tmp_path / "cgroup"
    # A v1 ("hybrid") host: named hierarchies per controller plus an empty unified one.
    proc = _proc_cgroup(
        tmp_path,
        f"12:pids:/docker/{DOCKER_ID}\n9:memory:/docker/{DOCKER_ID}\n1:name=systemd:/docker/{DOCKER_ID}\n0::/\n",
    )
    own = root / "memory" / "docker" / DOCKER_ID if where == "host" else root / "memory"
    _v1_files(own, limit=512 * MIB, usage=300 * MIB, inactive_file=50 * MIB)
    if where == "host":  # the hierarchy's root is the whole machine: never ours when our own dir exists
        _write(root / "memory" / "memory.usage_in_bytes", f"{20_000 * MIB}\n")
        _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")

    assert read_cgroup_limit(root, proc) == 512 * MIB
    assert read_cgroup_usage(root, proc) == 250 * MIB
    # Every process of the cgroup (total_rss counts the children too), never the machine's.
    assert read_cgroup_anon(root, proc) == 9 * MIB


def test_v1_unlimited_and_no_cgroup_at_all(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = _proc_cgroup(tmp_path, "9:memory:/\n")
    _v1_files(root / "memory", limit=9223372036854771712, usage=42 * MIB, inactive_file=0)
    assert read_cgroup_limit(root, proc) is None
    assert read_cgroup_usage(root, proc) == 42 * MIB

    empty = tmp_path / "nothing"
    assert read_cgroup_limit(empty, _proc_cgroup(tmp_path, "0::/\n")) is None
    assert read_cgroup_usage(empty, _proc_cgroup(tmp_path, "0::/\n")) is None
    assert read_cgroup_anon(empty, _proc_cgroup(tmp_path, "0::/\n")) is None


def test_the_monitor_counts_the_whole_cgroup_only_when_its_limit_is_the_cgroups() -> None:
    # This process's own cgroup is real here: with a cgroup limit, usage is at least its anonymous RSS
    # and includes the cgroup's other processes; with any other limit, it is our RSS alone.
    by_cgroup = Monitor(MemoryLimit(64 * 1024 * MIB, "cgroup", {}))
    by_config = Monitor(MemoryLimit(64 * 1024 * MIB, "config", {}))
    sample, _ = by_cgroup.sample()
    assert sample.used_bytes >= sample.anon_rss_bytes
    assert sample.used_bytes == max(sample.anon_rss_bytes, sample.cgroup_anon_bytes or 0)
    own, _ = by_config.sample()
    assert own.cgroup_anon_bytes is None and own.used_bytes == own.anon_rss_bytes
