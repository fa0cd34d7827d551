"""Alertmanager and the webhook receivers it notifies, for the alerting end-to-end test,
and the traffic of that test (tests/unit/test_alert_catalog.py replays it offline).

:class:`AlertmanagerServer` runs Debian's ``prometheus-alertmanager`` on a free
loopback port (clustering off) with a given config; :class:`WebhookReceiver` is the
HTTP server every receiver of that config posts to, one path per owner, recording
each notification with the time it arrived.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.dashboard_queries import ServerProcess
from streams.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
#: Three CPIs with three owners, five-second windows, a short warm-up.
ALERTS_CATALOG = ROOT / "tests" / "data" / "catalog.alerts.yaml"
#: Simulated events per second: about 120 payment attempts per 5-second window, 24 of
#: them on android, the smallest segment (the catalog judges windows of 12 or more).
ALERTS_RATE = 600.0
ALERTS_SEED = 11
#: Seconds of steady traffic before the payment outage: the drop detector's warm-up
#: (10 windows) and a few judged windows, all of which must stay silent...
OUTAGE_START = 80.0
#: ...and how long payment success stays at about 0.5.
OUTAGE_SECONDS = 30.0
ALERTS_INCIDENT = f"payment-outage@{OUTAGE_START:g}s+{OUTAGE_SECONDS:g}s"


@dataclass(frozen=True)
class Notification:
    """One webhook call: when it arrived, the owner (the URL's last part), Alertmanager's
    JSON body (``status``, ``groupLabels``, ``alerts`` with their ``labels`` and
    ``status``...)."""

    received: float
    owner: str
    body: dict[str, Any]

    @property
    def alertnames(self) -> set[str]:
        return {alert["labels"].get("alertname", "") for alert in self.body.get("alerts", [])}

    def has(self, alertname: str, status: str) -> bool:
        """Whether an alert called ``alertname`` in ``status`` (firing, resolved) is in it."""
        return any(
            alert["labels"].get("alertname") == alertname and alert.get("status") == status
            for alert in self.body.get("alerts", [])
        )

    def resolves(self, alertname: str) -> bool:
        """Whether this is the group of ``alertname`` with every alert resolved."""
        return (
            self.body.get("groupLabels", {}).get("alertname") == alertname
            and self.body.get("status") == "resolved"
        )

    def __str__(self) -> str:
        alerts = ", ".join(
            f"{alert['labels'].get('alertname')}[{alert.get('status')}]"
            f"{{{','.join(f'{k}={v}' for k, v in sorted(alert['labels'].items()))}}}"
            for alert in self.body.get("alerts", [])
        )
        return f"{self.received:.1f} to {self.owner}: {self.body.get('status')}: {alerts}"


class WebhookReceiver:
    """HTTP server on 127.0.0.1 recording every POST to ``/hooks/<owner>``.

    Use as a context manager; :attr:`base` is the ``--webhook-base`` for
    ``cpimon rules``.  Served from a thread; stopped on exit.
    """

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.time()
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                owner = self.path.rstrip("/").rsplit("/", 1)[-1]
                with receiver._lock:
                    receiver.notifications.append(Notification(arrived, owner, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reports what matters

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/hooks"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhooks", daemon=True
        )

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self.notifications)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class AlertmanagerServer(ServerProcess):
    """Debian's ``prometheus-alertmanager`` with ``config``, one instance (clustering off);
    see :class:`bench.dashboard_queries.ServerProcess`."""

    binaries = ("prometheus-alertmanager", "alertmanager")
    package = "prometheus-alertmanager"

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        super().__init__(workdir, "alertmanager.yml", config)

    def arguments(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",  # no gossip port: one instance, loopback only
        ]
