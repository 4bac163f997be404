"""Take docs/dashboard.png from a default install: `tradingd run` with the embedded default config.

Runs the daemon in a fresh temporary directory (so ./var is new, as in a fresh
clone), on a free loopback port (TRADINGD_HTTP_PORT), lets the bundled sample
study run to its end (so its result, selection and equity sparkline show), and
screenshots the dashboard in Debian's Chromium through Playwright.
Usage: python scripts/dashboard_screenshot.py [--wait 5] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_study(url: str, timeout: float = 300.0) -> None:
    """Until every run has ended (the bundled sample study: a minute or so on two busy cores)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/runs", timeout=5) as resp:
            runs = json.load(resp)["runs"]
        if runs and all(r["status"] not in ("queued", "running") for r in runs):
            return
        time.sleep(1.0)
    raise SystemExit(f"the sample study did not end in {timeout:g} s")


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the daemon at {url} did not become ready in {timeout:g} s")


async def shoot(url: str, out: Path) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(f"{url}/?interval=1000")
            await page.wait_for_function("Number(document.body.dataset.refreshes || 0) >= 2", timeout=30_000)
            await page.screenshot(path=str(out), full_page=True)
        finally:
            await browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=5.0, help="seconds after the sample study ended before the shot")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="tradingd-default-") as workdir:
        env = {**os.environ, "TRADINGD_HTTP_PORT": str(port), "PYTHONPATH": str(REPO / "daemon")}
        daemon = subprocess.Popen([sys.executable, "-m", "tradingd", "run"], cwd=workdir, env=env)
        try:
            wait_ready(url)
            wait_study(url)
            time.sleep(args.wait)
            asyncio.run(shoot(url, args.out))
            with urllib.request.urlopen(f"{url}/runs") as resp:
                runs = json.load(resp)["runs"]
            listed = ", ".join(f"{r['id']} {r['status']}" for r in runs)
            print(f"wrote {args.out} ({listed})")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
