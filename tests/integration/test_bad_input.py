"""Zero 5xx from bad input (issue 12): every listed case and a deterministic fuzz run get a 4xx JSON error.

A real daemon on port 0; after everything, it still answers /health and /ready.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tradingd.config import Config, ConfigError, parse_config
from tradingd.logs import ProtocolErrorFilter
from tradingd.supervisor import Supervisor
from tradingd.trading.loaders import sample_data_dir
from tradingd.workflows.data_roots import allowed_data_roots
from tradingd.workflows.service import load_startup_specs
from yarl import URL

from tests.conftest import base_url

BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
)
BASE_SPECS: list[dict[str, Any]] = [
    {
        "name": "fuzz",
        "type": "backtest",
        "data": {"source": "nowhere/prices.csv", "symbols": ["SYM01"], "start": "2019-01-01", "end": "2020-01-01"},
        "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10], "slow": {"min": 20, "max": 40, "step": 10}}},
        "execution": {"chunk_size": 10, "batch_size": 5},
    },
    {
        "name": "fuzz-wf",
        "type": "walk_forward",
        "data": {"source": "nowhere", "symbols": ["SYM01", "SYM02"]},
        "strategy": {"name": "momentum", "grid": {"lookback": [5, 10]}},
        "walk_forward": {"train_bars": 100, "test_bars": 20, "max_windows": 2},
        "phase_overrides": {"training": {"retention_policy": "minimal"}},
        "objective": "sharpe",
    },
    {
        "name": "fuzz-tt",
        "type": "train_test",
        "data": {"source": "nowhere", "timeframe": "1d"},
        "strategy": {"name": "sma_crossover", "grid": {"fast": 5, "slow": 50}},
        "train_test": {"train_fraction": 0.6},
        "selection": {"top": 2, "scope": "across_symbols"},
        "backtest": {"fill": "next_open", "commission": 0.001, "slippage_bps": 2},
    },
]
NASTY: list[Any] = [
    None, True, -1, 0, 2**64, 10**200, -(10**100), 1e308, -1e-308, float("inf"), "nan", "", "\x00", "a\x00b",
    "x" * 5000, "../../etc/passwd", "/etc/passwd", "é" * 50, [], [[[[[]]]]], {}, {"min": 1, "max": 1e12},
    {"min": 5, "max": 1}, "2020-13-45", "1970-01-01T00:00:00+14:00", 1, "2020-01-01",
]


def mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """One random change somewhere inside ``value`` (a new object)."""
    if isinstance(value, dict) and value and (depth == 0 or rng.random() < 0.8):
        key = rng.choice(sorted(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.15:
            del out[key]
        elif roll < 0.25:
            out[rng.choice(["extra", "", "\x00", "x" * 300, key.upper()])] = rng.choice(NASTY)
        elif roll < 0.5 or depth > 4:
            out[key] = copy.deepcopy(rng.choice(NASTY))
        else:
            out[key] = mutate(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.7:
        out_list = list(value)
        index = rng.randrange(len(out_list))
        out_list[index] = mutate(rng, out_list[index], depth + 1) if rng.random() < 0.5 else rng.choice(NASTY)
        return out_list
    return copy.deepcopy(rng.choice(NASTY))


# YAML a dumper never writes: tags, aliases, out-of-range timestamps, over-long numbers.
RAW_YAML = [
    "2020-99-99", "9" * 5000, "0x" + "f" * 5000, "!!binary '***'", "*nowhere", "&a [*a]", ".nan", "-.inf",
    "!!python/object/apply:os.system [id]", "!!set {a, b}", "{[1]: 2}", "<<: 5", "[" * 300, "1e99999",
    "!!timestamp 2020-01-01T99:00:00", "!!float x", "!!int 1.5", "'unterminated",
]


def serialise(rng: random.Random, spec: Any) -> tuple[bytes, str]:
    """JSON or YAML, sometimes with raw YAML values spliced in or a few bytes flipped, dropped or repeated."""
    if rng.random() < 0.5:
        text, content_type = json.dumps(spec, default=str), "application/json"
    else:
        text, content_type = yaml.safe_dump(spec, allow_unicode=True), "application/yaml"
        lines = text.splitlines()
        if rng.random() < 0.4 and lines:
            at = rng.randrange(len(lines))
            key, sep, _ = lines[at].partition(": ")
            lines[at] = f"{key}: {rng.choice(RAW_YAML)}" if sep else f"{lines[at]} {rng.choice(RAW_YAML)}"
            text = "\n".join(lines)
    data = bytearray(text.encode("utf-8"))
    if rng.random() < 0.3 and data:
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            roll = rng.random()
            if roll < 0.4:
                data[at] = rng.randrange(256)
            elif roll < 0.7:
                del data[at]
            else:
                data[at:at] = bytes([data[at]]) * rng.randint(1, 50)
    return bytes(data), content_type


@pytest.fixture
async def daemon(make_config: Callable[..., Config], tmp_path: Path) -> AsyncIterator[Supervisor]:
    (tmp_path / "data").mkdir()
    config = make_config(http={"header_timeout": 1.0}, data={"allowed_roots": [str(tmp_path / "data")]})
    async with Supervisor(config) as sup:
        yield sup


def auth(sup: Supervisor) -> dict[str, str]:
    return {"Authorization": f"Bearer {sup.api_token}"}


async def answer(resp: aiohttp.ClientResponse) -> tuple[int, dict[str, Any]]:
    body = await resp.json(content_type=None)
    assert isinstance(body, dict), body
    return resp.status, body


async def assert_alive(http: aiohttp.ClientSession, sup: Supervisor) -> None:
    for path in ("/health", "/ready"):
        async with http.get(f"{base_url(sup)}{path}") as resp:
            assert resp.status == 200, (path, await resp.text())


async def test_listed_bad_inputs_get_4xx_json(
    daemon: Supervisor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    url = base_url(daemon)
    gets = {
        f"/runs/{'a' * 300}/report/": 404,
        f"/runs/x/report/{'a' * 5000}.json": 404,
        "/runs/x/report/a%00.json": 404,
        "/runs/x/report/%2e%2e/%2e%2e/etc/passwd.json": 404,
        f"/runs/{'a' * 300}": 404,
        "/outcomes/similar?features=1e154,0,0,0,0,0&k=2": 400,
        "/outcomes/similar?features=1,2": 400,
        "/outcomes/similar?features=nan,0,0,0,0,0": 400,
        f"/outcomes/similar?features=0,0,0,0,0,0&k={'9' * 5000}": 400,
    }
    for path, status in gets.items():
        async with http.get(URL(url + path, encoded=True)) as resp:
            got, body = await answer(resp)
        assert got == status and "error" in body, (path[:80], got, body)
    async with http.get(f"{url}/outcomes/similar", params={"features": "1,2"}) as resp:
        assert "6 numbers" in (await answer(resp))[1]["error"]

    json_bodies = ["9" * 4301, "[" * 100_000 + "]" * 100_000, "[" * 100_000, '{"level": ' + "9" * 5000 + "}"]
    for endpoint in ("/runs", "/admin/cleanup"):
        for text in json_bodies:
            async with http.post(f"{url}{endpoint}", data=text.encode(),
                                 headers={"Content-Type": "application/json", **auth(daemon)}) as resp:
                got, body = await answer(resp)
            assert got == 400 and "error" in body, (endpoint, text[:20], got, body)

    spec = BASE_SPECS[0]
    (tmp_path / "data" / "prices.csv").write_text("timestamp,open,high,low,close\nnot-a-date,1,1,1,1\n")
    yaml_bodies: dict[str, str] = {
        "deep": "[" * 2000 + "]" * 2000,
        "deep-mapping": "a: " * 500 + "1",
        "bomb": BOMB,
        "bomb-in-grid": BOMB + "\ntype: backtest\nstrategy: {name: momentum, grid: {lookback: *i}}\n",
        "mixed-dates": yaml.safe_dump({**spec, "data": {"source": "sample", "start": "2020-01-01", "end": 1}}),
        "outside-roots": yaml.safe_dump({**spec, "data": {"source": "/etc/passwd"}}),
        "escape-roots": yaml.safe_dump({**spec, "data": {"source": str(tmp_path / "data" / ".." / "state")}}),
        "missing-source": yaml.safe_dump({**spec, "data": {"source": str(tmp_path / "data" / "none.csv")}}),
        "nul": yaml.safe_dump({**spec, "name": "a\x00b"}),
        "huge-int": "type: backtest\nstrategy: {name: momentum, grid: {lookback: " + "9" * 5000 + "}}",
        "huge-int-top": "9" * 5000,
        "bad-date": "type: backtest\nstrategy: {name: momentum}\ndata: {start: 2020-99-99}",
        "python-tag": "a: !!python/object/apply:os.system [touch /tmp/x]",
        "not-utf8": "\udcff",
    }
    for what, text in yaml_bodies.items():
        started = time.monotonic()
        data = text.encode("utf-8", "surrogateescape")
        async with http.post(f"{url}/runs", data=data,
                             headers={"Content-Type": "application/yaml", **auth(daemon)}) as resp:
            got, body = await answer(resp)
        assert got == 400 and "error" in body, (what, got, body)
        assert time.monotonic() - started < 5, what  # refused cheaply, not after expanding anything
        assert len(json.dumps(body)) < 2000, what  # no error echoes a whole input
    await assert_alive(http, daemon)


async def test_data_errors_never_echo_file_contents(
    daemon: Supervisor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    secret_cell = "TOPSECRET-CELL-CONTENT"
    (tmp_path / "data" / "SYM01.csv").write_text(
        f"timestamp,open,high,low,close,volume\n2020-01-01,1,1,1,1,1\n{secret_cell},1,1,1,1,1\n"
    )
    spec = {**BASE_SPECS[0], "data": {"source": str(tmp_path / "data"), "symbols": ["SYM01"]}}
    async with http.post(f"{base_url(daemon)}/runs", json=spec, headers=auth(daemon)) as resp:
        got, body = await answer(resp)
    assert got == 201, body
    run_url = f"{base_url(daemon)}/runs/{body['id']}"

    async def finished() -> dict[str, Any] | None:
        async with http.get(run_url) as resp:
            doc = await resp.json()
        return doc if doc["status"] not in ("queued", "running") else None

    deadline = time.monotonic() + 60
    doc = await finished()
    while doc is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        doc = await finished()
    assert doc is not None and doc["status"] == "failed" and "unparseable timestamp" in doc["error"], doc
    assert secret_cell not in json.dumps(doc)


async def test_fuzzed_specs_never_get_a_5xx(daemon: Supervisor, http: aiohttp.ClientSession) -> None:
    rng = random.Random(20261205)
    url = base_url(daemon)
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    for _ in range(300):
        spec: Any = rng.choice(BASE_SPECS)
        for _ in range(rng.randint(1, 3)):
            spec = mutate(rng, spec)
        data, content_type = serialise(rng, spec)
        async with http.post(f"{url}/runs", data=data, headers={"Content-Type": content_type, **auth(daemon)}) as resp:
            got, body = await answer(resp)
        statuses[got] = statuses.get(got, 0) + 1
        errors[str(body.get("error"))[:40]] = errors.get(str(body.get("error"))[:40], 0) + 1
        assert got < 500, (got, body, data[:200])
        if got >= 400:
            assert isinstance(body.get("error"), str), body
        elif got == 201:  # a mutation that is still a valid spec: do not let it compute
            async with http.delete(f"{url}/runs/{body['id']}", headers=auth(daemon)) as resp:
                assert resp.status < 500
    assert statuses.get(400, 0) > 200, statuses  # the fuzzer mostly produces bad specs, as intended
    assert len(errors) > 30, errors  # and reaches many different checks
    await assert_alive(http, daemon)


async def raw_status(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return status_line.split()[1]
    finally:
        writer.close()


async def test_protocol_errors_and_slow_headers(
    daemon: Supervisor, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    port = daemon.port
    # Header bytes that are not UTF-8 in a bearer token: a wrong token, not a crash.
    assert await raw_status(port, b"GET /stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n") == b"403"
    # A known method no route has: routing answers, so the body is our JSON.
    async with http.patch(f"{base_url(daemon)}/runs") as resp:
        assert resp.status == 405 and "error" in await resp.json()
    # aiohttp's own parser refuses unknown methods and over-long headers before any handler or
    # middleware runs; its answer is a plain-text 400 that no public API can reshape.
    # Each is logged as one warning line, not a traceback (the filter tradingd.logs installs).
    server_log = logging.getLogger("aiohttp.server")
    server_log.addFilter(log_filter := ProtocolErrorFilter())
    try:
        with caplog.at_level(logging.WARNING, logger="aiohttp.server"):
            for request in (b"FROB /runs HTTP/1.1\r\nHost: x\r\n\r\n",
                            b"GET /runs/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
                            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n"):
                assert await raw_status(port, request) == b"400"
    finally:
        server_log.removeFilter(log_filter)
    bad = [r for r in caplog.records if r.name == "aiohttp.server"]
    # aiohttp logs a bad method on a fresh connection at DEBUG (port scanners): two lines, not three.
    assert len(bad) == 2 and all(r.levelno == logging.WARNING and r.exc_info is None for r in bad), bad
    assert all(r.getMessage().startswith("bad HTTP request from 127.0.0.1: ") for r in bad), bad
    # A client that never finishes its headers is dropped after http.header_timeout (1 s here).
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the daemon, no answer
    assert time.monotonic() - started < 20
    writer.close()
    await assert_alive(http, daemon)


def test_default_data_roots_and_startup_workflows_outside_them(
    config_dict: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    config = parse_config(config_dict(), name=str(tmp_path / "tradingd.yaml"))
    assert allowed_data_roots(config) == (sample_data_dir(), config.state_dir / "stores", tmp_path / "data")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**BASE_SPECS[0], "data": {"source": "/etc/hostname"}}))
    config = parse_config(config_dict(startup_workflows=["spec.yaml"]), name=str(tmp_path / "tradingd.yaml"))
    with pytest.raises(ConfigError) as caught:
        load_startup_specs(config)
    [line] = caught.value.lines
    assert line.startswith(f"{tmp_path / 'tradingd.yaml'}: startup_workflows.0: spec.yaml: data.source: /etc/hostname")
    assert "outside the allowed data roots" in line
    # Relative roots are relative to the config file; a file inside one is accepted.
    (tmp_path / "prices").mkdir()
    (tmp_path / "prices" / "SYM01.csv").write_text("timestamp,open,high,low,close\n")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**BASE_SPECS[0], "data": {"source": "prices/SYM01.csv"}}))
    config = parse_config(config_dict(startup_workflows=["spec.yaml"], data={"allowed_roots": ["prices"]}),
                          name=str(tmp_path / "tradingd.yaml"))
    assert [spec.data.source for spec in load_startup_specs(config)] == [str(tmp_path / "prices" / "SYM01.csv")]
