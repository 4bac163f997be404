"""Every file the daemon writes goes through daemon/tradingd/storage/atomic.py.

Scans the AST of every module under daemon/ (outside daemon/tradingd/storage/) for the
ways Python code writes files directly. A hit is a torn-write bug waiting for
a crash: route it through ``atomic_write_bytes/text/json`` instead. Writing
into an in-memory buffer (a name bound to ``io.BytesIO()``/``io.StringIO()``
in the same module) is fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DAEMON = Path(__file__).resolve().parents[2] / "daemon" / "tradingd"

# (path relative to daemon/, call) pairs that may write directly, each with a
# reason. Keep this tiny.
ALLOWED: set[tuple[str, str]] = {
    # The state-dir lock: a pid written into an flock'ed file, not state.
    ("supervisor.py", "os.open(O_WRONLY...)"),
    # A JSON Lines stream written to <name>.part, published by fsync + rename.
    ("workflows/tracing.py", "os.open(O_WRONLY...)"),
}

WRITE_MODE_CHARS = set("wax+")
# Methods that write to the path given as their first argument.
PATH_WRITERS = {
    "write_text",
    "write_bytes",
    "to_csv",
    "to_parquet",
    "to_pickle",
    "to_feather",
    "to_hdf",
    "to_excel",
    "to_json",
    "to_html",
    "savefig",
    "tofile",
}
NUMPY_WRITERS = {"save", "savez", "savez_compressed", "savetxt"}
ALWAYS_WRITE = {"write_text", "write_bytes"}  # their receiver is the path


def _mode_of(call: ast.Call, position: int) -> str | None:
    for kw in call.keywords:
        if kw.arg == "mode" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
            return kw.value.value
    if len(call.args) > position and isinstance(call.args[position], ast.Constant):
        value = call.args[position].value  # type: ignore[attr-defined]
        return value if isinstance(value, str) else None
    return None


def _buffer_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        value = getattr(node, "value", None) if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(node, ast.withitem):
            value = node.context_expr
        if not isinstance(value, ast.Call):
            continue
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("BytesIO", "StringIO"):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if isinstance(node, ast.withitem) and node.optional_vars is not None:
            targets = [node.optional_vars]
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _is_buffer(arg: ast.expr, buffers: set[str]) -> bool:
    return isinstance(arg, ast.Name) and arg.id in buffers


def direct_writes(source: str) -> list[tuple[int, str]]:
    """(line, call) for every direct file write in ``source``."""
    tree = ast.parse(source)
    buffers = _buffer_names(tree)
    hits: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            mode = _mode_of(node, 1)
            if mode is not None and WRITE_MODE_CHARS & set(mode):
                hits.append((node.lineno, f"open(..., {mode!r})"))
        if not isinstance(func, ast.Attribute):
            continue
        name = func.attr
        receiver = func.value
        if name == "open" and isinstance(receiver, ast.Name) and receiver.id == "os":
            flags = {n.attr for arg in node.args[1:2] for n in ast.walk(arg) if isinstance(n, ast.Attribute)}
            if flags & {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}:
                hits.append((node.lineno, "os.open(O_WRONLY...)"))
        elif name == "open":
            mode = _mode_of(node, 0)  # Path.open(mode)
            if mode is not None and WRITE_MODE_CHARS & set(mode):
                hits.append((node.lineno, f".open({mode!r})"))
        elif name == "fdopen":
            mode = _mode_of(node, 1)
            if mode is not None and WRITE_MODE_CHARS & set(mode):
                hits.append((node.lineno, f"os.fdopen(..., {mode!r})"))
        elif name in ALWAYS_WRITE:
            hits.append((node.lineno, f".{name}()"))
        elif name in PATH_WRITERS:
            target = node.args[0] if node.args else None
            for kw in node.keywords:
                if kw.arg in ("path", "path_or_buf", "fname", "file", "excel_writer", "buf"):
                    target = kw.value
            if target is not None and not _is_buffer(target, buffers):
                hits.append((node.lineno, f".{name}()"))
        elif (
            name in NUMPY_WRITERS
            and isinstance(receiver, ast.Name)
            and receiver.id in ("np", "numpy")
            and node.args
            and not _is_buffer(node.args[0], buffers)
        ):
            hits.append((node.lineno, f"np.{name}()"))
    return hits


def test_the_scanner_finds_what_it_should() -> None:
    source = """
import io, numpy as np
open(p, "w"); open(p, mode="ab"); open(p)
path.open("w"); path.write_text("x"); path.write_bytes(b"x")
df.to_csv(p); df.to_csv(); df.to_parquet(path=p); np.save(p, a); fig.savefig(out)
os.open(p, os.O_RDONLY); os.open(p, os.O_WRONLY | os.O_CREAT)
buf = io.BytesIO(); df.to_parquet(buf); fig.savefig(buf)
with io.StringIO() as s:
    df.to_csv(s)
"""
    found = [call for _, call in direct_writes(source)]
    assert found == [
        "open(..., 'w')",
        "open(..., 'ab')",
        ".open('w')",
        ".write_text()",
        ".write_bytes()",
        ".to_csv()",
        ".to_parquet()",
        "np.save()",
        ".savefig()",
        "os.open(O_WRONLY...)",
    ]


def _modules() -> list[Path]:
    return sorted(p for p in DAEMON.rglob("*.py") if "storage" not in p.relative_to(DAEMON).parts[:1])


@pytest.mark.parametrize("module", _modules(), ids=lambda p: str(p.relative_to(DAEMON)))
def test_no_direct_file_writes_outside_storage(module: Path) -> None:
    rel = str(module.relative_to(DAEMON))
    hits = [(line, call) for line, call in direct_writes(module.read_text()) if (rel, call) not in ALLOWED]
    assert not hits, f"daemon/{rel} writes files directly (use tradingd.storage.atomic): {hits}"
