"""``cpimon demo``: broker, simulator and worker as child processes, and live tables.

The worker and the simulator are the same commands an operator runs
(``cpimon worker``, ``cpimon simulate``), started as child processes and
stopped by PID; the tables read the worker's ``/metrics`` like Prometheus does.

Event time runs :data:`SPEED` times faster than the wall clock (``cpimon simulate
--speed``), so that one-minute windows close every 3 seconds and baselines, drops and
CPI→KPI links appear within minutes instead of hours.  The simulator's dependence model
is on (``--cpi-variation``): payment success and on-time delivery drift from window to
window, revenue follows payment success 3 windows later and NPS follows on-time
delivery 2 windows later, so the links table has true links to find among the others.

How the stamps stay acceptable: a simulator faster than the clock needs to know how
long it runs, and starts that many sped-up seconds in the past, ``(SPEED - 1) x`` its
duration, so that event time reaches now at its last event and no event is ever stamped
ahead of the worker's clock (it would be dead-lettered as ``future_timestamp``).  The
simulator runs for the demo's ``--duration``, or :data:`HORIZON` seconds without one
(event time then starts 19 days back; after a day the simulator stops and the tables
keep the last values).

Incidents: without ``--incident`` the demo injects :data:`DEFAULT_INCIDENT`, a payment
outage once the baselines are learned, so that ``make demo`` shows a drop live
(``--no-incident`` leaves it out).  ``cpimon simulate --incident`` times are event
time, counted from the simulator's first event.  The demo's ``--incident`` times are
the demo's own wall-clock time instead (counted from when the simulator starts, a
second or two before the tables), and are multiplied by :data:`SPEED` on the way:
``payment-outage@1m+2m`` starts a minute into the demo and lasts two minutes, i.e. 40
one-minute windows of event time.  Start incidents after the first minute: the drop
detector learns its baseline from the first 20 windows (``warmup_windows``), which take
a minute at this speed, and an incident it has not learned a normal for cannot be a
drop.
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
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from models.catalog import load_catalog
from models.errors import CpimonError
from models.spec import Catalog, Target
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from streams.simulator import parse_incident

#: Settings that make Faust fast and correct on the embedded Tansu broker (see README).
EMBEDDED_BROKER_ENV = {
    "CPIMON_SESSION_TIMEOUT": "2",
    "CPIMON_HEARTBEAT_INTERVAL": "0.5",
    "CPIMON_PRODUCER_MAX_BATCH_SIZE": "1",
    "CPIMON_AUTO_OFFSET_RESET": "earliest",
}

#: Event time runs this many times faster than the wall clock: a 1-minute window every 3 s.
SPEED = 20.0
#: How far the simulator's CPIs drift from window to window, in logit units (strong).
CPI_VARIATION = 1.5
#: Seconds the simulator runs when the demo has no ``--duration`` (see the module docstring).
HORIZON = 86_400.0
#: The demo's own incident (wall-clock times): 90 s in, after the drop detector's 20
#: warm-up windows (a minute at SPEED), payment success falls to about 0.5 for a minute.
DEFAULT_INCIDENT = "payment-outage@90s+60s"

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


def demo_incidents(given: list[str], none: bool = False) -> list[str]:
    """The incidents a demo runs: those given, else :data:`DEFAULT_INCIDENT` (none with
    ``--no-incident``).

    >>> demo_incidents([]), demo_incidents([], none=True), demo_incidents(["slow-pages@1m+1m"])
    (['payment-outage@90s+60s'], [], ['slow-pages@1m+1m'])
    """
    if none:
        return []
    return list(given) or [DEFAULT_INCIDENT]


def simulated_incidents(incidents: list[str], speed: float = SPEED) -> list[str]:
    """``cpimon simulate`` arguments for the demo's ``--incident`` texts, in event time.

    The demo's times are wall-clock seconds; the simulator's are event time, which runs
    ``speed`` times faster.

    >>> simulated_incidents(["payment-outage@1m+2m"], speed=20)
    ['--incident', 'payment-outage@1200s+2400s']
    """
    arguments = []
    for text in incidents:
        try:
            incident = parse_incident(text)
        except ValueError as error:
            raise CpimonError(str(error)) from None
        start, duration = incident.start * speed, incident.duration * speed
        arguments += ["--incident", f"{incident.kind}@{start:g}s+{duration:g}s"]
    return arguments


_SERIES_SUFFIXES = ("value", "live_value", "events_total", "drop_active", "baseline", "deviation")


def render_table(catalog: Catalog, samples: list[Sample], elapsed: float) -> Table:
    """The live CPI/KPI table: one row per indicator and segment.

    ``state`` says DROP while the drop detector holds one (the indicator left its own
    normal, the ``baseline``, in its bad direction; ``dev`` is how far the last judged
    window was from it, in standard deviations), else whether the last window met the
    target.  Series with too few events a window to be judged have no baseline.
    """
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
    for column in ("last window", "open window", "target", "events", "baseline (dev)", "state"):
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
                _baseline(row.get("baseline"), row.get("deviation")),
                _state(indicator.target, closed, row.get("drop_active") == 1.0),
            )
    return table


_LINK_SUFFIXES = ("correlation", "correlation_lower", "correlation_upper", "samples")
_PAIR_SUFFIXES = ("best_lag_seconds", "impact", "confirmed")


def render_links(catalog: Catalog, samples: list[Sample], speed: float = SPEED) -> Table:
    """The live links table: one row per catalog link, in catalog order.

    ``best lag`` is the lag whose correlation is significant (its 95 % interval
    excludes 0) and strongest; without one, ``r`` shows the strongest lag dimmed and
    the link cannot count towards confirmation.  ``confirmed`` turns yes after the
    link's ``min_windows`` windows in a row with a best lag (the title says how long
    that takes with event time ``speed`` times faster than the clock).  ``impact`` is
    KPI units per CPI unit at the best lag.
    """
    by_lag: dict[tuple[str, str], dict[float, dict[str, float]]] = {}
    by_pair: dict[tuple[str, str], dict[str, float]] = {}
    for name, labels, value in samples:
        suffix = name.removeprefix("cpimon_link_")
        if suffix == name or "cpi" not in labels or "kpi" not in labels:
            continue
        key = (labels["cpi"], labels["kpi"])
        if suffix in _LINK_SUFFIXES and "lag_seconds" in labels:
            lag = float(labels["lag_seconds"])
            by_lag.setdefault(key, {}).setdefault(lag, {})[suffix] = value
        elif suffix in _PAIR_SUFFIXES:
            by_pair.setdefault(key, {})[suffix] = value
    # Wall-clock time to confirm a link that holds from the start, e.g. 90 windows of 60 s
    # at speed 20: 4.5 min (links first need a few pairs before any lag is significant).
    waits = sorted(
        {link.min_windows * catalog.indicator(link.cpi).window / speed for link in catalog.links}
    )
    wait = "" if not waits else _minutes(waits[0])
    if len(waits) > 1:
        wait += f" to {_minutes(waits[-1])}"
    table = Table(
        title="CPI → KPI links: does the KPI follow the CPI, and how late?"
        + (f" Confirmed after {wait} of significant lags in a row" if wait else ""),
        title_justify="left",
    )
    table.add_column("cpi → kpi", no_wrap=True, overflow="ellipsis", max_width=60)
    for column in ("best lag", "r [95 % interval]", "samples", "confirmed", "impact"):
        table.add_column(column, justify="right", no_wrap=True)
    for link in catalog.links:
        key = (link.cpi, link.kpi)
        lags, pair = by_lag.get(key, {}), by_pair.get(key, {})
        best = pair.get("best_lag_seconds")
        shown = best if best is not None else _strongest(lags)
        stats = lags.get(shown, {}) if shown is not None else {}
        correlation = _fmt_r(stats)
        table.add_row(
            f"{link.cpi} → {link.kpi}",
            "-" if best is None else f"{best:g}s",
            correlation if best is not None or correlation == "…" else f"[dim]{correlation}[/]",
            "…" if "samples" not in stats else f"{stats['samples']:.0f}/{link.history_windows}",
            "[bold green]yes[/]" if pair.get("confirmed") == 1.0 else "no",
            "-" if pair.get("impact") is None else f"{pair['impact']:,.4g}",
        )
    return table


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _strongest(lags: dict[float, dict[str, float]]) -> float | None:
    # The lag with the largest |r|, for a link without a significant one.
    defined = [
        (abs(stats["correlation"]), lag) for lag, stats in lags.items() if "correlation" in stats
    ]
    return max(defined)[1] if defined else None


def _baseline(baseline: float | None, deviation: float | None) -> str:
    if baseline is None:
        return "…"
    return f"{baseline:,.3f}" if deviation is None else f"{baseline:,.3f} ({deviation:+.1f} sd)"


def _fmt_r(stats: dict[str, float]) -> str:
    r = stats.get("correlation")
    if r is None:
        return "…"
    low, high = stats.get("correlation_lower"), stats.get("correlation_upper")
    if low is None or high is None:
        return f"{r:+.2f}"
    return f"{r:+.2f} [{low:+.2f}, {high:+.2f}]"


def _state(target: Target | None, value: float | None, drop: bool = False) -> str:
    if drop:
        return "[bold red]DROP[/]"
    if target is None or value is None:
        return "-"
    if target.bound == "min":
        return "[green]ok[/]" if value >= target.value else "[red]below target[/]"
    return "[green]ok[/]" if value <= target.value else "[red]above target[/]"


def _fmt(value: float | None) -> str:
    return "…" if value is None else f"{value:,.3f}"


def run_demo(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    # Checked before anything starts: a bad incident would only end the simulator.
    chosen = demo_incidents(args.incident, args.no_incident)
    incidents = simulated_incidents(chosen)
    # The dependence model's lags are in its windows: the catalog's make them whole lags.
    driver = catalog.links[0].cpi if catalog.links else catalog.cpis[0].name
    window_seconds = catalog.indicator(driver).window
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
        simulate = [*cli, "simulate", "--rate", f"{args.rate:g}", "--speed", f"{SPEED:g}"]
        simulate += ["--duration", f"{HORIZON if args.duration is None else args.duration:g}"]
        simulate += ["--cpi-variation", f"{CPI_VARIATION:g}", "--window", f"{window_seconds:g}"]
        simulate += incidents
        stack.enter_context(child_process(simulate, env, workdir / "simulate.log"))
        console.print(
            f"simulator: {args.rate:g} events/s, event time x{SPEED:g} (a {window_seconds:g}s "
            f"window every {window_seconds / SPEED:g}s of wall time), CPIs drifting"
        )
        if chosen:
            console.print(
                f"incidents (from the start of the demo): {', '.join(chosen)}"
                + ("" if args.incident else "; --incident to choose, --no-incident for none")
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
                elif catalog.links:
                    live.update(Group(table, render_links(catalog, samples)))
                else:
                    live.update(table)
                time.sleep(1.0)
        except KeyboardInterrupt:
            console.print("stopping…")
    if not console.is_terminal:
        # Live ends its last frame with a new line only on a terminal.
        console.line()
