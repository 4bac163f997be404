"""Spec documents within limits: refused cheaply, never expanded or stringified whole (issue 12)."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import ValidationError
from tradingd.config import describe_validation_error
from tradingd.workflows.spec import SpecError, WorkflowSpec, parse_spec, parse_spec_text
from tradingd.workflows.spec_limits import DocumentLimits, DocumentTooComplex, check_tree, load_json, load_yaml

LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
)


def test_billion_laughs_is_refused_from_the_event_stream() -> None:
    with pytest.raises(DocumentTooComplex, match="expands to more than 200000 nodes"):
        load_yaml(LAUGHS)
    with pytest.raises(SpecError) as caught:
        parse_spec_text(LAUGHS + "\ntype: backtest\nstrategy: {name: momentum, grid: {lookback: *i}}\n")
    assert caught.value.lines == ["<spec>: document expands to more than 200000 nodes"]


def test_modest_aliases_still_work() -> None:
    text = (
        "type: backtest\n"
        "strategy: {name: sma_crossover, grid: {fast: &fast [5, 10], slow: [50, 100]}}\n"
        "phase_overrides: {backtest: &over {retention_policy: minimal}}\n"
    )
    spec = parse_spec_text(text)
    assert spec.strategy.grid["fast"] == [5, 10]


def test_alias_count_depth_and_size_limits() -> None:
    limits = DocumentLimits(max_bytes=10_000, max_depth=5, max_aliases=3, max_nodes=50)
    with pytest.raises(DocumentTooComplex, match="more than 3 aliases"):
        load_yaml("a: &x 1\nb: [*x, *x, *x, *x]", limits)
    with pytest.raises(DocumentTooComplex, match="deeper than 5"):
        load_yaml("a: [[[[[[1]]]]]]", limits)
    with pytest.raises(DocumentTooComplex, match="more than 50 nodes"):
        load_yaml(json.dumps(list(range(60))), limits)
    with pytest.raises(DocumentTooComplex, match="over 10000 bytes"):
        load_yaml("a: " + "x" * 10_001, limits)
    assert load_yaml("a: [[[[1]]]]", limits) == {"a": [[[[1]]]]}


@pytest.mark.parametrize(
    ("text", "problem"),
    [("[" * 100_000 + "]" * 100_000, "deeper than 32"), ("9" * 4301, "too long"),
     ("[" * 40 + "]" * 40, "deeper than 32"), (json.dumps([0] * 250_000), "more than 200000")],
    ids=["recursion", "digits", "depth", "nodes"],
)
def test_json_limits(text: str, problem: str) -> None:
    with pytest.raises(DocumentTooComplex, match=problem):
        load_json(text)


def test_decoded_values_are_checked_too() -> None:
    deep: list[object] = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(DocumentTooComplex):
        check_tree({"a": deep})
    with pytest.raises(SpecError, match="deeper than 32"):
        parse_spec({"type": "backtest", "strategy": {"name": "momentum"}, "description": deep})


def test_yaml_scalars_that_do_not_convert_are_yaml_errors() -> None:
    for text in ("a: 2020-99-99", "a: " + "9" * 5000):
        with pytest.raises(yaml.YAMLError):
            load_yaml(text)


def test_error_lines_never_stringify_a_whole_value() -> None:
    shared = list(range(1000))
    huge = {"fill": [shared] * 1000}  # a million numbers by reference, as an alias-heavy document decodes
    with pytest.raises(ValidationError) as caught:
        WorkflowSpec.model_validate({"type": "backtest", "strategy": {"name": "x"}, "backtest": huge["fill"]})
    lines = describe_validation_error(caught.value)
    assert lines and all(len(line) < 300 for line in lines), lines
    with pytest.raises(ValidationError) as caught:
        WorkflowSpec.model_validate({"type": "backtest", "strategy": {"name": "x"}, "report_top": 10**5000})
    assert any("about 5000 digits" in line for line in describe_validation_error(caught.value))
