"""The workflows room as the supervisor sees it: executor + run queue + startup specs.

``startup_workflows`` entries in the daemon config are either

- ``bundled:NAME`` — a spec shipped in the package (``daemon/tradingd/defaults/workflows/NAME.yaml``), or
- a path to a YAML/JSON spec file; a relative path is relative to the config
  file's directory (to the working directory for the embedded default config).
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tradingd.config import DEFAULT_CONFIG_NAME, Config, ConfigError
from tradingd.workflows.container import RunServices
from tradingd.workflows.executor import ExecutorUnavailable
from tradingd.workflows.executor_kinds import create_executor
from tradingd.workflows.runs import RunQueue
from tradingd.workflows.spec import SpecError, WorkflowSpec, load_spec_file, parse_spec_text

if TYPE_CHECKING:
    from tradingd.memory.manager import MemoryManager

__all__ = ["BUNDLED_PREFIX", "WorkflowService", "bundled_spec_names", "load_startup_specs", "resolve_spec_ref"]

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
EXECUTOR_CLOSE_TIMEOUT = 5.0  # workers still busy after this are stopped by force


def bundled_spec_names() -> list[str]:
    """Names usable as ``bundled:NAME``."""
    folder = resources.files("tradingd").joinpath("defaults/workflows")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_spec_ref(ref: str, config: Config) -> WorkflowSpec:
    """Load one ``startup_workflows`` entry (raises SpecError)."""
    if ref.startswith(BUNDLED_PREFIX):
        name = ref[len(BUNDLED_PREFIX):]
        if name not in bundled_spec_names():
            raise SpecError([f"{ref}: no bundled workflow {name!r} (bundled: {', '.join(bundled_spec_names())})"])
        text = resources.files("tradingd").joinpath(f"defaults/workflows/{name}.yaml").read_text(encoding="utf-8")
        return parse_spec_text(text, source=ref)
    path = Path(ref).expanduser()
    if not path.is_absolute():
        base = Path.cwd() if config.source == DEFAULT_CONFIG_NAME else Path(config.source).absolute().parent
        path = base / path
    return load_spec_file(path)


def load_startup_specs(config: Config) -> list[WorkflowSpec]:
    """Every startup workflow of ``config``; problems become one ConfigError naming each entry."""
    specs: list[WorkflowSpec] = []
    problems: list[str] = []
    for number, ref in enumerate(config.startup_workflows):
        try:
            specs.append(resolve_spec_ref(ref, config))
        except SpecError as exc:
            problems.extend(f"{config.source}: startup_workflows.{number}: {line}" for line in exc.lines)
    if problems:
        raise ConfigError(problems)
    return specs


class WorkflowService:
    """Owns the executor and the run queue for the supervisor."""

    def __init__(self, config: Config, *, memory: MemoryManager | None = None, max_concurrent_runs: int = 2) -> None:
        self.startup_specs = load_startup_specs(config)
        try:
            self.executor = create_executor(config.executor, data_dir=config.state_dir / "executor-data")
        except ExecutorUnavailable as exc:
            raise ConfigError([f"{config.source}: executor.kind: {exc}"]) from None
        self.services = RunServices(
            executor=self.executor,
            indicator_cache=memory.cache("indicators") if memory is not None else None,
            models=memory.models if memory is not None else None,
            admission=memory.admission if memory is not None else None,
        )
        self.queue = RunQueue(config.results_dir, self.services, max_concurrent_runs=max_concurrent_runs)
        self._closed = False

    def __repr__(self) -> str:
        return f"<WorkflowService {self.queue!r} {self.executor!r}>"

    def start(self) -> None:
        """Resume unfinished runs and submit the startup workflows (call once the daemon is ready)."""
        self.queue.start(self.startup_specs)

    async def close(self, graceful_timeout: float) -> None:
        """Drain the queue, then release the executor. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.queue.close(graceful_timeout)
        await self.executor.close(EXECUTOR_CLOSE_TIMEOUT)

    def stats(self) -> dict[str, Any]:
        return self.queue.stats()
