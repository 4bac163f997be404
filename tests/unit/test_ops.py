"""The operator's stats: downsampled history, throughput counters, the log tail."""

from __future__ import annotations

import itertools
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from tradingd.ops.history import DownsampledHistory
from tradingd.ops.logtail import MAX_MESSAGE_CHARS, LogTail
from tradingd.ops.throughput import ThroughputMeter
from tradingd.workflows.progress import Progress


def test_history_keeps_bucket_peaks_and_means_for_its_span() -> None:
    history = DownsampledHistory(("used_bytes", "cpu_percent"), peak=frozenset({"used_bytes"}),
                                 resolution=30.0, span=120.0)
    base = 30.0 * 33_334  # on a bucket boundary
    for second in range(0, 300, 5):  # 5 minutes, one sample every 5 s
        history.add(base + second, {"used_bytes": 100 + second, "cpu_percent": second % 30})
    out = history.as_dict()
    assert len(history) == 4 and len(out["time"]) == 4, "span / resolution buckets, oldest dropped"
    assert out["time"] == [base + 180 + 30 * i for i in range(4)]
    assert out["used_bytes"][-1] == 100 + 295, "a byte series keeps the bucket's peak"
    assert out["cpu_percent"][-1] == pytest.approx(sum(range(0, 30, 5)) / 6), "a rate keeps the bucket's mean"
    history.add(base, {"used_bytes": 10**9})  # the clock stepped back: ignored
    assert max(v for v in history.as_dict()["used_bytes"] if v is not None) == 395
    history.add(base + 400, {"used_bytes": None, "cpu_percent": float("nan")})
    assert history.as_dict()["used_bytes"][-1] is None and history.as_dict()["cpu_percent"][-1] is None


def run(run_id: str, progress: Progress) -> Any:
    return SimpleNamespace(id=run_id, progress=progress)


def test_throughput_counts_only_what_this_process_computed_and_never_goes_down() -> None:
    clock = [0.0]
    loaded = Progress()
    loaded.completed, loaded.units_done = 40, 4000  # restored from a manifest: computed by an earlier process
    fresh = Progress(clock=lambda: clock[0])
    fresh.resume_timer()
    runs = [run("old", loaded), run("new", fresh)]
    meter = ThroughputMeter(lambda: runs, window=10.0, clock=lambda: clock[0])
    meter.sample()
    assert (meter.containers_total, meter.bar_combinations_total) == (0, 0)
    clock[0] = 2.0
    fresh.finish("completed", 500)
    fresh.finish("failed", 100)
    meter.sample()
    assert (meter.containers_total, meter.bar_combinations_total) == (2, 600)
    assert meter.rates() == pytest.approx((1.0, 300.0))
    # A resume restarts the old run's progress at 0: the total does not go down, and counts on from there.
    loaded_again = Progress(clock=lambda: clock[0])
    loaded_again.resume_timer()
    runs[0] = run("old", loaded_again)
    meter.sample()
    clock[0] = 4.0
    loaded_again.finish("completed", 50)
    runs.pop(1)  # retention removed the new run: still counted
    section = meter.section()
    assert section["containers_total"] == 3 and section["bar_combinations_total"] == 650


def test_throughput_forgets_runs_that_left_the_list() -> None:
    runs: list[Any] = []
    clock = [0.0]
    meter = ThroughputMeter(lambda: runs, clock=lambda: clock[0])
    for i in range(1000):  # retention keeps the list at 5 runs; the meter's memory must not grow with history
        clock[0] += 1.0
        done = Progress(clock=itertools.count().__next__)  # computed in this process: elapsed > 0
        done.resume_timer()
        done.finish("completed", 10)
        runs.append(run(f"run-{i}", done))
        del runs[:-5]
        meter.sample()
    assert meter.containers_total == 1000 and meter.bar_combinations_total == 10_000
    assert repr(meter) == "<ThroughputMeter 1000 containers 10000 bar-combinations>"
    assert meter.tracked_runs == 5


def test_log_tail_keeps_the_last_warnings_and_counts_them() -> None:
    tail = LogTail(size=3)
    logger = logging.getLogger("tradingd.test.tail")
    tail.attach(logger)
    try:
        logger.info("not kept")
        for i in range(5):
            logger.warning("warning %d", i)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed: %s", "x" * (MAX_MESSAGE_CHARS + 10))
    finally:
        tail.detach(logger)
    logger.error("after detach: not kept")
    section = tail.section()
    assert [r["message"][:9] for r in section["recent"]] == ["warning 3", "warning 4", "failed: x"]
    assert len(section["recent"][-1]["message"]) == MAX_MESSAGE_CHARS
    assert section["counts"] == {"WARNING": 5, "ERROR": 1, "CRITICAL": 0}
