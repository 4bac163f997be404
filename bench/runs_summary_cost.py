"""What the per-run ``summary`` costs ``GET /runs``: bytes and latency with and without it, side by side.

A real daemon (``Supervisor`` on a loopback port) loads N finished runs from
manifests in a temporary results directory — once with a summary of the
largest kind (a full sparkline, ``EQUITY_POINTS``) in every manifest, once without — and
answers ``GET /runs`` (the default page of 100), ``GET /runs?limit=1000`` and
``GET /`` (the dashboard with its 20 embedded runs) R times each; the two
daemons run side by side in one process and are asked in turn, so a loaded
machine shifts both alike; the medians and their ratio are reported.

    PYTHONPATH=daemon python bench/runs_summary_cost.py [--runs 500] [--repeat 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from tradingd.config import parse_config
from tradingd.supervisor import Supervisor
from tradingd.workflows.run_summary import EQUITY_POINTS
from tradingd.workflows.spec import parse_spec
from tradingd.workflows.workflow_run import WorkflowRun

PATHS = ("/runs", "/runs?limit=1000", "/")
SUMMARY: dict[str, Any] = {
    "scope": "out_of_sample", "source": "testing", "objective": "sharpe", "value": -0.388123,
    "total_return": -0.141123, "headline": "OOS sharpe mean -0.3881 · return -14.11% · 10 symbols",
    "selection": "per symbol (10 sets)",
    "equity": [float(f"{1.0 + 0.137 * ((i * 7919) % 97) / 97 - 0.05:.4g}") for i in range(EQUITY_POINTS)],
}


def seed(results: Path, runs: int, summary: dict[str, Any] | None) -> None:
    spec = parse_spec({"name": "bench", "type": "train_test", "data": {"source": "sample"},
                       "strategy": {"name": "sma_crossover", "grid": {"fast": [5], "slow": [50]}}}, source="bench")
    for index in range(runs):
        run = WorkflowRun(spec, f"bench-{index:04d}", results, source="bench")
        run.summary = summary
        run.mark_finished("failed")  # not "completed": the start would draw 500 missing reports
        run.layout.root.mkdir(parents=True)
        run.layout.manifest.write_text(json.dumps(run.manifest()))


def daemon_config(tmp: str) -> Any:
    return parse_config({"http": {"host": "127.0.0.1", "port": 0},
                         "paths": {"state_dir": f"{tmp}/state", "results_dir": f"{tmp}/results"},
                         "startup_workflows": [], "logging": {"level": "WARNING"}}, name="bench")


async def timed_get(http: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    started = time.perf_counter()
    async with http.get(url) as resp:
        size = len(await resp.read())
    return size, time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tradingd-bench-") as bare, \
            tempfile.TemporaryDirectory(prefix="tradingd-bench-") as summarised:
        seed(Path(bare) / "results", args.runs, None)
        seed(Path(summarised) / "results", args.runs, SUMMARY)
        async with Supervisor(daemon_config(bare)) as without, Supervisor(daemon_config(summarised)) as with_summary, \
                aiohttp.ClientSession() as http:
            print(f"{args.runs} finished runs, median of {args.repeat} requests, the two daemons alternating; "
                  f"summary {len(json.dumps(SUMMARY))} bytes of JSON")
            print("| request | bytes without | bytes with | ms without | ms with | ratio |")
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
            for path in PATHS:
                sizes: list[int] = [0, 0]
                times: list[list[float]] = [[], []]
                for _ in range(args.repeat):
                    for side, sup in enumerate((without, with_summary)):
                        sizes[side], took = await timed_get(http, f"http://127.0.0.1:{sup.port}{path}")
                        times[side].append(took)
                t0, t1 = statistics.median(times[0]), statistics.median(times[1])
                print(f"| GET {path} | {sizes[0]:,} | {sizes[1]:,} | {t0 * 1000:.1f} | {t1 * 1000:.1f} "
                      f"| {t1 / t0:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
