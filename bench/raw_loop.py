"""The reference path: a raw aiokafka ``getmany`` loop doing orjson + River work.

Same work as the raw-consumer row of shared/BASELINES.md: ``orjson.loads``
plus River ``Mean``, ``Quantile(0.95)`` and a per-journey-step ``Mean``.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from river import stats


async def consume_raw(bootstrap: str, topic: str, expected: int) -> float:
    """Seconds from the first record to the ``expected``-th, reading every partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=10_000
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        mean, p95 = stats.Mean(), stats.Quantile(0.95)
        per_step: dict[str, stats.Mean] = {}
        seen = 0
        started = 0.0
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not started and batches:
                started = time.perf_counter()
            for records in batches.values():
                for record in records:
                    event = orjson.loads(record.value)
                    latency = event.get("properties", {}).get("latency_ms", 0.0)
                    mean.update(latency)
                    p95.update(latency)
                    step = event.get("event") or event.get("name") or ""
                    step_mean = per_step.get(step)
                    if step_mean is None:
                        step_mean = per_step[step] = stats.Mean()
                    step_mean.update(latency)
                seen += len(records)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def run(bootstrap: str, topic: str, expected: int) -> float:
    return asyncio.run(consume_raw(bootstrap, topic, expected))
