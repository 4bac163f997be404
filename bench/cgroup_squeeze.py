"""Issue 17's workload in a memory cgroup: never OOM-killed, same results, how much slower.

The daemon runs in a fresh memory cgroup (root; v2 or v1) capped at each
size in turn, and once without a cap; four specs go in over HTTP at once —
a 4-symbol SMA sweep of ~3,400 combinations (containers of 2,000, batches of
200), an adaptive-trend walk-forward over all symbols with a 199 x 4 grid,
``config/workflows/ml.yaml`` and ``config/workflows/walk_forward.yaml``.
Per cap: OOM kills (must be 0), peak anonymous usage of the cgroup (sampled
every 50 ms), wall time relative to the unconstrained run of the same
invocation, time containers waited for grants, the largest estimate-vs-peak
error per container kind (from /stats), and whether every container's
metrics equal the unconstrained run's.

    .venv/bin/python bench/cgroup_squeeze.py [--caps 1024,512,384] [--out bench/results/cgroup_squeeze.md]

The integration test tests/integration/test_memory_squeeze.py drives the same
functions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")
SPECS = (
    REPO / "bench" / "workloads" / "squeeze_sma.yaml",
    REPO / "bench" / "workloads" / "squeeze_adaptive.yaml",
    REPO / "config" / "workflows" / "ml.yaml",
    REPO / "config" / "workflows" / "walk_forward.yaml",
)
DRIVER = """
import asyncio, sys
from tradingd.config import load_config
from tradingd.supervisor import Supervisor

async def main() -> None:
    async with Supervisor(load_config(sys.argv[1])) as sup:
        print("PORT", sup.port, flush=True)
        await asyncio.to_thread(sys.stdin.readline)

asyncio.run(main())
"""


# --- cgroups -----------------------------------------------------------------------


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


@dataclass
class Cgroup:
    """A memory cgroup this process created (v1 or v2)."""

    path: Path
    version: str

    def oom_kills(self) -> int:
        stat = self.path / ("memory.events" if self.version == "v2" else "memory.oom_control")
        for line in stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def anon_bytes(self) -> int:
        """Anonymous memory charged to the cgroup (what the OOM killer cannot reclaim)."""
        keys = ("anon",) if self.version == "v2" else ("total_rss",)
        for line in (self.path / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in keys:
                return int(value)
        return 0

    def procs(self) -> Path:
        return self.path / "cgroup.procs"


def make_cgroup(name: str, cap_bytes: int) -> tuple[Cgroup | None, str]:
    """A fresh memory cgroup capped at ``cap_bytes``, or None and the reason."""
    if sys.platform != "linux":
        return None, "cgroups are Linux-only"
    if os.geteuid() != 0:
        return None, "creating a cgroup needs root"
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        rel = _own_cgroup("")
        if rel is None:
            return None, "no cgroup v2 entry in /proc/self/cgroup"
        here = CGROUP_ROOT / rel
        try:
            if "memory" not in (here / "cgroup.subtree_control").read_text().split():
                _write(here / "cgroup.subtree_control", "+memory")
            child = here / name
            child.mkdir()
            _write(child / "memory.max", str(cap_bytes))
            if (child / "memory.swap.max").exists():
                _write(child / "memory.swap.max", "0")
        except OSError as exc:
            return None, f"cannot create a capped cgroup v2 child under {here}: {exc}"
        return Cgroup(child, "v2"), ""
    rel = _own_cgroup("memory")
    base = CGROUP_ROOT / "memory"
    if rel is None or not (base / "memory.limit_in_bytes").exists():
        return None, "no cgroup v1 memory hierarchy mounted at /sys/fs/cgroup/memory"
    child = base / rel / name
    try:
        child.mkdir()
        _write(child / "memory.limit_in_bytes", str(cap_bytes))
    except OSError as exc:
        return None, f"cannot create a capped cgroup v1 memory child {child}: {exc}"
    return Cgroup(child, "v1"), ""


def remove_cgroup(group: Cgroup) -> None:
    for _ in range(100):  # the process may take a moment to leave
        try:
            group.path.rmdir()
            return
        except OSError:
            time.sleep(0.1)


# --- one run -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run of the workload did."""

    cap_bytes: int | None
    statuses: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)   # (spec, phase, container) -> metrics rows
    wall_seconds: float = 0.0
    oom_kills: int = 0
    returncode: int | None = None
    peak_anon_bytes: int = 0
    limit_source: str = ""
    work: dict[str, Any] = field(default_factory=dict)
    grant_wait_seconds: float = 0.0
    stderr: str = ""


class _Sampler:
    """Samples the cgroup's anonymous bytes every 50 ms in a thread."""

    def __init__(self, group: Cgroup | None) -> None:
        self.group = group
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.group is not None and not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.group.anon_bytes())
            except OSError:
                return

    @contextmanager
    def running(self) -> Iterator[None]:
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()


