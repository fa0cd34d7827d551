"""The ``cpimon`` command as users run it: a real subprocess each time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agents.demo import scrape
from models.catalog import load_catalog
from streams.broker import free_port
from tests.support import EXAMPLE_CATALOG, ROOT, wait_for


def cpimon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_help_lists_every_command() -> None:
    result = cpimon("--help")
    assert result.returncode == 0
    for command in ("worker", "simulate", "catalog", "demo"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command


def test_catalog_check_accepts_the_example() -> None:
    result = cpimon("catalog", "check", str(EXAMPLE_CATALOG))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "checkout_success_rate" in result.stdout


def test_catalog_check_explains_each_error_with_its_location(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = EXAMPLE_CATALOG.read_text()
    text = text.replace(
        "quantile: properties.latency_ms, q: 0.95", "quantile: properties.latency_ms, q: 95"
    )
    text = text.replace("owner: payments", "owner: Payments Team", 1)
    broken.write_text(text)
    result = cpimon("catalog", "check", str(broken))
    assert result.returncode == 2
    assert "cpis[page_latency_p95].measure.q" in result.stderr
    assert "cpis[checkout_success_rate].owner" in result.stderr
    assert "cpimon catalog check" in result.stderr


def test_worker_refuses_a_malformed_broker_url() -> None:
    result = cpimon("worker", "--broker", "localhost:9092", "--catalog", str(EXAMPLE_CATALOG))
    assert result.returncode == 2
    assert "kafka://HOST:PORT" in result.stderr


def test_worker_stops_at_start_on_a_catalog_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("cpis: []\n")
    result = cpimon("worker", "--broker", "kafka://127.0.0.1:1", "--catalog", str(broken))
    assert result.returncode == 2
    assert "cpis" in result.stderr


@pytest.mark.broker
def test_demo_runs_for_its_duration_serves_metrics_and_cleans_up() -> None:
    port = free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agents.cli",
            "demo",
            "--duration",
            "40",
            "--rate",
            "300",
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CPIMON_IDLE_TIMEOUT": "6"},
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def live_cpis() -> set[str]:
            try:
                samples = scrape(url)
            except OSError:
                return set()
            return {labels["cpi"] for name, labels, _ in samples if name == "cpimon_cpi_live_value"}

        seen = wait_for(
            lambda: (cpis := live_cpis()) >= {"checkout_success_rate", "page_latency_p95"} and cpis,
            35,
            "live checkout and latency CPIs on the demo's /metrics",
        )
        assert seen <= {cpi.name for cpi in load_catalog(EXAMPLE_CATALOG).cpis}
        output, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, output
    assert "memory storage" in output
    assert "demo stopped" in output
    # The last frame of the live view: the links table follows the indicators, with a row
    # per link of the example (every CPI with every KPI).
    assert "CPI → KPI links" in output
    assert re.search(r"cpi → kpi\s*┃\s*best lag\s*┃\s*r \[95 % interval\]", output), output
    assert "checkout_success_rate → revenue" in output
    assert "baseline (dev)" in output
    pid = int(re.search(r"pid (\d+)\), memory storage", output).group(1))  # type: ignore[union-attr]
    assert not Path(f"/proc/{pid}").exists(), "the embedded broker outlived the demo"
