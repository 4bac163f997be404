"""Workflow specs: validation with key paths, safe names, phase settings, grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tradingd.workflows.service import bundled_spec_names, resolve_spec_ref
from tradingd.workflows.spec import (
    PHASE_DEFAULTS,
    SpecError,
    WorkflowSpec,
    check_safe_name,
    load_spec_file,
    parse_spec,
    parse_spec_text,
)

REPO = Path(__file__).resolve().parents[2]


def spec_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "study",
        "type": "train_test",
        "data": {"source": "sample", "symbols": ["SYM01", "SYM02"]},
        "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10], "slow": [20, 40]}},
    }
    base.update(overrides)
    return base


def errors_of(raw: object) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw, source="s.yaml")
    return caught.value.lines


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = parse_spec(spec_dict())
    assert spec.objective == "sharpe"
    assert spec.backtest.fill == "close" and spec.backtest.direction == "long_only"
    assert spec.execution.chunk_size == 100
    assert spec.selection.top == 1 and spec.selection.scope == "per_symbol"


def test_unknown_key_is_reported_with_its_path() -> None:
    lines = errors_of(spec_dict(backtest={"comission": 0.001}))
    assert lines == ["s.yaml: backtest.comission: unknown key"]


def test_several_problems_each_get_a_line() -> None:
    lines = errors_of(spec_dict(type="sweep", retention_policy="all", execution={"chunk_size": 0}))
    joined = "\n".join(lines)
    assert "type: must be one of" in joined
    assert "retention_policy: must be one of" in joined
    assert "execution.chunk_size: must be >= 1 (got 0)" in joined


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "", "a b", "-dash", "x" * 101])
def test_path_unsafe_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        check_safe_name(name)
    assert any(line.startswith("s.yaml: name:") for line in errors_of(spec_dict(name=name)))
    assert any(line.startswith("s.yaml: run_id:") for line in errors_of(spec_dict(run_id=name)))
    lines = errors_of(spec_dict(data={"source": "sample", "symbols": [name]}))
    assert any(line.startswith("s.yaml: data.symbols.0:") for line in lines)


def test_safe_names_pass() -> None:
    for name in ("a", "SYM01", "run-1.2_b", "2025-01-01"):
        assert check_safe_name(name) == name


def test_unknown_strategy_and_parameter() -> None:
    lines = errors_of(spec_dict(strategy={"name": "nope"}))
    assert len(lines) == 1 and lines[0].startswith("s.yaml: strategy.name: unknown strategy 'nope'")
    lines = errors_of(spec_dict(strategy={"name": "sma_crossover", "grid": {"fast": [5], "slwo": [20]}}))
    assert lines == ["s.yaml: strategy.grid.slwo: unknown parameter of sma_crossover (known: fast, slow)"]


def test_grid_with_no_valid_combination_is_a_spec_error() -> None:
    lines = errors_of(spec_dict(strategy={"name": "sma_crossover", "grid": {"fast": [50], "slow": [20]}}))
    assert len(lines) == 1 and "no valid parameter combination" in lines[0]
    # Without skip_invalid the inconsistent combination itself is the error.
    lines = errors_of(spec_dict(strategy={"name": "sma_crossover", "grid": {"fast": [5, 50], "slow": [20]},
                                          "skip_invalid": False}))
    assert "grid combination 1" in lines[0]


def test_grid_ranges_are_inclusive() -> None:
    spec = parse_spec(spec_dict(strategy={"name": "sma_crossover",
                                          "grid": {"fast": {"min": 5, "max": 20, "step": 5}, "slow": 50}}))
    assert spec.strategy.grid_lists() == {"fast": [5, 10, 15, 20], "slow": [50]}
    spec = parse_spec(spec_dict(strategy={"name": "momentum",
                                          "grid": {"lookback": 10, "threshold": {"min": 0, "max": 0.3, "step": 0.1}}}))
    assert spec.strategy.grid_lists()["threshold"] == [0.0, 0.1, 0.2, 0.3]
    assert any("max" in line for line in errors_of(
        spec_dict(strategy={"name": "momentum", "grid": {"lookback": {"min": 10, "max": 5}}})))


def test_objective_must_be_a_metric() -> None:
    lines = errors_of(spec_dict(objective="alpha"))
    assert len(lines) == 1 and "objective 'alpha' is not a metric" in lines[0]


def test_type_sections_must_match_the_type() -> None:
    assert "needs a walk_forward section" in errors_of(spec_dict(type="walk_forward"))[0]
    assert "train_test section given for a backtest workflow" in errors_of(
        spec_dict(type="backtest", train_test={"train_fraction": 0.5}))[0]
    assert "no phase 'testing' in a backtest workflow" in errors_of(
        spec_dict(type="backtest", phase_overrides={"testing": {"track_equity": False}}))[0]


def test_phase_settings_resolve_defaults_then_global_then_kind_then_name() -> None:
    spec = parse_spec(spec_dict(
        type="walk_forward",
        walk_forward={"train_bars": 100, "test_bars": 50},
        retention_policy="sliding_window",
        phase_overrides={
            "testing": {"results_storage": "disk"},
            "window-001-testing": {"event_tracing": ["FILL"], "retention_window": 7},
        },
    ))
    training = spec.phase_settings("training", "window-000-training")
    assert training.results_storage == PHASE_DEFAULTS["training"].results_storage == "disk"
    assert training.retention_policy == "sliding_window"  # global override beats the phase default
    assert spec.phase_settings("testing", "window-000-testing").results_storage == "disk"
    named = spec.phase_settings("testing", "window-001-testing")
    assert named.event_tracing == ("FILL",) and named.retention_window == 7
    assert named.track_equity is True and named.results_storage == "disk"
    plain = parse_spec(spec_dict())
    assert plain.phase_settings("training").as_dict() == PHASE_DEFAULTS["training"].as_dict()
    assert plain.phase_settings("testing").retention_policy == "trade_complete"


def test_relative_data_path_resolves_against_the_spec_file(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "s.yaml"
    path.write_text("type: backtest\ndata: {source: ../prices}\nstrategy: {name: momentum, grid: {lookback: 5}}\n")
    spec = load_spec_file(path)
    assert spec.data.source == str((tmp_path / "specs" / ".." / "prices").absolute())


def test_yaml_syntax_error_names_line_and_column() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec_text("type: backtest\nstrategy: {name: [\n", source="x.yaml")
    assert caught.value.lines[0].startswith("x.yaml:3:1: YAML syntax error")


def test_fingerprint_ignores_run_id_but_not_the_grid() -> None:
    a = parse_spec(spec_dict())
    assert a.fingerprint() == parse_spec(spec_dict(run_id="other", description="x")).fingerprint()
    assert a.fingerprint() != parse_spec(spec_dict(strategy={"name": "sma_crossover",
                                                            "grid": {"fast": [5], "slow": [20]}})).fingerprint()
    assert WorkflowSpec.model_validate(a.snapshot()) == a


@pytest.mark.parametrize("path", sorted((REPO / "config" / "workflows").glob("*.yaml")), ids=lambda p: p.name)
def test_sample_specs_are_valid(path: Path) -> None:
    load_spec_file(path)


def test_bundled_startup_spec_is_a_train_test_study(make_config: Any) -> None:
    assert "sample_study" in bundled_spec_names()
    spec = resolve_spec_ref("bundled:sample_study", make_config())
    assert spec.type == "train_test" and spec.data.source == "sample"
    with pytest.raises(SpecError, match="no bundled workflow 'nope'"):
        resolve_spec_ref("bundled:nope", make_config())
