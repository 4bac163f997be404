"""Issue 17: the daemon in a 512 MiB (and a 384 MiB) memory cgroup, fed the squeeze workload.

Four specs go in over HTTP at once (see bench/cgroup_squeeze.py, whose
functions this test drives): a 4-symbol SMA sweep of ~3,400 combinations in
containers of 2,000, an adaptive-trend walk-forward over all symbols with a
199 x 4 grid, config/workflows/ml.yaml and config/workflows/walk_forward.yaml.
The daemon must never be OOM-killed, every run must complete with metrics
identical to an unconstrained run, and the cgroup's anonymous memory must stay
under the cap. Needs root and a memory cgroup hierarchy; otherwise skipped
with the reason.

The three daemons (unconstrained, 512 MiB, 384 MiB) run at the same time, each
in its own cgroup: one daemon keeps about one core busy on this workload (its
walk-forward's phases run one after another), so side by side on two cores
the three take ~1.6x one run's time instead of 3x. Nothing asserted depends on
timing; the wall-time ratios are the bench's (bench/cgroup_squeeze.py runs the
caps one at a time).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MB = 1024 * 1024
CAPS_MB = (512, 384)


def _squeeze() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cgroup_squeeze", REPO / "bench" / "cgroup_squeeze.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cgroup_squeeze"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


squeeze = _squeeze()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[int | None, Any]:
    """The workload's outcome unconstrained (key None) and under each cap, the daemons side by side."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("creating a memory cgroup needs root on Linux; not running as root")
    group, why = squeeze.make_cgroup(f"tradingd-probe-{os.getpid()}", 64 * MB)
    if group is None:
        pytest.skip(why)
    squeeze.remove_cgroup(group)
    caps: list[int | None] = [None, *CAPS_MB]
    with ThreadPoolExecutor(len(caps)) as pool:
        futures = {cap: pool.submit(squeeze.run_workload, tmp_path_factory.mktemp(f"cap-{cap or 'free'}"),
                                    cap * MB if cap else None) for cap in caps}
        return {cap: future.result() for cap, future in futures.items()}


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("cap_mb", CAPS_MB)
def test_the_squeeze_workload_completes_under_the_cap_with_identical_results(
    cap_mb: int, outcomes: dict[int | None, Any]
) -> None:
    free, outcome = outcomes[None], outcomes[cap_mb]
    print(f"{cap_mb} MiB: wall {outcome.wall_seconds:.0f} s (free {free.wall_seconds:.0f} s, side by side), "
          f"peak anon {outcome.peak_anon_bytes / MB:.0f} MiB, grant wait {outcome.grant_wait_seconds:.1f} s, "
          f"work {outcome.work}")
    assert set(free.statuses.values()) == {"completed"}, free.stderr[-3000:]
    assert len(free.statuses) == len(squeeze.SPECS)
    assert outcome.oom_kills == 0, outcome.stderr[-3000:]
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    assert outcome.limit_source == "cgroup"
    assert set(outcome.statuses.values()) == {"completed"}, outcome.statuses
    assert len(outcome.statuses) == len(squeeze.SPECS)
    assert outcome.metrics and outcome.metrics == free.metrics
    assert 0 < outcome.peak_anon_bytes < cap_mb * MB
