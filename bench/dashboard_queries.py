"""Run the generated dashboards' queries against a real Prometheus, the way Grafana would.

No Grafana server runs here, so the end-to-end test (tests/integration/
test_dashboards_e2e.py) and the picture renderer (bench/render_dashboards.py) do
Grafana's part themselves: resolve each template variable with a ``label_values``
lookup (later variables see the values chosen for earlier ones), substitute the
variables and Grafana's built-ins (``$__rate_interval``, ``$__range``, ``$__interval``),
then send every panel query to Prometheus' HTTP API: instant queries to
``/api/v1/query``, the others to ``/api/v1/query_range``.

:class:`PrometheusServer` runs Debian's ``prometheus`` binary on a free loopback port
with the generated rules, scraping the given workers.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import orjson
import yaml
from aiokafka import AIOKafkaProducer

from agents.dashboards import Target, Variable, panel_targets, template_variables
from agents.demo import stop_process
from agents.rules import JOB, prometheus_duration
from streams.broker import free_port
from streams.simulator import JourneySimulator, iso_timestamp, parse_incident, produce

__all__ = [
    "DashboardCheck",
    "PrometheusClient",
    "PrometheusServer",
    "ServerProcess",
    "Window",
    "check_dashboard",
    "first_selection",
    "has_data",
    "live_traffic",
    "selections",
    "substitute",
]

#: A series as Prometheus returns it: {"metric": {...}, "value": [t, "v"]} or "values".
Series = dict[str, Any]


class PrometheusClient:
    """Prometheus' HTTP API at ``url``: the calls Grafana makes for a dashboard."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def api(self, path: str, params: Mapping[str, str | Sequence[str]]) -> Any:
        """GET ``/api/v1/<path>``; its ``data``, or RuntimeError with Prometheus' error."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {dict(params)}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, at: float) -> list[Series]:
        data = self.api("query", {"query": expr, "time": f"{at:.3f}"})
        result = data["result"]
        # A scalar result (1 + 1) is one value without labels.
        return [{"metric": {}, "value": result}] if data["resultType"] == "scalar" else result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        result: list[Series] = self.api("query_range", params)["result"]
        return result

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        params = {"match[]": [match], "start": f"{start:.3f}", "end": f"{end:.3f}"}
        values: list[str] = self.api(f"label/{label}/values", params)
        return sorted(values)

    def targets_up(self) -> bool:
        """Whether every scrape target has been scraped successfully."""
        active = self.api("targets", {"state": "active"})["activeTargets"]
        return bool(active) and all(target["health"] == "up" for target in active)


class ServerProcess:
    """A Debian server binary on a free 127.0.0.1 port with a YAML config in ``workdir``.

    Use as a context manager: started on enter (ready when ``/-/ready`` answers 200),
    stopped by PID on exit.  Its log is ``workdir/<config stem>.log``.
    """

    #: Names the binary may have on PATH, and the Debian package that installs it.
    binaries: ClassVar[tuple[str, ...]]
    package: ClassVar[str]

    def __init__(self, workdir: Path, config_name: str, config: Mapping[str, Any]) -> None:
        found = [path for name in self.binaries if (path := shutil.which(name))]
        if not found:
            raise RuntimeError(
                f"{self.binaries[0]} is not installed: install Debian's {self.package} "
                "package (make system-deps)"
            )
        self.binary = found[0]
        self.workdir = workdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = workdir / f"{Path(config_name).stem}.log"
        self.config_path = workdir / config_name
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    def arguments(self) -> list[str]:
        """The command-line options after the binary."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        name = Path(self.binary).name
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, *self.arguments()],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"{name} not ready after 30s:\n{self.log_tail()}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None:
            stop_process(self.process)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class PrometheusServer(ServerProcess, PrometheusClient):
    """Debian's ``prometheus``, scraping ``targets`` as job ``cpimon``, evaluating
    ``rule_files`` and sending alerts to ``alertmanagers`` (``host:port``); see
    :class:`ServerProcess`."""

    binaries = ("prometheus",)
    package = "prometheus"

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        rule_files: Sequence[Path] = (),
        scrape_interval: float = 1.0,
        evaluation_interval: float | None = None,
        alertmanagers: Sequence[str] = (),
    ) -> None:
        evaluation = scrape_interval if evaluation_interval is None else evaluation_interval
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": prometheus_duration(scrape_interval),
                "evaluation_interval": prometheus_duration(evaluation),
            },
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {"job_name": JOB, "static_configs": [{"targets": list(targets)}]},
            ],
        }
        if alertmanagers:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
            }
        ServerProcess.__init__(self, workdir, "prometheus.yml", config)
        PrometheusClient.__init__(self, f"http://{self.address}")
        self.scrape_interval = scrape_interval

    def arguments(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address={self.address}",
            "--storage.tsdb.retention.time=1d",
        ]


