#!/usr/bin/env python3
"""Smart search against the full grid, on a 5-parameter strategy, through the daemon's own run path.

    .venv/bin/python bench/search_vs_grid.py [--quick] [--seeds 0,1,2]

Workload: ``sma_trend_stops`` (fast, slow, trend, stop_loss, take_profit) on
the bundled sample data (10 symbols, ~2,600 daily bars), objective Sharpe
averaged over the symbols. The grid run sweeps every valid combination; each
search run (``search: {method, trials, batch, seed}``) asks Optuna for
``trials`` parameter sets, 25 at a time, each batch one vectorized sweep per
symbol. Both go through ``WorkflowRun`` on the thread executor exactly as the
daemon runs them (containers, result files, aggregates), one after the other
in this process, so a loaded machine slows both alike.

Verdict per search run: the best mean Sharpe found is within 10 % of the
grid's best, using at most 5 % of the grid's evaluations (distinct parameter
sets backtested). Reported: both bests, evaluations, wall times; medians over
the seeds. Writes bench/results/search_vs_grid.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from tradingd.config import ExecutorConfig  # noqa: E402
from tradingd.workflows.container import RunServices  # noqa: E402
from tradingd.workflows.executor_kinds import create_executor  # noqa: E402
from tradingd.workflows.spec import parse_spec  # noqa: E402
from tradingd.workflows.workflow_run import WorkflowRun  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GRID: dict[str, Any] = {
    "fast": {"min": 5, "max": 50, "step": 5},
    "slow": {"min": 20, "max": 200, "step": 20},
    "trend": {"min": 50, "max": 250, "step": 50},
    "stop_loss": {"min": 0.0, "max": 0.08, "step": 0.02},
    "take_profit": {"min": 0.04, "max": 0.2, "step": 0.04},
}
QUICK_GRID: dict[str, Any] = {**GRID, "trend": [100, 200], "take_profit": [0.08, 0.16]}


def spec_doc(name: str, grid: dict[str, Any], search: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "type": "backtest",
        "data": {"source": "sample"},
        "strategy": {"name": "sma_trend_stops", "grid": grid},
        "objective": "sharpe",
        "backtest": {"fill": "next_open", "commission": 0.001},
        "event_tracing": [],
        "execution": {"chunk_size": 2000, "batch_size": 500},
    }
    if search is not None:
        doc["search"] = search
    return doc


async def run_one(doc: dict[str, Any], workdir: Path) -> tuple[WorkflowRun, float]:
    executor = create_executor(ExecutorConfig.model_validate({"kind": "thread", "max_workers": 2}))
    run = WorkflowRun(parse_spec(doc, source="bench"), doc["name"], workdir)
    started = time.perf_counter()
    await run.execute(RunServices(executor=executor, search_dir=workdir / "search"), lambda: False)
    wall = time.perf_counter() - started
    await executor.close(30.0)
    if run.status != "completed":
        raise SystemExit(f"{doc['name']}: run {run.status}: {run.error}")
    return run, wall


def read(path: Path) -> Any:
    return json.loads(path.read_text())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid (a smoke test of the script)")
    parser.add_argument("--seeds", default="0,1,2", help="search seeds, comma-separated")
    parser.add_argument("--method", default="tpe", choices=("tpe", "cmaes", "random"))
    args = parser.parse_args()
    grid = QUICK_GRID if args.quick else GRID
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        workdir = Path(tmp)
        grid_run, grid_wall = await run_one(spec_doc("grid", grid, None), workdir)
        aggregate = read(workdir / "grid" / "backtest" / "aggregate_results.json")
        grid_best = aggregate["by_params"][0]
        grid_evals = grid_run.grid_size
        budget = int(0.05 * grid_evals)
        trials = budget - budget % 25 if budget >= 50 else budget
        rows = []
        for seed in seeds:
            name = f"search-{args.method}-{seed}"
            search = {"method": args.method, "trials": trials, "batch": min(25, trials), "seed": seed}
            _, wall = await run_one(spec_doc(name, grid, search), workdir)
            doc = read(workdir / name / "backtest" / "search.json")
            best = doc["best"]["value"]
            rows.append({
                "seed": seed, "best": best, "params": doc["best"]["params"], "evaluations": doc["evaluated"],
                "trials": doc["trials_done"], "invalid": doc["invalid"], "wall_s": wall,
                "gap": (grid_best["mean_objective"] - best) / abs(grid_best["mean_objective"]),
            })
            print(f"{name}: best {best:.4f} ({doc['evaluated']} evaluations, {wall:.1f} s)", file=sys.stderr)
    ok = [r["gap"] <= 0.10 and r["evaluations"] <= 0.05 * grid_evals for r in rows]
    result = {
        "machine": f"{platform.machine()} {platform.python_version()}",
        "grid": {"combinations": grid_evals, "dropped": grid_run.grid_dropped, "best": grid_best["mean_objective"],
                 "params": grid_best["params"], "wall_s": grid_wall},
        "method": args.method,
        "trials": trials,
        "runs": rows,
        "median": {key: statistics.median(r[key] for r in rows) for key in ("best", "evaluations", "wall_s", "gap")},
        "verdict": "pass" if all(ok) else f"fail ({ok.count(False)} of {len(ok)} runs)",
    }
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"search_vs_grid{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"search_vs_grid{suffix}.md").write_text(render(result))
    print(render(result))


def render(r: dict[str, Any]) -> str:
    g, m = r["grid"], r["median"]
    lines = [
        "# Smart search vs the full grid",
        "",
        "`sma_trend_stops` (5 parameters) on the bundled sample (10 symbols, ~2,600 daily bars), objective",
        "Sharpe averaged over the symbols, next-open fills, 0.1 % commission; both through `WorkflowRun` on",
        f"the thread executor (2 workers), one after the other in one process. Machine: {r['machine']}.",
        "Produced by `python bench/search_vs_grid.py`.",
        "",
        f"Grid: {g['combinations']:,} valid combinations ({g['dropped']:,} dropped as fast >= slow), best mean",
        f"Sharpe **{g['best']:.4f}** at `{json.dumps(g['params'])}`, wall **{g['wall_s']:.1f} s**.",
        "",
        f"Search: `{r['method']}`, {r['trials']} trials in batches of 25 (5 % budget: "
        f"{int(0.05 * g['combinations'])} evaluations).",
        "",
        "| seed | best mean Sharpe | gap to grid best | evaluations | % of grid | rejected sets | wall s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["runs"]:
        lines.append(f"| {row['seed']} | {row['best']:.4f} | {100 * row['gap']:.2f} % | {row['evaluations']} | "
                     f"{100 * row['evaluations'] / g['combinations']:.2f} % | {row['invalid']} | "
                     f"{row['wall_s']:.1f} |")
    lines += [
        f"| median | {m['best']:.4f} | {100 * m['gap']:.2f} % | {m['evaluations']:.0f} | "
        f"{100 * m['evaluations'] / g['combinations']:.2f} % | | {m['wall_s']:.1f} |",
        "",
        f"Wall time, median search / grid: **{m['wall_s'] / g['wall_s']:.2f}**.",
        "",
        f"Verdict (every run within 10 % of the grid's best with <= 5 % of its evaluations): **{r['verdict']}**.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(main())
