"""The reference path: a raw aiokafka ``getmany`` loop doing orjson + River work.

Same work as the raw-consumer row of shared/BASELINES.md: ``orjson.loads``
plus River ``Mean``, ``Quantile(0.95)`` and a per-journey-step ``Mean``.

``python -m bench.raw_loop BOOTSTRAP TOPIC EVENTS RESULT`` runs it in a process of
its own and writes ``{"seconds": …, "cpu_seconds": …, "peak_rss_mb": …}`` as JSON to
the file RESULT.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from river import stats

from bench.common import peak_rss_mb


class RiverWork:
    """The per-event work every compared path does after reading a message value."""

    __slots__ = ("mean", "p95", "per_step")

    def __init__(self) -> None:
        self.mean, self.p95 = stats.Mean(), stats.Quantile(0.95)
        self.per_step: dict[str, stats.Mean] = {}

    def take(self, value: bytes) -> None:
        event: dict[str, Any] = orjson.loads(value)
        latency = event.get("properties", {}).get("latency_ms", 0.0)
        self.mean.update(latency)
        self.p95.update(latency)
        step = event.get("event") or event.get("name") or ""
        step_mean = self.per_step.get(step)
        if step_mean is None:
            step_mean = self.per_step[step] = stats.Mean()
        step_mean.update(latency)


async def consume_raw(bootstrap: str, topic: str, expected: int) -> tuple[float, float]:
    """Seconds from the first record to the ``expected``-th, reading every partition,
    and the CPU seconds of the process meanwhile."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=10_000
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        work = RiverWork()
        take = work.take
        seen = 0
        started = cpu_started = 0.0
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not started and batches:
                started, cpu_started = time.perf_counter(), time.process_time()
            for records in batches.values():
                for record in records:
                    take(record.value)
                seen += len(records)
        return time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await consumer.stop()


def run(bootstrap: str, topic: str, expected: int) -> tuple[float, float]:
    """(seconds, CPU seconds) of :func:`consume_raw`."""
    return asyncio.run(consume_raw(bootstrap, topic, expected))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_loop", description=__doc__)
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("events", type=int)
    parser.add_argument("result", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    seconds, cpu = run(args.bootstrap, args.topic, args.events)
    result = {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak_rss_mb()}
    args.result.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
