"""``cpimon demo``: broker, simulator and worker as child processes, and a live CPI table.

The worker and the simulator are the same commands an operator runs
(``cpimon worker``, ``cpimon simulate``), started as child processes and
stopped by PID; the table reads the worker's ``/metrics`` like Prometheus does.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from models.catalog import load_catalog
from models.errors import CpimonError
from models.spec import Catalog, Target
from streams.broker import EmbeddedBroker
from streams.settings import Settings

#: Settings that make Faust fast and correct on the embedded Tansu broker (see README).
EMBEDDED_BROKER_ENV = {
    "CPIMON_SESSION_TIMEOUT": "2",
    "CPIMON_HEARTBEAT_INTERVAL": "0.5",
    "CPIMON_PRODUCER_MAX_BATCH_SIZE": "1",
    "CPIMON_AUTO_OFFSET_RESET": "earliest",
}

Sample = tuple[str, dict[str, str], float]


def scrape(url: str, timeout: float = 2.0) -> list[Sample]:
    """Every sample of a Prometheus text endpoint as (name, labels, value)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


@contextmanager
def child_process(
    args: list[str], env: Mapping[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own process group, stopped by PID on exit."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            args, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


_SERIES_SUFFIXES = ("value", "live_value", "events_total")


def render_table(catalog: Catalog, samples: list[Sample], elapsed: float) -> Table:
    """The live CPI/KPI table: one row per indicator and segment."""
    values: dict[tuple[str, str], dict[str, float]] = {}
    consumed = rejected = 0.0
    for name, labels, value in samples:
        if name == "cpimon_events_consumed_total":
            consumed += value
        elif name == "cpimon_events_rejected_total":
            rejected += value
        for kind in ("cpi", "kpi"):
            suffix = name.removeprefix(f"cpimon_{kind}_")
            if suffix in _SERIES_SUFFIXES and kind in labels:
                segment = ",".join(
                    f"{k}={v}"
                    for k, v in sorted(labels.items())
                    if k not in (kind, "owner", "journey_step")
                )
                values.setdefault((labels[kind], segment), {})[suffix] = value
    table = Table(
        title=f"cpi-monitor demo, {elapsed:,.0f}s: {consumed:,.0f} events consumed, "
        f"{rejected:,.0f} rejected",
        title_justify="left",
    )
    for column in ("indicator", "segment", "owner"):
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=28)
    for column in ("last window", "open window", "target", "events", "state"):
        table.add_column(column, justify="right", no_wrap=True)
    for indicator in catalog.cpis + catalog.kpis:
        for _name, segment in sorted(k for k in values if k[0] == indicator.name):
            row = values[(indicator.name, segment)]
            closed, live = row.get("value"), row.get("live_value")
            target = indicator.target
            table.add_row(
                indicator.name,
                segment or "(all)",
                indicator.owner,
                _fmt(closed),
                _fmt(live),
                f"{target.bound} {target.value:g}" if target else "-",
                f"{row.get('events_total', 0):,.0f}",
                _state(indicator.target, closed),
            )
    return table


def _state(target: Target | None, value: float | None) -> str:
    if target is None or value is None:
        return "-"
    if target.bound == "min":
        return "[green]ok[/]" if value >= target.value else "[red]below target[/]"
    return "[green]ok[/]" if value <= target.value else "[red]above target[/]"


def _fmt(value: float | None) -> str:
    return "…" if value is None else f"{value:,.3f}"


def run_demo(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    # Wide enough for the table even when stdout is not a terminal (logs, CI).
    console = Console(width=None if sys.stdout.isatty() else 160)
    workdir = Path(tempfile.mkdtemp(prefix="cpimon-demo-"))
    cli = [sys.executable, "-m", "agents.cli"]
    env = dict(os.environ)
    with ExitStack() as stack:
        broker_url = args.broker
        if broker_url is None:
            broker = stack.enter_context(EmbeddedBroker(log_path=workdir / "broker.log"))
            broker_url = broker.url
            env.update(EMBEDDED_BROKER_ENV)
            console.print(
                f"embedded Tansu broker on {broker.bootstrap} (pid {broker.pid}), "
                "[bold]memory storage[/]: everything is lost when the demo stops"
            )
        settings = Settings.from_env(env, broker=broker_url)
        if args.broker is None:
            broker.create_topics({settings.events_topic: settings.topic_partitions})
        env.update(
            CPIMON_BROKER=broker_url,
            CPIMON_CATALOG=str(Path(args.catalog).resolve()),
            CPIMON_METRICS_PORT=str(args.metrics_port),
            CPIMON_DATA_DIR=str(workdir / "data"),
            CPIMON_IDLE_TIMEOUT=env.get("CPIMON_IDLE_TIMEOUT", "10"),
        )
        incidents = [arg for text in args.incident for arg in ("--incident", text)]
        stack.enter_context(
            child_process(
                [*cli, "simulate", "--rate", str(args.rate), *incidents],
                env,
                workdir / "simulate.log",
            )
        )
        worker = stack.enter_context(child_process([*cli, "worker"], env, workdir / "worker.log"))
        url = f"http://127.0.0.1:{args.metrics_port}/metrics"
        console.print(f"worker pid {worker.pid}, metrics at {url}; logs in {workdir}")
        console.print(
            "Ctrl-C stops everything."
            if args.duration is None
            else f"stopping by itself after {args.duration:g}s"
        )
        _show(console, catalog, url, worker, args, workdir)
    console.print("demo stopped: worker, simulator and broker are down")
    return 0


def _show(
    console: Console,
    catalog: Catalog,
    url: str,
    worker: subprocess.Popen[bytes],
    args: argparse.Namespace,
    workdir: Path,
) -> None:
    started = time.monotonic()
    deadline = None if args.duration is None else started + args.duration
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        try:
            while deadline is None or time.monotonic() < deadline:
                if worker.poll() is not None:
                    raise CpimonError(
                        f"the worker exited with code {worker.returncode}; "
                        f"see {workdir / 'worker.log'}"
                    )
                try:
                    samples = scrape(url)
                except OSError:
                    samples = []
                table = render_table(catalog, samples, time.monotonic() - started)
                if args.no_table:
                    console.print(table.title)
                else:
                    live.update(table)
                time.sleep(1.0)
        except KeyboardInterrupt:
            console.print("stopping…")
