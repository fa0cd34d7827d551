"""``cpimon``: the command line of cpi-monitor."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from agents import dashboards_cli, ops, rules_cli
from models.errors import CpimonError

EPILOG = """examples:
  cpimon demo                                   embedded broker + simulator + worker + live table
  cpimon worker --broker kafka://kafka:9092 --catalog catalog.yaml --metrics-port 6066
  cpimon simulate --broker kafka://kafka:9092 --rate 500 --incident payment-outage@2m+3m
  cpimon catalog check catalog.yaml

Every worker setting can also come from a CPIMON_* environment variable
(e.g. CPIMON_BROKER, CPIMON_SASL_USERNAME); see README.md."""


def _broker_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--broker",
        required=required,
        help="kafka://HOST:PORT[,kafka://HOST:PORT...] (default: $CPIMON_BROKER)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpimon",
        description="Real-time Customer Performance Indicators from Kafka journey events.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    worker = commands.add_parser("worker", help="consume events and serve CPI metrics")
    _broker_options(worker)
    worker.add_argument("--catalog", help="catalog YAML file (default: $CPIMON_CATALOG)")
    worker.add_argument("--metrics-port", type=int, help="HTTP port of /metrics (default 6066)")
    worker.add_argument("--metrics-host", help="address to bind /metrics (default 127.0.0.1)")
    worker.add_argument("--app-id", help="consumer group / app id (default cpi-monitor)")
    worker.add_argument(
        "--from-beginning",
        action="store_true",
        help="a new consumer group starts at the oldest events",
    )

    simulate = commands.add_parser("simulate", help="produce a realistic journey event stream")
    _broker_options(simulate)
    simulate.add_argument("--topic", help="events topic (default: $CPIMON_EVENTS_TOPIC)")
    simulate.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="events per second; 0 = as fast as possible (default 200)",
    )
    simulate.add_argument("--duration", type=float, help="stop after this many seconds")
    simulate.add_argument("--count", type=int, help="stop after this many events")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument(
        "--incident",
        action="append",
        default=[],
        help="KIND@START+DURATION, e.g. payment-outage@2m+3m (repeatable)",
    )
    simulate.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="event time runs X times faster than wall time (default 1); above 1 it needs "
        "--duration or --count and starts in the past, catching up with now at the end",
    )
    simulate.add_argument(
        "--cpi-variation",
        type=float,
        default=0.0,
        metavar="A",
        help="let payment success and on-time delivery drift per window, by A in logit "
        "units (0.5 mild, 1 clear, 2 strong; default 0: constant)",
    )
    simulate.add_argument(
        "--revenue-lag",
        type=int,
        default=3,
        metavar="N",
        help="windows after which revenue follows payment success (default 3)",
    )
    simulate.add_argument(
        "--nps-lag",
        type=int,
        default=2,
        metavar="N",
        help="windows after which NPS follows on-time delivery (default 2)",
    )
    simulate.add_argument(
        "--window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="window of the dependence model and KPI samples; use the catalog's (default 60)",
    )
    simulate.add_argument(
        "--kpi-topic",
        nargs="?",
        const="",
        metavar="T",
        help="also publish a marketing_spend KPI sample per window to topic T "
        "(without T: $CPIMON_KPI_TOPIC)",
    )

    catalog = commands.add_parser("catalog", help="catalog tools")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", metavar="COMMAND")
    check = catalog_commands.add_parser("check", help="validate a catalog and explain each error")
    check.add_argument("file")

    demo = commands.add_parser(
        "demo", help="embedded broker, simulator and worker with a live CPI table"
    )
    _broker_options(demo)
    demo.add_argument("--catalog", default="catalog.example.yaml")
    demo.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    demo.add_argument("--rate", type=float, default=300.0, help="simulated events per second")
    demo.add_argument("--metrics-port", type=int, default=6066)
    demo.add_argument(
        "--incident",
        action="append",
        default=[],
        help="KIND@START+DURATION, e.g. payment-outage@1m+2m (repeatable; default: "
        "payment-outage@90s+60s)",
    )
    demo.add_argument(
        "--no-incident", action="store_true", help="no incident at all, only steady traffic"
    )
    demo.add_argument("--no-table", action="store_true", help="print a line per second instead")
    rules_cli.add_parser(commands)
    dashboards_cli.add_parser(commands)
    ops.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "worker":
            return _worker(args)
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "catalog" and args.catalog_command == "check":
            return _catalog_check(args.file)
        if args.command == "rules":
            return rules_cli.run(args)
        if args.command == "dashboards":
            return dashboards_cli.run(args)
        if (code := ops.run(args)) is not None:
            return code
        if args.command == "demo":
            from agents.demo import run_demo

            return run_demo(args)
    except CpimonError as error:
        print(f"cpimon: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.print_help()
    return 0 if args.command is None else 2


def _catalog_check(file: str) -> int:
    from models.catalog import load_catalog

    catalog = load_catalog(file)
    print(
        f"{file}: OK — {len(catalog.cpis)} CPIs, {len(catalog.kpis)} KPIs, "
        f"{len(catalog.metrics)} metrics, {len(catalog.links)} links"
    )
    for indicator in catalog.indicators:
        segments = ", ".join(s.label for s in indicator.segment_by) or "-"
        target = f"{indicator.target.bound} {indicator.target.value:g}" if indicator.target else "-"
        print(
            f"  {indicator.kind:6} {indicator.name:34} owner={indicator.owner:20} "
            f"segments={segments:24} target={target}"
        )
    return 0


def _worker(args: argparse.Namespace) -> int:
    import faust

    from agents.worker import build_worker
    from models.catalog import load_catalog
    from streams.settings import Settings

    settings = Settings.from_env(
        broker=args.broker,
        catalog=args.catalog,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        app_id=args.app_id,
        auto_offset_reset="earliest" if args.from_beginning else None,
    )
    catalog = load_catalog(settings.catalog)
    worker = build_worker(settings, catalog)
    print(
        f"cpimon worker: {len(catalog.indicators)} indicators from {settings.catalog}, "
        f"broker {settings.broker}, metrics on "
        f"http://{settings.metrics_host}:{settings.metrics_port}/metrics",
        flush=True,
    )
    faust.Worker(worker.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from streams.settings import Settings
    from streams.simulator import JourneySimulator, parse_incident, produce

    settings = Settings.from_env(broker=args.broker)
    topic = args.topic or settings.events_topic
    kpi_topic = None if args.kpi_topic is None else args.kpi_topic or settings.kpi_topic
    rate = args.rate if args.rate and args.rate > 0 else None
    try:
        incidents = [parse_incident(text) for text in args.incident]
        simulator = JourneySimulator(
            seed=args.seed,
            incidents=incidents,
            window=args.window,
            cpi_variation=args.cpi_variation,
            revenue_lag_windows=args.revenue_lag,
            nps_lag_windows=args.nps_lag,
        )
        # produce() checks these too, but only after connecting; say it before that.
        if not args.speed > 0:
            raise ValueError(f"--speed must be above 0, got {args.speed:g}")
        if args.speed != 1.0 and rate is None:
            raise ValueError("--speed needs a --rate above 0")
        if args.speed > 1.0 and args.duration is None and args.count is None:
            raise ValueError("--speed above 1 needs --duration or --count")
    except ValueError as error:
        print(f"cpimon simulate: {error}", file=sys.stderr)
        return 2
    extras = f", event time x{args.speed:g}" if args.speed != 1.0 else ""
    if kpi_topic is not None:
        extras += f", KPI samples to {kpi_topic}"
    print(
        f"cpimon simulate: producing to {topic} on {settings.broker} "
        f"at {rate or 'max'} events/s{extras}",
        flush=True,
    )

    def progress(sent: int) -> None:
        print(f"\rsent {sent:,} events", end="", flush=True)

    sent = asyncio.run(
        produce(
            ",".join(settings.bootstrap_servers),
            topic,
            rate=rate,
            duration=args.duration,
            count=args.count,
            simulator=simulator,
            speed=args.speed,
            kpi_topic=kpi_topic,
            progress=progress,
            producer_options=settings.kafka_client_options(),
        )
    )
    print(f"\ncpimon simulate: sent {sent:,} events", flush=True)
    return 0


def entry_point_path() -> Path:
    """The interpreter-independent way the demo starts sub-commands."""
    return Path(sys.executable)


if __name__ == "__main__":
    raise SystemExit(main())
