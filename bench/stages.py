"""In-memory cost of each worker stage, per event, without Kafka.

``python -m bench.stages``: simulated journey events (the bench's seed) are
encoded once, then timed through ``decode_event``, the routing plans, the whole
``Ingestor.process`` and ``Aggregator.process``.  Each stage runs ``--repeat``
times; the least CPU time of the process is reported, in µs per input event
(CPU time, and the least of several, because the machine is shared: wall time
would mostly measure the other processes).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from agents.pipeline import Aggregator, Ingestor
from models.catalog import load_catalog
from models.routing import Groups, Router
from streams.codec import decode_event
from streams.simulator import JourneySimulator

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Record:
    """The ConsumerRecord fields the stages read."""

    key: bytes | None
    value: bytes
    offset: int


def _best_cpu_seconds(run: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def measure(events: int = 50_000, batch: int = 2_500, repeat: int = 5) -> dict[str, float]:
    """µs per input event of each stage (and observations per event)."""
    catalog = load_catalog(ROOT / "catalog.example.yaml")
    simulated = list(JourneySimulator(seed=42).events(events))
    values = [orjson.dumps(event) for event in simulated]
    records = [Record(None, value, offset) for offset, value in enumerate(values)]
    batches = [records[i : i + batch] for i in range(0, len(records), batch)]
    now = time.time() + 1.0
    decoded = [decode_event(value, now=now) for value in values]

    def decode() -> None:
        for value in values:
            decode_event(value, now=now)

    router = Router.compile(catalog)
    observations = sum(len(router.observe(name, event)) for name, _when, event in decoded)

    def route() -> None:
        # As the ingest loop runs it: the plan appends to the batch's groups.
        plan_for = router.plan
        for chunk in range(0, len(decoded), batch):
            groups: Groups = {}
            for offset, (name, when, event) in enumerate(decoded[chunk : chunk + batch], chunk):
                plan_for(name, event)(name, event, groups, when, offset)

    def ingest() -> list[dict[int, bytes]]:
        stage = Ingestor(Router.compile(catalog), 4)
        return [stage.process("events", 0, 1, chunk, now).records for chunk in batches]

    encoded = ingest()

    def aggregate() -> None:
        aggregator = Aggregator(catalog, idle_timeout=60.0)
        offsets = dict.fromkeys(range(4), 0)
        for by_target in encoded:
            for target, value in by_target.items():
                aggregator.process(target, [Record(None, value, offsets[target])], 0.0)
                offsets[target] += 1

    out = {"observations/event": observations / events}
    for stage, run in (("decode", decode), ("route", route), ("ingest", ingest)):
        out[stage] = _best_cpu_seconds(run, repeat) * 1e6 / events
    out["aggregate"] = _best_cpu_seconds(aggregate, repeat) * 1e6 / events
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=2_500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    result = measure(args.events, args.batch, args.repeat)
    print(f"observations per event: {result.pop('observations/event'):.2f}")
    for stage, micros in result.items():
        print(f"{stage:10} {micros:6.2f} µs/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
