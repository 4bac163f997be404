"""The workflows room as the supervisor sees it: executor + run queue + startup specs.

The supervisor builds a :class:`WorkflowService` in its constructor (no I/O),
loads the startup specs while it validates (:func:`load_startup_specs`),
``open()``s the service once the state dir is locked, ``start()``s the work
once the daemon is ready, and in its stop sequence ``drain()``s the runs and
then ``close_executor()``s.

``startup_workflows`` entries in the daemon config are either

- ``bundled:NAME`` — a spec shipped in the package (``daemon/tradingd/defaults/workflows/NAME.yaml``), or
- a path to a YAML/JSON spec file; a relative path is relative to the config
  file's directory (to the working directory for the embedded default config).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tradingd.config import DEFAULT_CONFIG_NAME, Config, ConfigError
from tradingd.periodic import poll
from tradingd.storage.encoder import DocumentEncoder
from tradingd.storage.outcomes import OutcomeJournal
from tradingd.workflows.container import RunServices
from tradingd.workflows.data_roots import allowed_data_roots, check_data_source
from tradingd.workflows.executor import Executor, ExecutorUnavailable
from tradingd.workflows.executor_kinds import create_executor
from tradingd.workflows.file_worker import FileWorker
from tradingd.workflows.outcome_sink import JournalOutbox
from tradingd.workflows.retention import DiskGuard, Retention
from tradingd.workflows.runs import RunQueue
from tradingd.workflows.spec import SpecError, WorkflowSpec, load_spec_file, parse_spec_text
from tradingd.workflows.tracing import EventBudgets
from tradingd.workflows.writer import DurableWriter

if TYPE_CHECKING:
    from tradingd.memory.manager import MemoryManager

__all__ = ["BUNDLED_PREFIX", "WorkflowService", "bundled_spec_names", "load_startup_specs", "resolve_spec_ref"]

log = logging.getLogger(__name__)

# Below this memory limit the file work (aggregation, reports) runs in the daemon, not in a helper.
FILE_HELPER_MIN_LIMIT = 1024 * 2**20

BUNDLED_PREFIX = "bundled:"
RETRY_INTERVAL = 5.0  # journal writes that failed (a full disk) and manifests that did not land
# How long a thread may hold the GIL while another asks for it (CPython's default is 5 ms). Compute,
# the writer and to_thread work are Python threads; the event loop is one more, and each time it
# wakes it waits for the GIL. 1 ms keeps /health prompt under a full executor, at a small cost in
# compute throughput.
GIL_SWITCH_INTERVAL = 0.001
WRITES_FLUSH_TIMEOUT = 5.0  # queued result files and manifests, after the runs ended
# Retention passes also run every this many disk checks, for max_age_days (10 s checks: ~10 min).
_PRUNE_EVERY = 60


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
    roots = allowed_data_roots(config)
    for number, ref in enumerate(config.startup_workflows):
        try:
            spec = resolve_spec_ref(ref, config)
            check_data_source(spec, roots, source=ref)
            specs.append(spec)
        except SpecError as exc:
            problems.extend(f"{config.source}: startup_workflows.{number}: {line}" for line in exc.lines)
    if problems:
        raise ConfigError(problems)
    return specs


class WorkflowService:
    """Owns the executor and the run queue for the supervisor; see the module docstring."""

    def __init__(self, config: Config, *, memory: MemoryManager | None = None, journal: OutcomeJournal | None = None,
                 journal_markers: Sequence[Path] = (), max_concurrent_runs: int = 2) -> None:
        self.config = config
        self.memory = memory
        # Closed trades reach the journal through a durable outbox (markers left by a crash included).
        self.outbox = JournalOutbox(journal) if journal is not None else None
        if self.outbox is not None:
            self.outbox.adopt(list(journal_markers))
        self.max_concurrent_runs = max_concurrent_runs
        self.executor: Executor | None = None
        # Aggregation and reports, and the encoding of container results, in helper processes, unless
        # the memory limit is tight: the helpers hold ~80 MB and ~27 MB of their own (interpreters with
        # numpy, and pandas) and cannot reuse the daemon's free heap, so under FILE_HELPER_MIN_LIMIT
        # the work runs in daemon threads.
        limit = memory.work.limit_bytes if memory is not None else None
        helpers = limit is None or limit >= FILE_HELPER_MIN_LIMIT
        self.writer = DurableWriter(encoder=DocumentEncoder() if helpers else None)  # starts with the first write
        self.files = FileWorker(use_process=helpers)
        self._queue: RunQueue | None = None
        self._switch_interval: float | None = None
        self.retention: Retention
        self.disk: DiskGuard
        self._wake = asyncio.Event()
        self._prune_due = True

    def __repr__(self) -> str:
        return f"<WorkflowService {self._queue!r} {self.executor!r}>"

    @property
    def queue(self) -> RunQueue:
        """The run queue (once :meth:`open` has run)."""
        if self._queue is None:
            raise RuntimeError("the workflow service is not open")
        return self._queue

    def open(self) -> None:
        """Create the executor and the run queue (raises ConfigError for an unavailable executor kind).

        Also shortens the GIL switch interval (:data:`GIL_SWITCH_INTERVAL`) until :meth:`flush_writes`.
        """
        config = self.config
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, GIL_SWITCH_INTERVAL))
        try:
            self.executor = create_executor(config.executor, data_dir=config.state_dir / "executor-data")
        except ExecutorUnavailable as exc:
            raise ConfigError([f"{config.source}: executor.kind: {exc}"]) from None
        memory = self.memory
        services = RunServices(
            executor=self.executor,
            indicator_cache=memory.cache("indicators") if memory is not None else None,
            models=memory.models if memory is not None else None,
            admission=memory.admission if memory is not None else None,
            work=memory.work if memory is not None else None,
            journal=self.outbox,
            writer=self.writer,
            files=self.files,
            search_dir=config.state_dir / "search",
            event_budgets=(EventBudgets(config.retention.max_event_bytes_per_phase)
                           if config.retention.max_event_bytes_per_phase is not None else None),
        )
        self._queue = RunQueue(config.results_dir, services, max_concurrent_runs=self.max_concurrent_runs)
        self.retention = Retention(
            config.results_dir, config.retention, snapshot=self._queue.retention_view, forget=self._queue.forget,
            models=memory.models if memory is not None else None, on_idle=self.executor.prune_data,
            state_dir=config.state_dir,
        )
        self.disk = DiskGuard([config.state_dir, config.results_dir], int(config.disk.min_free_mb * 2**20),
                              memory.admission if memory is not None else None)
        self._queue.on_settled = self._run_settled

    async def start(self, startup_specs: Sequence[WorkflowSpec]) -> None:
        """Resume unfinished runs and submit the startup workflows (call once the daemon is ready)."""
        await self.queue.start(startup_specs)

    async def drain(self, graceful_timeout: float, *, hurry: asyncio.Event | None = None) -> None:
        """Refuse new runs; in-flight containers get ``graceful_timeout``, the rest are cancelled; flush the writes."""
        if self._queue is not None:
            await self._queue.close(graceful_timeout, hurry=hurry)
        # Then their queued writes (cancelled containers' results, final manifests) land.
        await self.flush_writes(0.0 if hurry is not None and hurry.is_set() else WRITES_FLUSH_TIMEOUT)

    async def retry_writes(self, stop: asyncio.Event, *, interval: float = RETRY_INTERVAL) -> None:
        """Until ``stop``: drain the journal outbox and write again manifests that did not land."""
        async for _ in poll(stop, interval, first_delay=0.0):
            try:
                if self.outbox is not None and self.outbox.stats()["pending_containers"]:
                    await asyncio.to_thread(self.outbox.drain)
                if self._queue is not None and not stop.is_set():  # the stop closes the writer
                    await self._queue.retry_manifests()
            except Exception:
                log.exception("retrying journal writes and manifests failed")

    def journal_stats(self) -> dict[str, Any]:
        """The outbox's part of the ``outcomes`` stats section (pending, failures, last error)."""
        return self.outbox.stats() if self.outbox is not None else {}

    async def flush_writes(self, join_timeout: float) -> None:
        """Wait for every queued durable write (after :meth:`drain`: cancelled containers' results)."""
        await self.writer.close(join_timeout)
        await self.files.close(join_timeout)
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)

    async def close_executor(self, join_timeout: float) -> None:
        """Release the executor's workers, waiting up to ``join_timeout`` for them (after :meth:`drain`)."""
        if self.executor is not None:
            await self.executor.close(join_timeout)

    def stats(self) -> dict[str, Any]:
        return {**self.queue.stats(), "writer": self.writer.stats(), "file_worker": self.files.stats()}

    # --- bounded disk ------------------------------------------------------------------

    def _run_settled(self, _run: object) -> None:
        self._prune_due = True
        self._wake.set()

    async def keep_bounded(self, stop: asyncio.Event) -> None:
        """Check free disk every ``disk.check_interval``; run a retention pass at start, after
        every run that ends, while disk space is low, and every ``_PRUNE_EVERY`` checks (age)."""
        checks = 0
        async for _ in poll(stop, self.config.disk.check_interval, wake=self._wake, first_delay=0):
            try:
                low = await asyncio.to_thread(self.disk.check)
                if self._prune_due or low or checks % _PRUNE_EVERY == 0:
                    self._prune_due = False
                    await self.retention.prune()
            except Exception:  # a failed pass must not end the loop
                log.exception("retention pass failed")
            checks += 1

    def disk_stats(self) -> dict[str, Any]:
        """The ``disk`` section of /stats: results and state bytes, free space, retention counters."""
        retention = self.retention.stats()
        return {
            "used_bytes": retention["kept_bytes"] + retention["state_bytes"],
            "results_bytes": retention["kept_bytes"],
            "state_bytes": retention["state_bytes"],
            **self.disk.stats(),
            "retention": retention,
        }