@dataclass(frozen=True)
class Window:
    """The time range a dashboard is looked at, and Grafana's built-ins for it."""

    start: float
    end: float
    step: float
    scrape_interval: float

    @property
    def rate_interval(self) -> str:
        # Grafana: max($__interval + scrape interval, 4 x scrape interval).
        return prometheus_duration(max(self.step + self.scrape_interval, 4 * self.scrape_interval))

    @property
    def range(self) -> str:
        return prometheus_duration(max(self.end - self.start, self.step))


_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def substitute(expr: str, values: Mapping[str, str], window: Window) -> str:
    """``expr`` with ``$name`` / ``${name}`` replaced as Grafana would.

    >>> w = Window(start=0, end=120, step=2, scrape_interval=1)
    >>> substitute('rate(x{cpi="$cpi"}[$__rate_interval]) / ${n}', {"cpi": "nps", "n": "2"}, w)
    'rate(x{cpi="nps"}[4s]) / 2'
    """
    builtins = {
        "__rate_interval": window.rate_interval,
        "__interval": prometheus_duration(window.step),
        "__range": window.range,
    }

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name in builtins:
            return builtins[name]
        if name not in values:
            raise KeyError(f"{expr!r} uses ${name}, which the dashboard does not define")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def selections(
    variables: Sequence[Variable], prometheus: PrometheusClient, window: Window
) -> tuple[list[dict[str, str]], dict[str, bool]]:
    """Every selection a user could make, and whether each variable ever had values.

    A variable with "All" keeps its default, All (its ``allValue``); the others take each
    of their values in turn.  Each variable's values are looked up with the values
    chosen for the variables before it, as Grafana does for chained variables.
    """
    found = {variable.name: False for variable in variables}

    def expand(index: int, chosen: dict[str, str]) -> Iterator[dict[str, str]]:
        if index == len(variables):
            yield dict(chosen)
            return
        variable = variables[index]
        match = substitute(variable.selector, chosen, window)
        values = prometheus.label_values(variable.label, match, window.start, window.end)
        found[variable.name] = found[variable.name] or bool(values)
        choices = [variable.all_value] if variable.all_value is not None else values
        for choice in choices:
            yield from expand(index + 1, {**chosen, variable.name: choice})

    every = list(expand(0, {"datasource": "prometheus"}))
    return every, found


def has_data(result: Sequence[Series]) -> bool:
    """Whether any series holds a number (NaN is what Grafana shows as no value)."""
    for series in result:
        samples = series.get("values") or ([series["value"]] if "value" in series else [])
        if any(math.isfinite(float(value)) for _, value in samples):
            return True
    return False


@dataclass
class DashboardCheck:
    """The outcome of running one dashboard's queries."""

    title: str
    targets: int = 0
    selections: int = 0
    #: (panel title, refId, query as sent) of targets that had no data in any selection.
    empty: list[tuple[str, str, str]] = field(default_factory=list)
    #: Variables whose lookup never returned a value.
    empty_variables: list[str] = field(default_factory=list)
    #: Annotation queries without data in any selection.
    empty_annotations: list[tuple[str, str]] = field(default_factory=list)
    #: Queries Prometheus refused (syntax or evaluation errors).
    errors: list[str] = field(default_factory=list)


def _run(prometheus: PrometheusClient, expr: str, instant: bool, window: Window) -> list[Series]:
    if instant:
        return prometheus.query(expr, window.end)
    return prometheus.query_range(expr, window.start, window.end, window.step)


