"""From a payment outage to the payments team's webhook, on real servers.

A ``cpimon worker`` on the Tansu broker computes tests/data/catalog.alerts.yaml (three
CPIs, three owners, five-second windows) from live simulator traffic; a real Prometheus
scrapes it and evaluates the rules ``cpimon rules`` generates for that catalog; a real
Alertmanager, configured as ``cpimon rules --alertmanager-out`` writes it (with short
group timings), routes the alerts by owner to webhook receivers served by the test.

The steady stream must raise no alert at all.  Then payment success falls to about 0.5
for 30 s: CpiTargetBreached and CpiDropDetected of checkout_success_rate must reach the
payments receiver, and no other, within the bounds of agents/alert_timing.py, and be
resolved within their bounds after the outage ends.  The measured delays are printed
(``pytest -s``) for the README.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.alert_timing import AlertPath, NotificationBounds, indicator_bounds
from agents.rules import render_alertmanager, write_rules
from bench.dashboard_queries import PrometheusServer, live_traffic
from models.catalog import load_catalog
from streams.broker import EmbeddedBroker
from tests.alerting import (
    ALERTS_CATALOG,
    ALERTS_INCIDENT,
    ALERTS_RATE,
    ALERTS_SEED,
    OUTAGE_SECONDS,
    OUTAGE_START,
    AlertmanagerServer,
    Notification,
    WebhookReceiver,
)
from tests.support import WorkerProcess, isolated_topics, wait_for, worker_process

pytestmark = [pytest.mark.broker, pytest.mark.prometheus, pytest.mark.timeout(330)]

CPI = "checkout_success_rate"
OWNER = "payments"
#: The settings of this test's alert path. P = 2 s: the worker's two hops through the
#: broker take well under a second here; the rest is headroom for a loaded machine.
PATH = AlertPath(
    lateness=1.0,  # replaced by the catalog's allowed_lateness (1 s)
    processing=2.0,
    scrape_interval=1.0,
    evaluation_interval=1.0,
    group_wait=1.0,
    group_interval=2.0,
)
#: Added to every bound: what the formula leaves out (Prometheus handing alerts to
#: Alertmanager, the webhook call, a scrape or evaluation that runs late) and the
#: scheduling of six processes on a shared two-core machine.
SLACK = 8.0
BREACH, DROP = "CpiTargetBreached", "CpiDropDetected"


def _first(hooks: WebhookReceiver, matches: Callable[[Notification], bool]) -> Notification | None:
    return next((n for n in hooks.received() if matches(n)), None)


def _history(hooks: WebhookReceiver, prometheus: PrometheusServer, worker: WorkerProcess) -> str:
    notes = "\n".join(map(str, hooks.received())) or "(none)"
    alerts = prometheus.query("ALERTS", time.time())
    states = "\n".join(f"{a['metric']}" for a in alerts) or "(none)"
    return (
        f"notifications:\n{notes}\nPrometheus ALERTS now:\n{states}\n"
        f"worker: {worker.describe('cpimon_cpi_drop_active', 'cpimon_cpi_below_target')}"
    )


def _wait_until(
    deadline: float, probe: Callable[[], bool], what: str, history: Callable[[], str]
) -> None:
    while time.time() < deadline:
        if probe():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}\n{history()}")


def test_a_payment_outage_reaches_payments_only_within_the_bounds(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    catalog = load_catalog(ALERTS_CATALOG)
    bounds: NotificationBounds = indicator_bounds(catalog.indicator(CPI), PATH)
    assert bounds.breach_fires is not None and bounds.breach_resolves is not None
    fire_bound = {BREACH: bounds.breach_fires, DROP: bounds.drop_fires}
    resolve_bound = {BREACH: bounds.breach_resolves, DROP: bounds.drop_resolves}
    [rules] = write_rules(catalog, tmp_path / "rules")
    env = {
        **isolated_topics("cpimon-alerts"),
        "CPIMON_IDLE_TIMEOUT": "6",
    }
    broker.create_topics({env["CPIMON_EVENTS_TOPIC"]: 4})
    for name in ("alertmanager", "prometheus"):
        (tmp_path / name).mkdir()
    with WebhookReceiver() as hooks:
        routing = render_alertmanager(
            catalog,
            hooks.base,
            group_wait=PATH.group_wait,
            group_interval=PATH.group_interval,
            repeat_interval=3600.0,
        )
        with (
            AlertmanagerServer(tmp_path / "alertmanager", routing) as alertmanager,
            worker_process(broker.url, tmp_path, env, catalog=ALERTS_CATALOG) as worker,
            PrometheusServer(
                tmp_path / "prometheus",
                [f"127.0.0.1:{worker.port}"],
                [rules],
                scrape_interval=PATH.scrape_interval,
                evaluation_interval=PATH.evaluation_interval,
                alertmanagers=[alertmanager.address],
            ) as prometheus,
        ):
            wait_for(prometheus.targets_up, 30, "Prometheus scraping the worker", interval=0.5)
            started = time.time()
            outage_starts, outage_ends = (
                started + OUTAGE_START,
                started + OUTAGE_START + OUTAGE_SECONDS,
            )

            def history() -> str:
                return _history(hooks, prometheus, worker)

            with live_traffic(
                broker.bootstrap,
                env["CPIMON_EVENTS_TOPIC"],
                ALERTS_RATE,
                [ALERTS_INCIDENT],
                seed=ALERTS_SEED,
                start_time=started,
                odd_events=False,
            ):
                # 1. The steady stream: not one notification, to anyone.
                while time.time() < outage_starts:
                    assert not hooks.received(), f"an alert during steady traffic\n{history()}"
                    time.sleep(0.5)
                baseline = worker.value("cpimon_cpi_baseline", cpi=CPI)
                assert baseline is not None, f"no baseline before the outage\n{history()}"
                # 2. The outage: both alerts at the payments receiver.
                _wait_until(
                    outage_starts + max(fire_bound.values()) + SLACK,
                    lambda: all(
                        _first(hooks, lambda n, a=a: n.has(a, "firing")) for a in fire_bound
                    ),
                    "the outage did not page payments in time",
                    history,
                )
                # 3. The recovery: both resolved.
                _wait_until(
                    outage_ends + max(resolve_bound.values()) + SLACK,
                    lambda: all(_first(hooks, lambda n, a=a: n.resolves(a)) for a in resolve_bound),
                    "the alerts did not resolve in time after the outage",
                    history,
                )
            report = history()

    notifications = hooks.received()
    assert {n.owner for n in notifications} == {OWNER}, report
    alerts = [alert for n in notifications for alert in n.body["alerts"]]
    assert {alert["labels"]["alertname"] for alert in alerts} == {BREACH, DROP}, report
    for alert in alerts:
        assert alert["labels"]["cpi"] == CPI and alert["labels"]["owner"] == OWNER, alert
        assert alert["labels"]["severity"] == "page", alert
        assert alert["annotations"]["runbook_url"].startswith("https://runbooks.example.com/")
    segments = {alert["labels"].get("channel", "(all)") for alert in alerts}
    lines = []
    for name in (BREACH, DROP):
        fired = _first(hooks, lambda n, a=name: n.has(a, "firing"))
        resolved = _first(hooks, lambda n, a=name: n.resolves(a))
        assert fired is not None and resolved is not None, report
        fire_delay = fired.received - outage_starts
        resolve_delay = resolved.received - outage_ends
        assert 0 < fire_delay <= fire_bound[name] + SLACK, (name, fire_delay, report)
        assert 0 < resolve_delay <= resolve_bound[name] + SLACK, (name, resolve_delay, report)
        lines.append(
            f"{name}: fired {fire_delay:.1f}s after the outage began (bound "
            f"{fire_bound[name]:g}s + {SLACK:g}s), resolved {resolve_delay:.1f}s after it "
            f"ended (bound {resolve_bound[name]:g}s + {SLACK:g}s)"
        )
    print(f"\nalert timing ({len(notifications)} notifications, segments {sorted(segments)}):")
    print("\n".join(lines))
