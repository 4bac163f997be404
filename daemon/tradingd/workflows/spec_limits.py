"""Cheap limits on a spec document, checked before it is decoded or walked.

A workflow spec is a few hundred bytes; anything far larger or deeper is an
attack or a mistake. PyYAML expands aliases by reference, so a 447-byte
"billion laughs" document decodes quickly into a graph that explodes when
anything walks it (validation, an error message); deep nesting overflows the
recursive composer (and json's decoder). :func:`load_yaml` therefore checks
the *event stream* first — a flat, non-recursive pass — counting aliases,
nesting depth and the node count the document would have once every alias
is expanded, and only then builds the value. :func:`load_json` decodes JSON
and refuses the same shapes (and integers too long to convert). Every
refusal is a :class:`DocumentTooComplex` whose message names the limit, never
the input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["DEFAULT_LIMITS", "DocumentLimits", "DocumentTooComplex", "check_tree", "load_json", "load_yaml"]

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DocumentTooComplex(ValueError):
    """A document over one of the :class:`DocumentLimits`; the message names the limit."""


@dataclass(frozen=True)
class DocumentLimits:
    """How big a spec document may be."""

    max_bytes: int = 1_048_576
    max_depth: int = 32
    max_aliases: int = 100
    # Nodes once every alias is expanded: what validation will walk.
    max_nodes: int = 200_000


DEFAULT_LIMITS = DocumentLimits()


def _check_size(text: str, limits: DocumentLimits) -> None:
    if len(text) > limits.max_bytes:
        raise DocumentTooComplex(f"document is over {limits.max_bytes} bytes")


def _scan_events(text: str, limits: DocumentLimits) -> None:
    """Walk the YAML event stream once, refusing bombs and deep nesting before composing."""
    # One frame per open collection: [expanded node count, anchor]; the
    # outermost frame collects the documents' totals.
    stack: list[list[Any]] = [[0, None]]
    anchored: dict[str, int] = {}  # anchor -> expanded node count of its node
    aliases = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) > limits.max_depth:
                raise DocumentTooComplex(f"document is nested deeper than {limits.max_depth} levels")
            stack.append([1, event.anchor])
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            count, anchor = stack.pop()
            if anchor is not None:
                anchored[anchor] = count
            stack[-1][0] += count
        elif isinstance(event, yaml.ScalarEvent):
            stack[-1][0] += 1
            if event.anchor is not None:
                anchored[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > limits.max_aliases:
                raise DocumentTooComplex(f"document uses more than {limits.max_aliases} aliases")
            stack[-1][0] += anchored.get(str(event.anchor), 1)
        else:
            continue
        if stack[-1][0] > limits.max_nodes or stack[0][0] > limits.max_nodes:
            raise DocumentTooComplex(f"document expands to more than {limits.max_nodes} nodes")
    # An open frame's count is only added to its parent when it closes: check the sum too.
    if sum(frame[0] for frame in stack) > limits.max_nodes:
        raise DocumentTooComplex(f"document expands to more than {limits.max_nodes} nodes")


def load_yaml(text: str, limits: DocumentLimits = DEFAULT_LIMITS) -> Any:
    """``yaml.safe_load`` with :class:`DocumentLimits`; raises ``yaml.YAMLError`` or :class:`DocumentTooComplex`."""
    _check_size(text, limits)
    _scan_events(text, limits)
    try:
        return yaml.load(text, Loader=_Loader)  # a safe loader: CSafeLoader or SafeLoader
    except (ValueError, OverflowError) as exc:  # a scalar that does not convert: 2020-99-99, 5,000 digits
        raise yaml.YAMLError(f"a value cannot be read: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0].split(";", 1)[0]
    return text[:120]


def load_json(text: str, limits: DocumentLimits = DEFAULT_LIMITS) -> Any:
    """``json.loads`` with :class:`DocumentLimits`; raises ``json.JSONDecodeError`` or :class:`DocumentTooComplex`."""
    _check_size(text, limits)
    try:
        value = json.loads(text)
    except RecursionError:
        raise DocumentTooComplex(f"document is nested deeper than {limits.max_depth} levels") from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer over sys.get_int_max_str_digits()
        raise DocumentTooComplex("document holds a number too long to convert") from None
    check_tree(value, limits)
    return value


def check_tree(value: Any, limits: DocumentLimits = DEFAULT_LIMITS) -> None:
    """Refuse a decoded value nested deeper than ``max_depth`` or larger than ``max_nodes``.

    Iterative, and stops as soon as a limit is passed, so it is cheap on any input.
    """
    nodes = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise DocumentTooComplex(f"document expands to more than {limits.max_nodes} nodes")
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limits.max_depth:
            raise DocumentTooComplex(f"document is nested deeper than {limits.max_depth} levels")
        pending.extend((child, depth + 1) for child in children)