def run_workload(tmp: Path, cap_bytes: int | None, *, timeout: float = 1500.0) -> Outcome:
    """Start the daemon (in a cgroup capped at ``cap_bytes`` if given), submit the specs, wait for them."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = {
        "http": {"host": "127.0.0.1", "port": 0},
        "paths": {"state_dir": str(tmp / "state"), "results_dir": str(tmp / "results")},
        "memory": {"monitor_interval": 0.1},
        "cleanup": {"interval": 0.1},
    }
    (tmp / "tradingd.yaml").write_text(yaml.safe_dump(config))
    (tmp / "driver.py").write_text(DRIVER)
    group: Cgroup | None = None
    if cap_bytes is not None:
        group, why = make_cgroup(f"tradingd-squeeze-{os.getpid()}-{cap_bytes // MB}", cap_bytes)
        if group is None:
            raise RuntimeError(why)
    command = [sys.executable, str(tmp / "driver.py"), str(tmp / "tradingd.yaml")]
    if group is not None:
        command = ["sh", "-c", f'echo $$ > {group.procs()} && exec "$0" "$@"', *command]
    env = dict(os.environ, PYTHONPATH=str(REPO / "daemon"))
    outcome = Outcome(cap_bytes)
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    sampler = _Sampler(group)
    try:
        with sampler.running():
            _drive(proc, tmp, outcome, timeout)
    finally:
        try:  # asked to stop (or died): its stop sequence persists caches, which takes a while
            _, outcome.stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, outcome.stderr = proc.communicate(timeout=60)
        outcome.returncode = proc.returncode
        if group is not None:
            outcome.oom_kills = group.oom_kills()
            outcome.peak_anon_bytes = sampler.peak
            remove_cgroup(group)
    outcome.metrics = container_metrics(tmp / "results")
    return outcome


def _drive(proc: subprocess.Popen[str], tmp: Path, outcome: Outcome, timeout: float) -> None:
    assert proc.stdout is not None and proc.stdin is not None
    first = proc.stdout.readline()
    if not first.startswith("PORT"):
        raise RuntimeError(f"the daemon did not start: {first!r}")
    port = int(first.split()[1])
    token = (tmp / "state" / "api_token").read_text().strip()

    def call(method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/yaml"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.load(resp)

    started = time.monotonic()
    runs = {spec.stem: call("POST", "/runs", spec.read_bytes())["id"] for spec in SPECS}
    deadline = started + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            outcome.statuses = {name: call("GET", f"/runs/{run}")["status"] for name, run in runs.items()}
            stats = call("GET", "/stats")
        except OSError:
            continue  # dying, or the loop is busy: the next round tells
        outcome.work = stats.get("work", {})
        outcome.limit_source = stats["memory"]["limit_source"]
        if all(s in ("completed", "failed", "cancelled") for s in outcome.statuses.values()):
            break
        time.sleep(0.25)
    outcome.wall_seconds = time.monotonic() - started
    outcome.grant_wait_seconds = float(outcome.work.get("wait_seconds_total", 0.0))
    if proc.poll() is None:
        proc.stdin.write("stop\n")
        proc.stdin.flush()


def container_metrics(results: Path) -> dict[str, Any]:
    """Every container's metrics rows, keyed by spec name, phase and container id."""
    out: dict[str, Any] = {}
    for path in sorted(results.glob("*/*/containers/*.json")):
        doc = json.loads(path.read_text())
        spec = path.parents[2].name.split("-", 3)[-1]
        out[f"{spec}/{doc['phase']}/{doc['container_id']}"] = (doc["status"], doc["metrics"])
    return out


# --- the bench ----------------------------------------------------------------------------


def _row(outcome: Outcome, free: Outcome) -> str:
    cap = f"{outcome.cap_bytes // MB} MiB" if outcome.cap_bytes else "none"
    same = "yes" if outcome.metrics == free.metrics else "NO"
    errors = ", ".join(f"{kind} {seen['largest_error']:+.2f}"
                       for kind, seen in sorted(outcome.work.get("estimate_errors", {}).items())) or "-"
    statuses = ",".join(sorted(set(outcome.statuses.values())))
    return (f"| {cap} | {outcome.oom_kills} | {statuses} | {outcome.peak_anon_bytes / MB:.0f} MiB | "
            f"{outcome.wall_seconds / free.wall_seconds:.2f}x ({outcome.wall_seconds:.0f} s) | "
            f"{outcome.grant_wait_seconds:.1f} s | {same} | {errors} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", default="1024,512,384", help="caps in MiB, comma separated")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cgroup_squeeze.md")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/tradingd-cgroup-squeeze"))
    args = parser.parse_args()
    free = run_workload(args.tmp / "free", None)
    print("unconstrained:", free.statuses, f"{free.wall_seconds:.0f} s", flush=True)
    rows = []
    for cap in (int(c) * MB for c in args.caps.split(",")):
        outcome = run_workload(args.tmp / f"cap-{cap // MB}", cap)
        rows.append(_row(outcome, free))
        print(rows[-1], flush=True)
    table = "\n".join([
        "# Issue 17's workload under memory caps (bench/cgroup_squeeze.py)",
        "",
        "Four specs submitted at once (SMA sweep ~3,400 combos in containers of 2,000; adaptive-trend",
        "walk-forward over all symbols, 199 x 4; ml.yaml; walk_forward.yaml). Wall time relative to the",
        "unconstrained run of the same invocation; estimate errors are tracemalloc-free, so only kinds",
        "measured (tests, benches with tracing) show; 'same' compares every container's metrics.",
        "",
        f"Unconstrained: {free.wall_seconds:.0f} s.",
        "",
        "| cap | OOM kills | statuses | peak anon | wall vs free | grant wait | same results | estimate errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