def check_dashboard(
    board: Mapping[str, Any], prometheus: PrometheusClient, window: Window
) -> DashboardCheck:
    """Run every target and annotation of ``board``; what stayed empty, and why."""
    check = DashboardCheck(title=str(board.get("title")))
    variables = template_variables(board)
    choices, found = selections(variables, prometheus, window)
    # A variable without values yet (no data behind it) leaves no selection: the queries
    # then run with it empty, as Grafana would, and come back empty, not as an error.
    nothing = {"datasource": "prometheus", **{variable.name: "" for variable in variables}}
    check.selections = len(choices)
    check.empty_variables = [name for name, seen in found.items() if not seen]
    targets: list[Target] = list(panel_targets(board))
    check.targets = len(targets)
    annotations = [
        (str(item["name"]), str(item["expr"]))
        for item in board.get("annotations", {}).get("list", [])
        if "expr" in item
    ]
    queries = [(t.panel_title, t.ref_id, t.expr, t.instant) for t in targets]
    queries += [(f"annotation {name}", "", expr, False) for name, expr in annotations]
    for title, ref, expr, instant in queries:
        sent = ""
        for values in choices or [nothing]:
            sent = substitute(expr, values, window)
            try:
                result = _run(prometheus, sent, instant, window)
            except RuntimeError as error:
                check.errors.append(f"{title} {ref}: {error}")
                break
            if has_data(result):
                break
        else:
            if title.startswith("annotation "):
                check.empty_annotations.append((title, sent))
            else:
                check.empty.append((title, ref, sent))
    return check


def first_selection(
    board: Mapping[str, Any],
    prometheus: PrometheusClient,
    window: Window,
    prefer: Mapping[str, str],
) -> dict[str, str]:
    """The selection a user would look at: ``prefer``'s values where they exist, else the first."""
    chosen: dict[str, str] = {"datasource": "prometheus"}
    for variable in template_variables(board):
        match = substitute(variable.selector, chosen, window)
        values = prometheus.label_values(variable.label, match, window.start, window.end)
        if variable.name in prefer and prefer[variable.name] in values:
            chosen[variable.name] = prefer[variable.name]
        elif variable.all_value is not None:
            chosen[variable.name] = variable.all_value
        elif values:
            chosen[variable.name] = values[0]
        else:
            chosen[variable.name] = ""
    return chosen


# --- traffic ----------------------------------------------------------------------------


async def _odd_events(bootstrap: str, topic: str, stop: asyncio.Event) -> None:
    """Once a second: a bad message, a duplicate, a late event and an unmeasurable one.

    So that the rejected, duplicate, late and unmeasurable counters have series at all
    (a counter that never moved is not exported with a label set).
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        n = 0
        while not stop.is_set():
            n += 1
            now = time.time()

            def event(timestamp: float, success: object, n: int = n) -> dict[str, object]:
                return {
                    "type": "track",
                    "event": "Payment Attempted",
                    "messageId": f"odd-{uuid.uuid4()}",
                    "userId": f"u-odd-{n}",
                    "timestamp": iso_timestamp(timestamp),
                    "properties": {"success": success},
                    "context": {"channel": "web", "region": "eu"},
                }

            duplicate = orjson.dumps(event(now, True))
            key = f"u-odd-{n}".encode()
            for value in (
                b'{"event": "Payment Attempted", ',  # rejected: invalid_json
                duplicate,
                duplicate,  # same messageId, same partition: dropped as a duplicate
                orjson.dumps(event(now - 30, True)),  # its window closed long ago: late
                orjson.dumps(event(now, "yes")),  # not a boolean: unmeasurable
            ):
                await producer.send_and_wait(topic, value, key=key)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await producer.stop()


@contextmanager
def live_traffic(
    bootstrap: str,
    topic: str,
    rate: float,
    incidents: Sequence[str] = (),
    seed: int = 7,
    *,
    start_time: float | None = None,
    odd_events: bool = True,
) -> Iterator[None]:
    """Simulator events stamped now, ``rate`` per second, plus odd ones, until the block ends.

    ``incidents`` are ``KIND@START+DURATION`` texts, counted from the block's start, or
    from ``start_time`` (epoch seconds, not in the future) when given: event ``i`` is then
    stamped ``start_time + i / rate`` exactly, so the caller knows when incidents happen.
    ``odd_events=False`` leaves out the malformed and rare events.
    Runs in a thread with its own event loop; a failure to produce fails the block.
    """
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failures: list[BaseException] = []

    async def main() -> None:
        simulator = JourneySimulator(
            seed=seed,
            start_time=start_time,
            incidents=[parse_incident(text) for text in incidents],
        )
        journeys = asyncio.ensure_future(
            produce(
                bootstrap,
                topic,
                rate=rate,
                duration=None,
                count=None,
                simulator=simulator,
                live_time=start_time is None,
            )
        )
        tasks: list[asyncio.Future[Any]] = [journeys]
        if odd_events:
            tasks.append(asyncio.ensure_future(_odd_events(bootstrap, topic, stop)))
        await stop.wait()
        journeys.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as error:  # reported below, not lost in the thread
            failures.append(error)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="live-traffic", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
    assert not thread.is_alive(), "the traffic thread did not stop"
    assert not failures, f"producing traffic failed: {failures[0]!r}"
