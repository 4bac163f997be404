"""Where a submitted spec may read market data: the configured data roots.

Without a confinement, ``data.source: /etc/...`` would make the daemon read
(and, through error messages, echo) any file it can open. A spec submitted
over HTTP, or named in ``startup_workflows``, must name the bundled sample or
a path inside one of :func:`allowed_data_roots` — ``data.allowed_roots`` of
the config, or by default the bundled sample data, ``<state_dir>/stores`` and
a ``data/`` directory beside the config file — and the path must exist.
Both are checked at submission (a 400), after symlinks are resolved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tradingd.config import DEFAULT_CONFIG_NAME, Config
from tradingd.trading.loaders import sample_data_dir
from tradingd.workflows.spec import SpecError, WorkflowSpec

__all__ = ["STORES_DIR", "allowed_data_roots", "check_data_source"]

STORES_DIR = "stores"


def _config_dir(config: Config) -> Path | None:
    if config.source == DEFAULT_CONFIG_NAME:
        return None
    return Path(config.source).expanduser().absolute().parent


def allowed_data_roots(config: Config) -> tuple[Path, ...]:
    """The directories specs may read from (absolute; relative config entries resolve beside the config)."""
    base = _config_dir(config) or Path.cwd()
    if config.data.allowed_roots is not None:
        return tuple((base / root.expanduser()).absolute() for root in config.data.allowed_roots)
    roots = [sample_data_dir(), config.state_dir / STORES_DIR]
    if (config_dir := _config_dir(config)) is not None:
        roots.append(config_dir / "data")
    return tuple(roots)


def check_data_source(spec: WorkflowSpec, roots: Sequence[Path], *, source: str = "spec") -> None:
    """Raise :class:`SpecError` unless the spec's data source exists inside one of ``roots``.

    Touches the filesystem (resolves symlinks): call it off the event loop.
    """
    if spec.data.is_sample:
        return
    path = Path(spec.data.source)
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        raise SpecError([f"{source}: data.source: no such file or directory: {path}"]) from None
    except (OSError, RuntimeError, ValueError) as exc:  # a loop of symlinks, a name too long, a NUL
        raise SpecError([f"{source}: data.source: cannot be used: {type(exc).__name__}"]) from None
    for root in roots:
        try:
            if resolved.is_relative_to(root.resolve()):
                return
        except OSError:
            continue
    allowed = ", ".join(str(root) for root in roots) or "none configured"
    raise SpecError([
        f"{source}: data.source: {path} is outside the allowed data roots ({allowed}); "
        "see data.allowed_roots in the daemon config"
    ])
