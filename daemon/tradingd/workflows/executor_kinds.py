"""The executor kinds the config can name, and the factory that builds one.

``thread`` (the default), ``process`` and ``dask``; the interface they share
is :mod:`tradingd.workflows.executor`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tradingd.config import ExecutorConfig
from tradingd.workflows.executor import Executor, ExecutorUnavailable
from tradingd.workflows.process_executor import ProcessExecutor
from tradingd.workflows.thread_executor import ThreadExecutor

__all__ = ["EXECUTOR_KINDS", "MISSING_DASK", "create_executor"]

MISSING_DASK = "dask needs the optional extra: pip install 'tradingd[dask]'"


def _thread(config: ExecutorConfig, data_dir: Path | None) -> Executor:
    return ThreadExecutor(config.max_workers)


def _process(config: ExecutorConfig, data_dir: Path | None) -> Executor:
    return ProcessExecutor(config.max_workers, max_tasks_per_child=config.process.max_tasks_per_child,
                           max_worker_rss_mb=config.process.max_worker_rss_mb, data_dir=data_dir)


def _dask(config: ExecutorConfig, data_dir: Path | None) -> Executor:
    # dask is an optional extra: probed (and its executor imported) only when the config asks for it.
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ExecutorUnavailable(f"{MISSING_DASK} ({exc})") from None
    from tradingd.workflows.dask_executor import create_dask_executor

    return create_dask_executor(config)


EXECUTOR_KINDS: dict[str, Callable[[ExecutorConfig, Path | None], Executor]] = {
    "thread": _thread,
    "process": _process,
    "dask": _dask,
}


def create_executor(config: ExecutorConfig, *, data_dir: Path | None = None) -> Executor:
    """The executor ``config.kind`` names (nothing starts until it is used).

    ``data_dir``: where an executor that cannot share memory (process) imports
    market data into a memory-mapped store; the daemon passes a directory in its
    state dir so the data sits on disk, not in a tmpfs.
    """
    factory = EXECUTOR_KINDS.get(config.kind)
    if factory is None:
        raise ExecutorUnavailable(
            f"executor.kind {config.kind!r} is not available (available: {', '.join(sorted(EXECUTOR_KINDS))})"
        )
    return factory(config, data_dir)
