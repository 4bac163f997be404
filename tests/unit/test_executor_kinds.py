"""Executor kinds from the config: process and dask register lazily; a missing extra is named."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tradingd.config import Config, ConfigError, ExecutorConfig
from tradingd.workflows.executor import ExecutorUnavailable
from tradingd.workflows.executor_kinds import EXECUTOR_KINDS, create_executor
from tradingd.workflows.service import WorkflowService


def test_every_configurable_kind_is_registered() -> None:
    assert set(EXECUTOR_KINDS) == {"thread", "process", "dask"}


def test_dask_without_the_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if dask[distributed] were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ExecutorUnavailable, match=r"^dask needs the optional extra: pip install 'tradingd\[dask\]'"):
        create_executor(ExecutorConfig(kind="dask"))


def test_the_daemon_refuses_to_start_with_kind_dask_and_no_extra(
        monkeypatch: pytest.MonkeyPatch, make_config: Callable[..., Config]) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    config = make_config(executor={"kind": "dask"})
    with pytest.raises(ConfigError) as caught:
        WorkflowService(config).open()
    assert "executor.kind: dask needs the optional extra: pip install 'tradingd[dask]'" in str(caught.value)


def exists(path: str) -> bool:
    return Path(path).exists()


async def test_process_and_dask_executors_start_nothing_until_used() -> None:
    process = create_executor(ExecutorConfig(kind="process", max_workers=1))
    data_dir = process.stats()["data_dir"]
    assert [w["pid"] for w in process.stats()["workers"]] == [None]
    await process.close(5.0)
    assert process.stats()["closed"] and not exists(data_dir)
    dask = create_executor(ExecutorConfig(kind="dask"))
    assert dask.stats()["connected"] is False and dask.max_workers == 2
    await dask.close(5.0)
    assert dask.stats()["closed"] and dask.stats()["n_workers"] == 0
