"""Typed, validated daemon configuration.

The YAML file maps onto frozen pydantic models with ``extra="forbid"``, so a
typo is an error, not a silently ignored key. :func:`load_config` turns every
problem into a :class:`ConfigError` carrying one line per problem, each naming
the file and the key path, which the CLI prints before exiting with code 2.
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tradingd.disk_config import DiskConfig, RetentionConfig

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "CacheSettings",
    "CachesConfig",
    "CleanupConfig",
    "CompressionConfig",
    "Config",
    "ConfigError",
    "DaskConfig",
    "DataConfig",
    "DiskConfig",
    "ExecutorConfig",
    "HttpConfig",
    "LoggingConfig",
    "MemoryConfig",
    "ModelsConfig",
    "OutcomesConfig",
    "PathsConfig",
    "ProcessPoolConfig",
    "RetentionConfig",
    "StorageConfig",
    "Thresholds",
    "default_config_text",
    "describe_validation_error",
    "load_config",
    "parse_config",
    "yaml_error_line",
]

DEFAULT_CONFIG_NAME = "<embedded default>"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpConfig(_Section):
    """The operator endpoint. Binds loopback unless told otherwise."""

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    loop_lag_threshold: float = Field(default=1.0, gt=0, description="seconds of loop lag before /health turns 503")
    shutdown_timeout: float = Field(default=2.0, ge=0)
    header_timeout: float = Field(
        default=15.0, gt=0, le=3600,
        description="seconds a connection may take to send a request's headers, and may then stay idle",
    )
    token_file: Path | None = None


class PathsConfig(_Section):
    """Where state and results live. Unset means ``$STATE_DIRECTORY`` or ``./var``."""

    state_dir: Path | None = None
    results_dir: Path | None = None

    def resolved_state_dir(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir.expanduser().absolute()
        systemd_dir = os.environ.get("STATE_DIRECTORY")
        if systemd_dir:
            # systemd may pass several colon-separated directories; the first is ours.
            return Path(systemd_dir.split(":")[0]).absolute()
        return Path("var/state").absolute()

    def resolved_results_dir(self) -> Path:
        if self.results_dir is not None:
            return self.results_dir.expanduser().absolute()
        if self.state_dir is None and os.environ.get("STATE_DIRECTORY"):
            return self.resolved_state_dir() / "results"
        return Path("var/results").absolute()


class Thresholds(_Section):
    """Pressure levels as fractions of the effective memory limit."""

    gc: float = Field(default=0.70, gt=0, le=1.0)
    pressure: float = Field(default=0.80, gt=0, le=1.0)
    critical: float = Field(default=0.90, gt=0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.gc < self.pressure < self.critical:
            raise ValueError(
                f"must satisfy gc < pressure < critical (got {self.gc} / {self.pressure} / {self.critical})"
            )
        return self


class MemoryConfig(_Section):
    limit_mb: float | None = Field(default=None, gt=0)
    thresholds: Thresholds = Thresholds()
    hysteresis: float = Field(default=0.05, ge=0, lt=0.5)
    monitor_interval: float = Field(default=1.0, gt=0, le=60)
    history_size: int = Field(default=600, ge=10, le=100_000)


class CacheSettings(_Section):
    """One named cache. Sizes are carved out of ``caches.budget_mb``."""

    max_entries: int | None = Field(default=None, ge=1)
    max_mb: float | None = Field(default=None, gt=0)
    ttl: float | None = Field(default=None, gt=0, description="seconds; unset means caches.default_ttl")
    persistent: bool = False
    pinned: bool = False


def _default_caches() -> dict[str, CacheSettings]:
    return {
        "indicators": CacheSettings(max_mb=256, ttl=3600, persistent=True),
        "market_data": CacheSettings(max_mb=128, ttl=1800),
        "features": CacheSettings(max_mb=64, ttl=1800),
    }


class CachesConfig(_Section):
    budget_mb: float = Field(default=512, gt=0)
    default_ttl: float = Field(default=3600, gt=0)
    low_water: float = Field(default=0.6, gt=0, lt=1.0)
    entries: dict[str, CacheSettings] = Field(default_factory=_default_caches)


class ModelsConfig(_Section):
    idle_seconds: float = Field(default=300, gt=0)


class CleanupConfig(_Section):
    interval: float = Field(default=1.0, gt=0, le=3600)
    ttl_sweep_interval: float = Field(default=30, gt=0)
    model_sweep_interval: float = Field(default=30, gt=0)
    persist_interval: float = Field(default=300, gt=0)
    malloc_trim: bool = True  # after pressure cleanups, and once work has settled (at most every 5 s)
    malloc_arena_max: int | None = Field(default=2, ge=1, le=1024)  # glibc arenas; null: glibc's 8 per core


class ProcessPoolConfig(_Section):
    max_tasks_per_child: int = Field(default=50, ge=1)
    max_worker_rss_mb: float | None = Field(default=None, gt=0)


class DaskConfig(_Section):
    scheduler_address: str | None = None
    n_workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)


class ExecutorConfig(_Section):
    kind: Literal["thread", "process", "dask"] = "thread"
    max_workers: int | None = Field(default=None, ge=1)
    process: ProcessPoolConfig = ProcessPoolConfig()
    dask: DaskConfig = DaskConfig()


class CompressionConfig(_Section):
    enabled: bool = True
    codec: Literal["zstd", "lz4", "lz4hc", "blosclz", "zlib"] = "lz4hc"
    level: int = Field(default=5, ge=0, le=9)


class StorageConfig(_Section):
    compression: CompressionConfig = CompressionConfig()


class OutcomesConfig(_Section):
    enabled: bool = True
    max_outcomes: int = Field(default=100_000, ge=1)


class DataConfig(_Section):
    """Where specs may read market data; None: the bundled sample, <state_dir>/stores, data/ beside the config."""

    allowed_roots: list[Path] | None = None


class LoggingConfig(_Section):
    format: Literal["json", "text"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"


class Config(_Section):
    """The whole daemon configuration."""

    http: HttpConfig = HttpConfig()
    paths: PathsConfig = PathsConfig()
    memory: MemoryConfig = MemoryConfig()
    caches: CachesConfig = CachesConfig()
    models: ModelsConfig = ModelsConfig()
    cleanup: CleanupConfig = CleanupConfig()
    executor: ExecutorConfig = ExecutorConfig()
    storage: StorageConfig = StorageConfig()
    outcomes: OutcomesConfig = OutcomesConfig()
    data: DataConfig = DataConfig()
    logging: LoggingConfig = LoggingConfig()
    retention: RetentionConfig = RetentionConfig()
    disk: DiskConfig = DiskConfig()
    startup_workflows: list[str] = Field(default_factory=list)
    graceful_timeout: float = Field(default=5.0, ge=0, le=600)
    # Where the config came from; relative startup workflow paths resolve against it.
    source: str = Field(default=DEFAULT_CONFIG_NAME, exclude=True)

    @property
    def state_dir(self) -> Path:
        return self.paths.resolved_state_dir()

    @property
    def results_dir(self) -> Path:
        return self.paths.resolved_results_dir()


class ConfigError(Exception):
    """Invalid configuration; ``lines`` holds one message per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


