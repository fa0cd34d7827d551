"""A stock Faust agent doing the raw loop's work: the "plain Faust" row of ``make bench``.

``python -m bench.stock_faust BROKER_URL TOPIC EVENTS RESULT`` starts a Faust app with
default settings (except what the Tansu test broker needs: short session timeout,
start from the earliest offset) and one agent::

    async for value in stream:          # value_serializer="raw"
        work.take(value)                # orjson.loads + the same River work

It times the agent from its first event to the ``EVENTS``-th, writes
``{"seconds": …, "cpu_seconds": …, "peak_rss_mb": …}`` as JSON to the file RESULT
and exits.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path
from typing import Any

import faust
import orjson

from bench.common import peak_rss_mb
from bench.raw_loop import RiverWork


def build_app(broker: str, topic: str, expected: int, result: Path) -> faust.App:
    app_id = f"bench-stock-{uuid.uuid4().hex[:8]}"
    app = faust.App(
        app_id,
        broker=broker,
        # Beside the result, in the bench's work directory: Faust's default is the
        # current directory, which collected one empty data directory per run.
        datadir=str(result.parent / f"{app_id}-data"),
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=2,
        broker_heartbeat_interval=0.5,
        topic_allow_declare=False,
        loghandlers=[],
    )
    source = app.topic(topic, value_serializer="raw", key_serializer="raw")

    @app.agent(source)
    async def consume(stream: Any) -> None:
        work = RiverWork()
        seen = 0
        started = cpu_started = 0.0
        async for value in stream:
            if not seen:
                started, cpu_started = time.perf_counter(), time.process_time()
            work.take(value)
            seen += 1
            if seen >= expected:
                seconds = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
                out = {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak_rss_mb()}
                result.write_bytes(orjson.dumps(out))
                os._exit(0)  # a bench child: the result is out, skip Faust's slow shutdown

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stock_faust", description=__doc__)
    parser.add_argument("broker", help="kafka://HOST:PORT")
    parser.add_argument("topic")
    parser.add_argument("events", type=int)
    parser.add_argument("result", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    app = build_app(args.broker, args.topic, args.events, args.result)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
    return 1  # only reached when the worker stops before the last event


if __name__ == "__main__":
    raise SystemExit(main())
