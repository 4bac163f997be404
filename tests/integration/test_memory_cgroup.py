"""A real memory limit: the daemon in a cgroup capped at 512 MiB, fed more than that.

Where the machine lets the test create a memory cgroup (root with a writable
cgroup v2 or v1 memory hierarchy), a daemon process runs inside one capped at
512 MiB while a container-like workload pushes about twice that through the
``indicators`` cache. The daemon must survive (no OOM kill), see the cgroup as
its limit, and its cleanup ladder must be what kept it under. Otherwise the
test is skipped with the exact reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CAP = 512 * 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")

DRIVER = """
import asyncio, json, sys, threading, time
import numpy as np
from tradingd.config import load_config
from tradingd.supervisor import Supervisor

TOTAL = int(sys.argv[2])

async def main() -> None:
    async with Supervisor(load_config(sys.argv[1])) as sup:
        print("PORT", sup.port, flush=True)
        cache = sup.memory.cache("indicators")
        pushed = 0
        waited = 0.0

        loop = asyncio.get_running_loop()

        def containers() -> None:
            nonlocal pushed, waited
            i = 0
            while pushed < TOTAL:
                if i == TOTAL // 2 // (4 * 2**20):  # halfway: the test probes the daemon, then lets us go on
                    print("HALFWAY", flush=True)
                    sys.stdin.readline()
                started = time.monotonic()
                # A new container waits on admission (on the loop) while it is paused.
                asyncio.run_coroutine_threadsafe(sup.memory.admission.wait(), loop).result()
                waited += time.monotonic() - started
                value = cache.get_or_compute(i, lambda: np.random.standard_normal(512 * 1024))  # 4 MiB
                pushed += value.nbytes
                i += 1
                time.sleep(0.01)

        await asyncio.to_thread(containers)
        sup.monitor.sample()
        snap = sup.stats.refresh()
        print("RESULT", json.dumps({
            "pushed": pushed,
            "admission_waited": waited,
            "memory": {k: snap["memory"][k] for k in ("limit_bytes", "limit_source", "level")},
            "peak_used": max(snap["memory"]["history"]["used_bytes"]),
            "runs": snap["cleanup"]["runs"],
            "freed": snap["cleanup"]["freed_bytes_total"],
            "pauses": snap["admission"]["pauses"],
            "cache_bytes": snap["caches"]["used_bytes"],
        }), flush=True)

asyncio.run(main())
"""


def _write(path: Path, text: str) -> None:
    # cgroupfs control files: a plain write(2), not a temp-file-and-rename.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _own_cgroup(controller: str) -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if (controller == "" and controllers == "") or controller in controllers.split(","):
            return rel.lstrip("/")
    return None


def _make_v2(name: str) -> tuple[Path | None, str]:
    rel = _own_cgroup("")
    if rel is None:
        return None, "no cgroup v2 entry in /proc/self/cgroup"
    here = CGROUP_ROOT / rel
    if "memory" not in (here / "cgroup.controllers").read_text().split():
        return None, f"cgroup v2 memory controller not available in {here}"
    try:
        if "memory" not in (here / "cgroup.subtree_control").read_text().split():
            _write(here / "cgroup.subtree_control", "+memory")
        child = here / name
        child.mkdir()
    except OSError as exc:
        return None, f"cannot create a cgroup v2 child with the memory controller under {here}: {exc}"
    try:
        _write(child / "memory.max", str(CAP))
        _write(child / "memory.swap.max", "0") if (child / "memory.swap.max").exists() else None
    except OSError as exc:
        child.rmdir()
        return None, f"cannot set memory.max in {child}: {exc}"
    return child, ""


def _make_v1(name: str) -> tuple[Path | None, str]:
    rel = _own_cgroup("memory")
    base = CGROUP_ROOT / "memory"
    if rel is None or not (base / "memory.limit_in_bytes").exists():
        return None, "no cgroup v1 memory hierarchy mounted at /sys/fs/cgroup/memory"
    child = base / rel / name
    try:
        child.mkdir()
    except OSError as exc:
        return None, f"cannot create a cgroup v1 memory child {child}: {exc}"
    try:
        _write(child / "memory.limit_in_bytes", str(CAP))
    except OSError as exc:
        child.rmdir()
        return None, f"cannot set memory.limit_in_bytes in {child}: {exc}"
    return child, ""


@pytest.fixture
def capped_cgroup() -> Iterator[tuple[Path, str]]:
    """A fresh memory cgroup capped at 512 MiB, or a skip that says why not."""
    if sys.platform != "linux":
        pytest.skip("cgroups are Linux-only")
    if os.geteuid() != 0:
        pytest.skip("creating a cgroup needs root (or a delegated subtree); not running as root")
    name = f"tradingd-test-{os.getpid()}"
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        child, why = _make_v2(name)
        version = "v2"
    else:
        child, why = _make_v1(name)
        version = "v1"
    if child is None:
        pytest.skip(why)
    yield child, version
    for _ in range(50):  # the process may take a moment to leave
        try:
            child.rmdir()
            break
        except OSError:
            time.sleep(0.1)


def _oom_kills(child: Path, version: str) -> int:
    stat = child / ("memory.events" if version == "v2" else "memory.oom_control")
    for line in stat.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_daemon_survives_a_workload_past_its_cgroup_cap(tmp_path: Path, capped_cgroup: tuple[Path, str]) -> None:
    child, version = capped_cgroup
    config = {
        "http": {"host": "127.0.0.1", "port": 0},
        "paths": {"state_dir": str(tmp_path / "state"), "results_dir": str(tmp_path / "results")},
        "memory": {"monitor_interval": 0.1},
        "cleanup": {"interval": 0.1},
        # Budgets far above the cap, as a careless operator might set them: the manager caps the
        # budget at the gc mark and the ladder handles the rest.
        "caches": {"budget_mb": 4096, "entries": {"indicators": {"max_mb": 4096}}},
    }
    config_path = tmp_path / "tradingd.yaml"
    config_path.write_text(yaml.safe_dump(config))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    procs = child / "cgroup.procs"
    command = f'echo $$ > {procs} && exec "{sys.executable}" {driver} {config_path} {2 * CAP}'
    proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("PORT"), first + proc.stderr.read() if proc.stderr else first
        port = int(first.split()[1])
        halfway = proc.stdout.readline()
        assert halfway.startswith("HALFWAY"), halfway + proc.stderr.read() if proc.stderr else halfway
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as resp:  # it still answers
            assert json.load(resp)["memory"]["limit_source"] == "cgroup"
        out, err = proc.communicate("go\n", timeout=80)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"daemon died with {proc.returncode}; oom kills: {_oom_kills(child, version)}\n{err}"
    assert _oom_kills(child, version) == 0
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:])
    print("cgroup workload:", result)
    assert result["memory"]["limit_source"] == "cgroup" and result["memory"]["limit_bytes"] == CAP
    assert result["pushed"] >= 2 * CAP  # twice the cap went through the cache
    assert result["peak_used"] < CAP
    assert result["runs"]["pressure"] + result["runs"]["critical"] >= 1  # the ladder did it, not luck
    # The rest of the 1 GiB leaves through the cache's own budget (capped at the gc mark); how much the
    # ladder takes depends on timing (and on malloc_trim returning freed pages): 185-600 MB seen.
    assert result["freed"] > CAP // 8