# --- loading ---------------------------------------------------------------


def default_config_text() -> str:
    """The embedded default config shipped inside the package."""
    return resources.files("tradingd").joinpath("defaults/tradingd.yaml").read_text(encoding="utf-8")


def load_config(path: Path | str | None, *, check_paths: bool = True) -> Config:
    """Read, parse and validate a config file (the embedded default for ``None``).

    Environment overrides ``TRADINGD_HTTP_HOST`` and ``TRADINGD_HTTP_PORT`` win
    over the file, so a container can listen on 0.0.0.0 without a new file.
    """
    if path is None:
        name, text = DEFAULT_CONFIG_NAME, default_config_text()
    else:
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError([f"{name}: file not found"]) from None
        except IsADirectoryError:
            raise ConfigError([f"{name}: is a directory, not a config file"]) from None
        except PermissionError:
            raise ConfigError([f"{name}: permission denied"]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_error_line(exc, name)]) from None
    config = parse_config(raw, name=name, environ=os.environ)
    if check_paths:
        # One line per cause: a results dir inside an unwritable state dir is the same problem.
        problems: dict[str, str] = {}
        for key, directory in (("paths.state_dir", config.state_dir), ("paths.results_dir", config.results_dir)):
            if (problem := _writable_problem(directory)) is not None and problem not in problems:
                problems[problem] = f"{name}: {key}: {problem}"
        if problems:
            raise ConfigError(list(problems.values()))
    return config


def yaml_error_line(exc: yaml.YAMLError, source: str) -> str:
    """One line naming the file, line and column of a YAML syntax error."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        return f"{where}: YAML syntax error: {exc.problem or exc.context}"
    return f"{source}: YAML error: {exc}"


def parse_config(raw: object, *, name: str = DEFAULT_CONFIG_NAME, environ: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML document."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{name}: top level must be a mapping of sections (got {type(raw).__name__})"])
    data: dict[str, Any] = dict(raw)
    if environ:
        data, env_lines = _apply_env_overrides(data, environ)
        if env_lines:
            raise ConfigError(env_lines)
    try:
        return Config.model_validate({**data, "source": name})
    except ValidationError as exc:
        raise ConfigError([f"{name}: {line}" for line in describe_validation_error(exc)]) from None


def _apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    http = data.get("http", {})
    if not isinstance(http, dict):
        return data, []  # validation reports the bad section
    http = dict(http)
    problems: list[str] = []
    if host := environ.get("TRADINGD_HTTP_HOST"):
        http["host"] = host
    if port := environ.get("TRADINGD_HTTP_PORT"):
        if not port.isdigit():
            problems.append(f"TRADINGD_HTTP_PORT: must be an integer (got {port!r})")
        else:
            http["port"] = int(port)
    if http:
        data = {**data, "http": http}
    return data, problems


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One ``key.path: message`` line per problem (also used for workflow specs)."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"{loc}: {_message(err)}")
    return lines


def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = err.get("input")
    shown = _short(got)
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']} (got {shown})"
    if kind == "less_than":
        return f"must be < {ctx['lt']} (got {shown})"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']} (got {shown})"
    if kind == "greater_than":
        return f"must be > {ctx['gt']} (got {shown})"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']} (got {shown})"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"must be an integer (got {shown})"
    if kind in {"float_type", "float_parsing"}:
        return f"must be a number (got {shown})"
    if kind in {"bool_type", "bool_parsing"}:
        return f"must be true or false (got {shown})"
    if kind in {"string_type"}:
        return f"must be a string (got {shown})"
    if kind in {"list_type"}:
        return f"must be a list (got {shown})"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return f"must be a mapping (got {shown})"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']} (got {shown})"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring = 2, 4, 4, 57


def _short(value: object) -> str:
    """~60 characters of ``value`` without stringifying it whole (an alias bomb's ``str()`` is gigabytes)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 190:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = _SHORT.repr(value) if isinstance(value, str | dict | list | tuple | set) else str(value)
    except ValueError:  # a huge int nested in a list
        return "a value too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _writable_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot be created or written, or ``None`` if it can."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            return f"cannot be created ({directory})"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} exists and is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"not writable ({probe})"
    return None
