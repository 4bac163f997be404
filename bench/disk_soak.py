"""Disk soak: the backtest spec submitted N times in a row against a daemon with retention on.

Starts ``tradingd run`` as a subprocess on a fresh state dir (thread executor, no
startup workflows, retention ``max_runs``/``max_bytes`` from the flags), submits
``config/workflows/backtest.yaml`` one run after another (each waits for the
previous to finish), and every ``--every`` runs records:

- results + state bytes on disk (must plateau under the retention cap),
- the daemon's anonymous RSS, threads and open fds (flat after warm-up): RSS is
  read as the run completes and again after ``--settle`` seconds idle (the
  daemon trims freed heap once work has settled, at most every 5 s, so the
  idle figure is what an operator sees between runs; the growth verdict uses
  it, both columns are reported),
- the runs ``/runs`` reports (retention keeps the registry bounded).

Start-up time (``tradingd run`` to ``/ready`` 200) is measured on the empty
state dir and again, with a restart, on the state the soak left behind: it
must not grow with the number of runs ever made.

    .venv/bin/python bench/disk_soak.py [--runs 1500] [--every 100] [--max-runs 50] [--settle 7]

Writes bench/results/disk_soak.md (``--out``) after every sample, so an
interrupted soak still leaves its table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from statistics import median
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "config" / "workflows" / "backtest.yaml"
RESULTS = ROOT / "bench" / "results" / "disk_soak.md"
sys.path.insert(0, str(ROOT / "daemon"))

from tradingd.workflows.retention import dir_bytes  # noqa: E402  (what retention counts, counted the same way)

MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "Threads"):
                fields[key] = int(value.split()[0])
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return fields


class Daemon:
    """``tradingd run`` on a config, with a tiny HTTP client."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.process: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self, state: Path) -> float:
        """Start and return the seconds until /ready answers 200."""
        started = time.perf_counter()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "tradingd", "run", "--config", str(self.config)],
                                            stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=2) as reply:
                    if reply.status == 200:
                        self.token = (state / "api_token").read_text().strip()
                        return time.perf_counter() - started
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.05)
        raise RuntimeError(f"daemon did not become ready (see {self.log})")

    def call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/yaml"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return dict(json.loads(reply.read()))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)
            self.process = None


def report(rows: list[dict[str, Any]], args: argparse.Namespace, startup_empty: float,
           startup_history: float | None) -> list[str]:
    """Write bench/results/disk_soak.md from the samples so far; return its lines."""
    first = next((r for r in rows if r["runs"] >= args.every), rows[0])
    last = rows[-1]
    growth = last["idle_anon_mb"] - first["idle_anon_mb"]
    growth_busy = last["anon_mb"] - first["anon_mb"]
    plateau = max(r["results_mb"] for r in rows) <= args.max_mb * 1.05
    restart = (f"{startup_history:.2f} s with the history of {last['runs']} runs (median of 2 restarts)"
               if startup_history is not None else "not measured (soak interrupted)")
    lines = [
        "# Disk soak: the backtest spec, one run after another, retention on",
        "",
        f"`python bench/disk_soak.py --runs {args.runs} --every {args.every} --max-runs {args.max_runs} "
        f"--max-mb {args.max_mb} --settle {args.settle:g}` (spec: config/workflows/backtest.yaml, thread executor); "
        f"{last['runs']} of {args.runs} runs done.",
        "",
        "| runs | results MB | state MB (incl. results) | anon RSS MB at completion | anon RSS MB idle "
        f"{args.settle:g} s | threads | fds | /runs total | elapsed s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {r['runs']} | {r['results_mb']:.1f} | {r['state_mb']:.1f} | {r['anon_mb']:.1f} | "
          f"{r['idle_anon_mb']:.1f} | {r['threads']} | {r['fds']} | {r['listed']} | {r['seconds']:.0f} |"
          for r in rows),
        "",
        f"- results plateau under the {args.max_mb} MB cap: **{'yes' if plateau else 'NO'}**",
        f"- anonymous RSS run {first['runs']} → {last['runs']}, idle: {growth:+.1f} MB (target < 5 MB: "
        f"**{'met' if growth < 5 else 'NOT met'}**); at completion: {growth_busy:+.1f} MB",
        f"- threads {first['threads']} → {last['threads']}, fds {first['fds']} → {last['fds']}",
        f"- start-up to /ready: {startup_empty:.2f} s on an empty state dir, {restart}",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--max-runs", type=int, default=50, help="retention.max_runs")
    parser.add_argument("--max-mb", type=int, default=200, help="retention.max_bytes in MB")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the result file (written after every sample)")
    parser.add_argument("--settle", type=float, default=7.0,
                        help="seconds idle before the second RSS reading at each sample")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tradingd-disk-soak-"))
    state, port = work / "state", free_port()
    config = work / "tradingd.yaml"
    config.write_text(yaml.safe_dump({
        "http": {"host": "127.0.0.1", "port": port},
        "paths": {"state_dir": str(state), "results_dir": str(state / "results")},
        "retention": {"max_runs": args.max_runs, "max_bytes": args.max_mb * MB},
        "disk": {"check_interval": 1.0},
        "logging": {"level": "WARNING"},
        "startup_workflows": [],
    }))
    spec = SPEC.read_bytes()
    daemon = Daemon(config, port, work / "daemon.log")
    rows: list[dict[str, Any]] = []
    try:
        startup_empty = daemon.start(state)
        t0 = time.perf_counter()
        for n in range(1, args.runs + 1):
            run_id = daemon.call("POST", "/runs", spec)["id"]
            while daemon.call("GET", f"/runs/{run_id}")["status"] in ("queued", "running"):
                time.sleep(0.02)
            if n % args.every == 0 or n == args.runs:
                assert daemon.process is not None
                figures = proc_status(daemon.process.pid)
                time.sleep(args.settle)  # idle, as between runs: the daemon trims once work has settled
                idle = proc_status(daemon.process.pid)
                listing = daemon.call("GET", "/runs?limit=1")
                rows.append({
                    "runs": n,
                    "results_mb": dir_bytes(state / "results") / MB,
                    "state_mb": dir_bytes(state) / MB,
                    "anon_mb": figures["RssAnon"] / 1024,
                    "idle_anon_mb": idle["RssAnon"] / 1024,
                    "threads": figures["Threads"],
                    "fds": figures["fds"],
                    "listed": listing["total"],
                    "seconds": time.perf_counter() - t0,
                })
                print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
                      flush=True)
                report(rows, args, startup_empty, None)  # an interrupted soak still leaves its figures
        daemon.stop()
        restarts = []
        for _ in range(2):
            restarts.append(daemon.start(state))
            daemon.stop()
    finally:
        daemon.stop()
    startup_history = median(restarts)

    lines = report(rows, args, startup_empty, startup_history)
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if max(r["results_mb"] for r in rows) <= args.max_mb * 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
