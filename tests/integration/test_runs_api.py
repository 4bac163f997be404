"""The /runs API on a real port: submit (JSON, YAML), auth, errors, progress, cancel."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from tradingd.config import Config
from tradingd.supervisor import Supervisor

from tests.conftest import await_until, base_url

SPEC: dict[str, Any] = {
    "name": "api_study",
    "type": "train_test",
    "data": {"source": "sample", "symbols": ["SYM01", "SYM02"], "start": "2019-01-01"},
    "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10], "slow": [30, 60]}},
}
# Big enough to watch it run: 10 symbols x 2,964 combinations in 15 containers each, no events.
BIG: dict[str, Any] = {
    "name": "big",
    "type": "backtest",
    "data": {"source": "sample"},
    "strategy": {"name": "sma_crossover", "grid": {"fast": {"min": 2, "max": 40}, "slow": {"min": 45, "max": 120}}},
    "event_tracing": [],
    "execution": {"chunk_size": 200, "batch_size": 50},
}


def phase_files(root: Path, name: str) -> set[str]:
    return {p.parent.name for p in root.glob(f"*/{name}")}


def read_all(directory: Path, pattern: str = "*.json") -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob(pattern))]


def auth(sup: Supervisor) -> dict[str, str]:
    return {"Authorization": f"Bearer {sup.api_token}"}


async def post(http: aiohttp.ClientSession, sup: Supervisor, body: Any, *, yaml_body: bool = False,
               query: str = "", headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    if yaml_body:
        data, content_type = yaml.safe_dump(body).encode(), "application/yaml"
    else:
        data, content_type = (body if isinstance(body, bytes) else json.dumps(body).encode()), "application/json"
    async with http.post(f"{base_url(sup)}/runs{query}", data=data,
                         headers={"Content-Type": content_type, **(auth(sup) if headers is None else headers)}
                         ) as resp:
        return resp.status, await resp.json()


async def get(http: aiohttp.ClientSession, sup: Supervisor, path: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{base_url(sup)}{path}") as resp:
        return resp.status, await resp.json()


async def wait_status(http: aiohttp.ClientSession, sup: Supervisor, run_id: str, limit: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status, body = await get(http, sup, f"/runs/{run_id}")
        assert status == 200
        if body["status"] not in ("queued", "running"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


async def test_submit_json_and_yaml_then_follow_them(supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
    status, created = await post(http, supervisor, SPEC)
    assert status == 201, created
    assert created["status"] in ("queued", "running") and created["url"] == f"/runs/{created['id']}"
    status, created_yaml = await post(http, supervisor, {**SPEC, "name": "yaml_study"}, yaml_body=True,
                                      query="?run_id=from-yaml")
    assert status == 201 and created_yaml["id"] == "from-yaml"
    for run_id in (created["id"], "from-yaml"):
        done = await wait_status(http, supervisor, run_id)
        assert done["status"] == "completed", done
        assert done["progress"]["done"] == done["progress"]["total"] == 4
        assert [p["name"] for p in done["phases"]] == ["training", "testing"]
        assert "testing" in phase_files(Path(done["results_dir"]), "aggregate_results.json")
        # The method's out-of-sample result and the training's overfitting figures (issue 13).
        oos = json.loads((Path(done["results_dir"]) / "testing" / "phase_summary.json").read_text())["out_of_sample"]
        assert done["phases"][1]["results"]["out_of_sample"]["mean"] == oos["mean"]
        assert done["results"]["out_of_sample"]["mean"] == oos["mean"]
        assert set(done["results"]["overfitting"]) >= {"psr", "dsr", "pbo", "n_trials"}
    status, listing = await get(http, supervisor, "/runs")
    assert status == 200 and [r["id"] for r in listing["runs"]][:2] == ["from-yaml", created["id"]]
    status, only = await get(http, supervisor, "/runs?status=failed")
    assert only["runs"] == [] and only["total"] == 0


    async def metrics_after_the_runs() -> str | None:  # the snapshot refreshes on its own interval
        async with http.get(f"{base_url(supervisor)}/metrics") as resp:
            text = await resp.text()
        return text if 'tradingd_runs{status="completed"} 2.0' in text else None

    text = await await_until(metrics_after_the_runs, what="/metrics to count both runs completed")
    assert "tradingd_containers_running 0.0" in text


async def test_auth_is_required_to_submit_and_cancel(supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, supervisor, SPEC, headers={})
    assert status == 401 and "bearer token" in body["error"]
    status, body = await post(http, supervisor, SPEC, headers={"Authorization": "Bearer wrong"})
    assert status == 403
    async with http.delete(f"{base_url(supervisor)}/runs/anything") as resp:
        assert resp.status == 401
    assert supervisor.workflows.queue.list() == []


async def test_invalid_specs_are_400_with_key_paths(supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, supervisor, {**SPEC, "objectiv": "sharpe"})
    assert status == 400
    assert body["errors"] == ["spec: objectiv: unknown key"] and "objectiv: unknown key" in body["error"]
    status, body = await post(http, supervisor, {**SPEC, "data": {"symbols": ["../../etc"]}})
    assert status == 400 and body["errors"][0].startswith("spec: data.symbols.0: ") and "not allowed" in body["error"]
    status, body = await post(http, supervisor, b'{"name": ')
    assert status == 400 and body["error"].startswith("malformed JSON body")
    status, body = await post(http, supervisor, {"type": "backtest", "strategy": {"name": "x"}}, yaml_body=True)
    assert status == 400 and "strategy.name: unknown strategy 'x'" in body["error"]
    status, body = await post(http, supervisor, b"")
    assert status == 400 and "empty body" in body["error"]
    status, body = await post(http, supervisor, SPEC, query="?run_id=../up")
    assert status == 400 and "run id" in body["error"]
    assert supervisor.workflows.queue.list() == []


async def test_unknown_runs_are_404_and_duplicates_409(supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
    assert (await get(http, supervisor, "/runs/nope"))[0] == 404
    async with http.delete(f"{base_url(supervisor)}/runs/nope", headers=auth(supervisor)) as resp:
        assert resp.status == 404 and "no run 'nope'" in (await resp.json())["error"]
    status, _ = await post(http, supervisor, {**SPEC, "run_id": "once"})
    assert status == 201
    status, body = await post(http, supervisor, {**SPEC, "run_id": "once"})
    assert status == 409 and "already exists" in body["error"]
    await wait_status(http, supervisor, "once")
    async with http.delete(f"{base_url(supervisor)}/runs/once", headers=auth(supervisor)) as resp:
        assert resp.status == 409 and "already completed" in (await resp.json())["error"]


async def test_too_large_body_is_413(make_config: Callable[..., Config], http: aiohttp.ClientSession) -> None:
    async with Supervisor(make_config(http={"max_body_bytes": 2048})) as sup:
        padded = {**SPEC, "description": "x" * 4096}
        status, body = await post(http, sup, padded)
        assert status == 413 and "limit 2048 bytes" in body["error"]


async def test_progress_while_running_health_stays_up_and_cancel(
    supervisor: Supervisor, http: aiohttp.ClientSession
) -> None:
    status, created = await post(http, supervisor, BIG)
    assert status == 201
    run_id = created["id"]
    seen: dict[str, Any] = {}
    health_times = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        started = time.monotonic()
        health_status, _ = await get(http, supervisor, "/health")
        health_times.append(time.monotonic() - started)
        assert health_status == 200
        _, seen = await get(http, supervisor, f"/runs/{run_id}")
        progress = seen["progress"]
        if 0 < progress["done"] < progress["total"] and progress["eta_seconds"] is not None:
            break
        await asyncio.sleep(0.05)
    progress = seen["progress"]
    assert seen["status"] == "running" and 0 < progress["done"] < progress["total"] == 10 * 15
    assert progress["eta_seconds"] > 0 and progress["running"] >= 1
    assert seen["phases"][0]["status"] == "running"
    assert max(health_times) < 2.0, health_times  # compute runs off the event loop (a generous bound)
    async with http.delete(f"{base_url(supervisor)}/runs/{run_id}", headers=auth(supervisor)) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "cancelled"
    # Containers that were computing wrote "cancelled" results (whether one was computing at that
    # moment is timing: test_workflow_runs cancels one mid-compute deterministically).
    statuses = [doc["status"] for doc in read_all(Path(seen["results_dir"], "backtest", "containers"))]
    assert set(statuses) <= {"completed", "cancelled"} and len(statuses) < 15
    (manifest,) = read_all(Path(seen["results_dir"]), "manifest.json")
    assert manifest["status"] == "cancelled"
    (phase,) = manifest["phases"]
    assert phase["status"] == "cancelled" and phase["finished_at"] is not None


async def test_503_while_admission_paused_or_stopping(supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
    supervisor.memory.admission.pause("test says memory is critical")
    status, body = await post(http, supervisor, SPEC)
    assert status == 503 and "admission paused" in body["error"]
    supervisor.memory.admission.resume()
    await supervisor.workflows.queue.close(0.0)
    status, body = await post(http, supervisor, SPEC)
    assert status == 503 and "stopping" in body["error"]


async def test_run_report_is_served_with_its_plots(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    async with Supervisor(make_config()) as sup:
        url = f"http://127.0.0.1:{sup.port}"
        run_dir = sup.results_dir / "r1"
        (run_dir / "training").mkdir(parents=True)
        (run_dir / "report.html").write_text('<a href="training/report.html">training</a>')
        (run_dir / "training" / "report.html").write_text('<img src="heatmap.png">')
        (run_dir / "training" / "heatmap.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        (sup.results_dir / "secret.html").write_text("outside the run")
        async with http.get(f"{url}/runs/r1/report", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/runs/r1/report/"
        async with http.get(f"{url}/runs/r1/report/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "training/report.html" in await resp.text()
        async with http.get(f"{url}/runs/r1/report/training/heatmap.png") as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
        for bad in ("../secret.html", "training/missing.png", "%2e%2e/secret.html"):
            async with http.get(f"{url}/runs/r1/report/{bad}") as resp:
                assert resp.status == 404, bad
                assert "error" in await resp.json()
        async with http.get(f"{url}/runs/..%2F..%2Fetc/report/passwd") as resp:
            assert resp.status == 404
