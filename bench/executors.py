#!/usr/bin/env python3
"""The bench sweep on each executor: thread, process, and Dask (a LocalCluster, or --scheduler-address).

    .venv/bin/python bench/executors.py [--quick] [--workers N] [--scheduler-address tcp://HOST:8786]

Workload: a ``backtest`` workflow of an SMA crossover grid on the bundled sample
data (10 symbols, ~2,500 daily bars each), the same spec on every executor,
run through ``WorkflowRun`` exactly as the daemon runs it (containers,
batches, result files). Each executor runs in its own child interpreter, so
the peaks never mix. Reported per executor:

- throughput: bar x combination backtests per second over the run's wall time
  (the executor is started and ready before the clock starts; start-up is
  reported separately);
- the daemon's peak *anonymous* RSS (RssAnon sampled every 20 ms: memory the
  daemon itself holds, not file pages such as the mmap store);
- the workers' peak RSS (each worker process, sampled the same way; the
  largest single worker and the largest total);
- whether the results tree equals the thread executor's (aggregates and
  container metrics).

Writes bench/results/executors.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULT_MD = ROOT / "bench" / "results" / "executors.md"
KINDS = ("thread", "process", "dask")
MB = 2**20


def spec_doc(quick: bool) -> dict[str, Any]:
    slow_max = 150 if quick else 300
    return {
        "name": "executor_bench",
        "type": "backtest",
        "data": {"source": "sample"},
        "strategy": {"name": "sma_crossover",
                     "grid": {"fast": {"min": 5, "max": 100, "step": 5}, "slow": {"min": 20, "max": slow_max,
                                                                                   "step": 10}}},
        "objective": "sharpe",
        "backtest": {"fill": "next_open", "commission": 0.001, "slippage_bps": 1.0},
        "execution": {"chunk_size": 100, "batch_size": 50},
    }


def status_kb(pid: int | str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler:
    """Samples the daemon's RssAnon and each worker's RSS every ``interval`` seconds."""

    def __init__(self, worker_pids: Any, interval: float = 0.02) -> None:
        self.worker_pids = worker_pids  # () -> list of pids
        self.interval = interval
        self.daemon_anon = 0
        self.worker_rss = 0
        self.workers_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.daemon_anon = max(self.daemon_anon, status_kb("self", "RssAnon"))
            sizes = [status_kb(pid, "VmRSS") for pid in self.worker_pids()]
            if sizes:
                self.worker_rss = max(self.worker_rss, *sizes)
                self.workers_total = max(self.workers_total, sum(sizes))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def results_digest(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*.json")):
        doc = json.loads(path.read_text())
        name = str(path.relative_to(root))
        if name.endswith("aggregate_results.json"):
            out[name] = doc
        elif "/containers/" in name:
            out[name] = doc["metrics"]
    return out


async def run_one(kind: str, workers: int, address: str | None, quick: bool, workdir: Path) -> dict[str, Any]:
    from tradingd.config import ExecutorConfig
    from tradingd.workflows.container import RunServices
    from tradingd.workflows.executor_kinds import create_executor
    from tradingd.workflows.runs import WorkflowRun
    from tradingd.workflows.spec import parse_spec

    config: dict[str, Any] = {"kind": kind, "max_workers": workers,
                              "process": {"max_tasks_per_child": 50},
                              "dask": {"n_workers": workers, "threads_per_worker": 1, "scheduler_address": address}}
    started = time.perf_counter()
    executor = create_executor(ExecutorConfig.model_validate(config))
    pids: Any = list
    if kind == "process":
        executor.start()  # type: ignore[attr-defined]
        for _ in range(1000):  # the slots start their workers in the background
            if all(w["pid"] for w in executor.stats()["workers"]):
                break
            await asyncio.sleep(0.02)
        pids = lambda: [w["pid"] for w in executor.stats()["workers"] if w["pid"]]  # noqa: E731
    elif kind == "dask":
        client = await executor.start()  # type: ignore[attr-defined]
        known: dict[str, int] = await client.run(os.getpid, on_error="ignore")
        # Remote workers are on other machines: only local pids can be sampled.
        pids = lambda: [p for p in known.values() if os.path.exists(f"/proc/{p}")]  # noqa: E731
    startup = time.perf_counter() - started
    anon_before = status_kb("self", "RssAnon")
    spec = parse_spec(spec_doc(quick), source="bench")
    run = WorkflowRun(spec, f"bench-{kind}", workdir)
    with Sampler(pids) as sampler:
        t0 = time.perf_counter()
        await run.execute(RunServices(executor=executor), lambda: False)
        wall = time.perf_counter() - t0
    stats = executor.stats()
    await executor.close(30.0)
    if run.status != "completed":
        raise SystemExit(f"{kind}: run {run.status}: {run.error}")
    bars = sum(json.loads(p.read_text())["data"]["n_bars"] * len(json.loads(p.read_text())["metrics"])
               for p in (workdir / run.id).rglob("containers/*.json"))
    return {
        "kind": kind,
        "workers": workers,
        "startup_s": startup,
        "wall_s": wall,
        "bar_combos": bars,
        "throughput": bars / wall,
        "daemon_anon_before": anon_before,
        "daemon_peak_anon": sampler.daemon_anon,
        "worker_peak_rss": sampler.worker_rss,
        "workers_peak_total": sampler.workers_total,
        "tasks": stats.get("completed"),
        "recycled": stats.get("recycled"),
        "digest": results_digest(workdir / run.id),
    }


def child(kind: str, workers: int, address: str | None, quick: bool, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
        result = asyncio.run(run_one(kind, workers, address, quick, Path(tmp)))
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scheduler-address", help="run the dask case on this existing cluster")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workers, args.scheduler_address, args.quick, Path(args.out))
        return
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            out = Path(tmp) / f"{kind}.json"
            cmd = [sys.executable, __file__, "--child", kind, "--out", str(out), "--workers", str(args.workers)]
            if args.quick:
                cmd.append("--quick")
            if args.scheduler_address:
                cmd += ["--scheduler-address", args.scheduler_address]
            print(f"running {kind} ...", flush=True)
            subprocess.run(cmd, check=True)
            results.append(json.loads(out.read_text()))
    reference = results[0]
    lines = [
        "# Executors: the bench sweep on thread, process and Dask",
        "",
        f"`bench/executors.py{' --quick' if args.quick else ''}` on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{args.workers} workers each; dask = "
        f"{'the cluster at ' + args.scheduler_address if args.scheduler_address else 'LocalCluster(processes=True)'}.",
        "",
        f"Workload: a backtest workflow, SMA crossover grid, 10 sample symbols: "
        f"{reference['bar_combos'] / 1e6:.1f} M bar x combination backtests, run through `WorkflowRun` "
        "(containers, batches, result files) as the daemon runs it. Each executor in its own interpreter.",
        "",
        "| executor | start-up s | run s | M bar-combos/s | vs thread | daemon anon RSS before run MB "
        "| daemon peak anon RSS MB | largest worker peak RSS MB | all workers peak RSS MB | results = thread |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        same = r["digest"] == reference["digest"]
        workers = "—" if r["kind"] == "thread" else f"{r['worker_peak_rss'] / MB:.0f}"
        total = "—" if r["kind"] == "thread" else f"{r['workers_peak_total'] / MB:.0f}"
        line = (f"| {r['kind']} | {r['startup_s']:.2f} | {r['wall_s']:.2f} | {r['throughput'] / 1e6:.1f} | "
                f"{r['throughput'] / reference['throughput']:.2f} | {r['daemon_anon_before'] / MB:.0f} | "
                f"{r['daemon_peak_anon'] / MB:.0f} | "
                f"{workers} | {total} | {'yes' if same else 'NO'} |")
        lines.append(line)
        print(line)
    lines += [
        "",
        "- thread: the compute runs in the daemon, so its temporaries are the daemon's anonymous memory.",
        "- process: the daemon maps the data from the store (file pages, not anonymous) and holds only",
        "  results; worker RSS counts the mapped data pages they share through the page cache.",
        "- dask: with a LocalCluster the scheduler runs inside the daemon process, and data that is not in",
        "  a store travels by value, so the daemon holds the data set and the scheduler's state.",
        "- Worker figures are sampled RSS (VmRSS every 20 ms) of each worker process; peaks between samples",
        "  can be missed.",
    ]
    RESULT_MD.parent.mkdir(parents=True, exist_ok=True)
    RESULT_MD.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULT_MD}")


if __name__ == "__main__":
    main()
