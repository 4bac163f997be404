#!/usr/bin/env python3
"""The outcome filter's effect out of sample: the bundled study and a walk-forward study, filtered vs not.

    .venv/bin/python bench/outcome_filter.py

Runs, through ``WorkflowRun`` on the thread executor:

1. the bundled train/test study (``bundled:sample_study``: SMA crossover, 10
   symbols, top 3 per symbol tested on the last 30 % of the bars) with an
   ``outcome_filter`` added;
2. a rolling walk-forward of the same strategy (3 years train, 1 year test).

Each filtered testing row also carries the unfiltered result of the same
targets, so one run gives both sides. Reported per testing phase and pooled:
mean and median Sharpe and the share of positive ones, filtered and not, and
how many entries the filter skipped, for two filter settings. Writes
bench/results/outcome_filter.md and .json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from tradingd.config import ExecutorConfig  # noqa: E402
from tradingd.workflows.container import RunServices  # noqa: E402
from tradingd.workflows.executor_kinds import create_executor  # noqa: E402
from tradingd.workflows.spec import parse_spec  # noqa: E402
from tradingd.workflows.workflow_run import WorkflowRun  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FILTERS = {
    "expectancy<0, k=20": {"k": 20, "min_neighbours": 5, "statistic": "expectancy", "threshold": 0.0},
    "win_rate<0.4, k=10": {"k": 10, "min_neighbours": 5, "statistic": "win_rate", "threshold": 0.4},
}


def studies() -> dict[str, dict[str, Any]]:
    bundled = yaml.safe_load((ROOT / "daemon" / "tradingd" / "defaults" / "workflows" / "sample_study.yaml")
                             .read_text())
    bundled["phase_overrides"] = {}
    bundled["event_tracing"] = []
    walk = {
        "name": "walk_forward", "type": "walk_forward", "data": {"source": "sample"},
        "strategy": {"name": "sma_crossover",
                     "grid": {"fast": {"min": 5, "max": 50, "step": 5}, "slow": {"min": 20, "max": 200, "step": 20}}},
        "objective": "sharpe", "backtest": bundled["backtest"],
        "walk_forward": {"train_bars": 756, "test_bars": 252}, "event_tracing": [],
    }
    return {"bundled train/test": bundled, "walk-forward": walk}


async def run_one(doc: dict[str, Any], run_id: str, workdir: Path) -> tuple[Path, float]:
    executor = create_executor(ExecutorConfig.model_validate({"kind": "thread", "max_workers": 2}))
    run = WorkflowRun(parse_spec(doc, source="bench"), run_id, workdir)
    started = time.perf_counter()
    await run.execute(RunServices(executor=executor), lambda: False)
    wall = time.perf_counter() - started
    await executor.close(30.0)
    if run.status != "completed":
        raise SystemExit(f"{run_id}: {run.status}: {run.error}")
    return workdir / run_id, wall


def side(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "median": statistics.median(values),
            "share_positive": sum(v > 0 for v in values) / len(values), "n": len(values)}


def collect(root: Path) -> dict[str, Any]:
    """Every filtered testing row of the run (all windows pooled), both sides."""
    filtered: list[float] = []
    unfiltered: list[float] = []
    entries = skipped = 0
    phases = []
    for summary_path in sorted(root.glob("*testing/phase_summary.json")):
        effect = json.loads(summary_path.read_text())["outcome_filter"]
        entries += effect["entries"]
        skipped += effect["skipped"]
        for row in effect["by_symbol"]:
            filtered.append(row["filtered"]["sharpe"])
            unfiltered.append(row["unfiltered"]["sharpe"])
        sharpe = effect["across_symbols"]["sharpe"]
        phases.append({"phase": summary_path.parent.name, "filtered": sharpe["filtered"]["mean"],
                       "unfiltered": sharpe["unfiltered"]["mean"], "skipped": effect["skipped"],
                       "entries": effect["entries"]})
    return {"filtered": side(filtered), "unfiltered": side(unfiltered), "entries": entries, "skipped": skipped,
            "phases": phases}


async def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
        for study, base in studies().items():
            for label, section in FILTERS.items():
                run_id = f"{'wf' if 'walk' in study else 'tt'}-{len(rows)}"
                root, wall = await run_one({**base, "outcome_filter": section}, run_id, Path(tmp))
                rows.append({"study": study, "filter": label, "wall_s": wall, **collect(root)})
                print(f"{study} / {label}: done in {wall:.1f} s", file=sys.stderr)
    (RESULTS / "outcome_filter.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "outcome_filter.md").write_text(render(rows))
    print(render(rows))


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Outcome filter: out-of-sample results filtered and unfiltered",
        "",
        "Produced by `python bench/outcome_filter.py`. Testing phases only; every tested (symbol, selected",
        "combination) row, all walk-forward windows pooled. Unfiltered = the same targets on the same warm",
        "history without the filter (so the difference is the filter's alone). Sharpe per row, annualised.",
        "",
        "| study | filter | rows | entries | skipped | mean Sharpe filtered | unfiltered | median filtered | "
        "unfiltered | share > 0 filtered | unfiltered |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        f, u = r["filtered"], r["unfiltered"]
        lines.append(
            f"| {r['study']} | {r['filter']} | {f['n']} | {r['entries']} | {r['skipped']} | {f['mean']:.4f} | "
            f"{u['mean']:.4f} | {f['median']:.4f} | {u['median']:.4f} | {100 * f['share_positive']:.0f} % | "
            f"{100 * u['share_positive']:.0f} % |")
    lines += ["", "Per walk-forward window (first filter setting), mean Sharpe over symbols:", "",
              "| window | entries | skipped | filtered | unfiltered |", "| --- | ---: | ---: | ---: | ---: |"]
    walk = next(r for r in rows if r["study"] == "walk-forward")
    for p in walk["phases"]:
        lines.append(f"| {p['phase']} | {p['entries']} | {p['skipped']} | {p['filtered']:.4f} | "
                     f"{p['unfiltered']:.4f} |")
    lines += ["", "Reported as measured, whichever side wins.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(main())
