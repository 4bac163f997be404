"""The shipped alert rules and Grafana dashboard, against promtool and a real Prometheus.

``promtool test rules`` runs the rule unit tests in deploy/prometheus. The slow
test starts Debian's ``prometheus`` on loopback, scraping a live daemon every
second, and asks its HTTP API for every PromQL expression of the Grafana
dashboard and of the rules; then it holds real memory in the daemon's process,
over the pressure mark of a small ``memory.limit_mb``, until the
memory-pressure alert fires. Locally these skip without Prometheus; under CI
(``CI=true``) they fail, so a broken CI image cannot pass silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import yaml
from tradingd.config import Config
from tradingd.memory.monitor import sample_process
from tradingd.supervisor import Supervisor

from tests.conftest import REPO, await_until, base_url

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tradingd.json"
COMPARISON = re.compile(r"\s(==|!=|>=|<=|>|<)\s+(-?[0-9.e+]+)\s*$")


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is missing in CI (.ci/run installs Debian's prometheus package)")
        pytest.skip(f"{name} not available: apt-get install prometheus")
    return found


def rule_expressions() -> dict[str, str]:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    return {rule["alert"]: rule["expr"] for rule in rules}


def dashboard_expressions() -> dict[str, str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {f"{p['title']} / {t['refId']}": t["expr"] for p in panels for t in p["targets"]}


def test_rules_pass_promtool() -> None:
    promtool = _tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                          capture_output=True, text=True, timeout=60)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_every_rule_is_a_threshold_and_every_alert_is_unit_tested() -> None:
    tested = {case["alertname"] for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in group["alert_rule_test"]}
    for name, expr in rule_expressions().items():
        assert COMPARISON.search(expr), f"{name}: {expr!r} is not '<series> <op> <threshold>'"
        assert name in tested, f"{name} has no promtool unit test"
    assert len(dashboard_expressions()) >= 15


def with_bool(expr: str) -> str:
    """``x > 3`` keeps only the series over 3; ``x > bool 3`` answers 0 or 1 for every series of x."""
    return COMPARISON.sub(lambda m: f" {m.group(1)} bool {m.group(2)}", expr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """A real ``prometheus`` on loopback scraping one target every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The rules as shipped, with every `for:` cut to 1 s so a test need not hold pressure for minutes.
        rules = re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 1s", RULES.read_text())
        (workdir / "alerts.yml").write_text(rules)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": "tradingd", "static_configs": [{"targets": [target]}]}],
        }))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [_tool("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    async def query(self, http: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        async with http.get(f"{self.url}/api/v1/query", params={"query": expr}) as resp:
            body = await resp.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        workdir = tmp_path / "prometheus"
        workdir.mkdir()
        started.append(Prometheus(workdir, target))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
async def small_limit_supervisor(make_config: Callable[..., Config]) -> AsyncIterator[Supervisor]:
    # Now at 40% of the limit: normal; the pressure mark (80%) is twice today's use.
    limit_mb = sample_process().used_bytes * 2.5 / 2**20
    async with Supervisor(make_config(memory={"limit_mb": limit_mb, "monitor_interval": 0.2})) as sup:
        yield sup


SMALL_STUDY = {
    "name": "prom-demo", "type": "backtest", "data": {"source": "sample", "symbols": ["SYM01", "SYM02"]},
    "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10], "slow": [50, 100]}},
}


@pytest.mark.slow
async def test_real_prometheus_scrapes_the_daemon_and_fires_the_pressure_alert(
    small_limit_supervisor: Supervisor, http: aiohttp.ClientSession, prometheus: Callable[[str], Prometheus]
) -> None:
    sup = small_limit_supervisor
    async with http.post(f"{base_url(sup)}/runs", json=SMALL_STUDY,
                         headers={"Authorization": f"Bearer {sup.api_token}"}) as resp:
        assert resp.status == 201, await resp.text()
    prom = prometheus(f"127.0.0.1:{sup.port}")

    async def scraped_enough() -> bool:
        try:
            found = await prom.query(http, 'count_over_time(up{job="tradingd"}[5m]) >= 4')
        except aiohttp.ClientError:
            return False  # not listening yet
        return bool(found)

    await await_until(scraped_enough, within=60, what=f"Prometheus to scrape the daemon (log: {prom.log})")
    assert (await prom.query(http, 'up{job="tradingd"}'))[0]["value"][1] == "1"

    await await_until(lambda: sup.runs.list()[0].finished, within=60, what="the small study to finish")

    async def counted() -> bool:
        found = await prom.query(http, "tradingd_containers_finished_total > 0")
        return bool(found)
    await await_until(counted, within=30, what="the throughput counter in Prometheus")

    empty: dict[str, str] = {}
    for name, expr in {**dashboard_expressions(), **{k: with_bool(v) for k, v in rule_expressions().items()}}.items():
        if not await prom.query(http, expr):
            empty[name] = expr
    assert not empty, f"expressions without data: {empty}"
    assert sup.monitor.level.label in ("normal", "gc"), "the daemon must start below pressure for this test to mean it"
    assert not await prom.query(http, 'ALERTS{alertname="TradingdMemoryPressure"}')

    # Real pressure: hold fresh pages until used memory is 85% of the limit (over pressure, under critical).
    limit = sup.monitor.limit.bytes
    ballast_bytes = int(0.85 * limit) - sample_process().used_bytes
    ballast = np.ones(max(ballast_bytes, 0) // 8)
    try:
        await await_until(lambda: sup.monitor.level.label in ("pressure", "critical"), within=30,
                          what="the monitor to see the ballast")

        async def firing() -> list[dict[str, Any]]:
            return await prom.query(http, 'ALERTS{alertname="TradingdMemoryPressure",alertstate="firing"}')

        alerts = await await_until(firing, within=60, what="TradingdMemoryPressure to fire")
        assert alerts[0]["metric"]["severity"] == "warning"
        level = await prom.query(http, "tradingd_memory_pressure_level")
        assert float(level[0]["value"][1]) >= 2
    finally:
        del ballast
