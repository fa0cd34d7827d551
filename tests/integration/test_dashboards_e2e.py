"""The generated dashboards against real data: a worker on the Tansu broker with live
simulator traffic, a real Prometheus scraping it with the generated rules, and every
panel query, annotation and template variable of every dashboard run through
Prometheus' HTTP API the way Grafana would (bench/dashboard_queries.py).

A panel whose queries stay empty for every selection of its variables fails the test.
The catalog is tests/data/catalog.fast.yaml (one-second windows, short warm-ups), so
values, baselines, drops, alerts and links appear within about half a minute.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agents.dashboards import build_dashboards, render_dashboard
from agents.rules import write_rules
from bench.dashboard_queries import (
    DashboardCheck,
    PrometheusServer,
    Window,
    check_dashboard,
    live_traffic,
)
from models.catalog import load_catalog
from streams.broker import EmbeddedBroker
from tests.support import ROOT, isolated_topics, wait_for, worker_process

pytestmark = [pytest.mark.broker, pytest.mark.prometheus, pytest.mark.timeout(240)]

FAST_CATALOG = ROOT / "tests" / "data" / "catalog.fast.yaml"
RATE = 300.0  # simulated events per second
# Payment success falls to about 0.5 from 15 s to 35 s: breaches, drops and alerts.
INCIDENT = "payment-outage@15s+20s"
# Longest wait for every query to have data, counted from Prometheus' start.
DATA_DEADLINE = 80.0
SCRAPE_INTERVAL = 1.0


def _report(checks: list[DashboardCheck]) -> str:
    lines = []
    for check in checks:
        for title, ref, expr in check.empty:
            lines.append(f"{check.title} / panel {title!r} query {ref}: no data for {expr}")
        for title, expr in check.empty_annotations:
            lines.append(f"{check.title} / {title}: no data for {expr}")
        lines += [f"{check.title} / variable ${name}: no values" for name in check.empty_variables]
        lines += [f"{check.title} / {error}" for error in check.errors]
    return "\n".join(lines)


def test_every_dashboard_query_returns_data(broker: EmbeddedBroker, tmp_path: Path) -> None:
    catalog = load_catalog(FAST_CATALOG)
    boards = [json.loads(render_dashboard(b)) for b in build_dashboards(catalog).values()]
    assert len(boards) == 5
    [rules] = write_rules(catalog, tmp_path / "rules")
    env = {
        **isolated_topics("cpimon-dashboards"),
        # The Tansu settings use a 2 s session: the idle timeout must be at least twice that.
        "CPIMON_IDLE_TIMEOUT": "6",
        "CPIMON_CHECKPOINT_INTERVAL": "1",
    }
    broker.create_topics({env["CPIMON_EVENTS_TOPIC"]: 4})
    prometheus_dir = tmp_path / "prometheus"
    prometheus_dir.mkdir()
    with (
        worker_process(broker.url, tmp_path, env, catalog=FAST_CATALOG) as worker,
        live_traffic(broker.bootstrap, env["CPIMON_EVENTS_TOPIC"], RATE, [INCIDENT]),
        PrometheusServer(
            prometheus_dir,
            [f"127.0.0.1:{worker.port}"],
            [rules],
            scrape_interval=SCRAPE_INTERVAL,
        ) as prometheus,
    ):
        started = time.time()
        wait_for(prometheus.targets_up, 20, "Prometheus scraping the worker", interval=0.5)
        checks: list[DashboardCheck] = []
        while True:
            window = Window(started, time.time(), 1.0, SCRAPE_INTERVAL)
            checks = [check_dashboard(board, prometheus, window) for board in boards]
            clean = not _report(checks)
            if clean or time.time() - started > DATA_DEADLINE:
                print(f"every query had data after {time.time() - started:.0f}s: {clean}")
                break
            time.sleep(3)
        # The payments team's board shows the outage as an alert on its CPI.
        alerts = prometheus.query('ALERTS{owner="payments"}', time.time())
        breached = {(a["metric"]["alertname"], a["metric"].get("cpi")) for a in alerts} | {
            (a["metric"]["alertname"], a["metric"].get("cpi"))
            for a in prometheus.query_range('ALERTS{owner="payments"}', started, time.time(), 1.0)
        }
        worker.samples()  # fails with the worker's log if it died meanwhile

    assert [check.title for check in checks] == [board["title"] for board in boards]
    assert sum(check.targets for check in checks) >= 60
    assert ("CpiTargetBreached", "checkout_success_rate") in breached, breached
    assert clean, (
        f"panels without data after {DATA_DEADLINE:.0f}s of live traffic:\n{_report(checks)}"
    )
