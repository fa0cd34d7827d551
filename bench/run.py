"""``make bench``: events/s of the full worker next to a raw aiokafka loop, from one run.

Starts the embedded broker, fills a 4-partition topic with simulated journey
events, then reads it (1) with a raw aiokafka getmany + orjson + River loop and
(2) with a ``cpimon worker`` process on ``catalog.example.yaml``, timed from its
first consumed event until every observation it routed has been applied.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from agents.demo import EMBEDDED_BROKER_ENV, scrape, stop_process
from bench.raw_loop import run as run_raw
from streams.broker import EmbeddedBroker, free_port
from streams.simulator import JourneySimulator, produce

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    path: str
    events: int
    seconds: float
    peak_rss_mb: float | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def fill_topic(broker: EmbeddedBroker, topic: str, events: int) -> None:
    broker.create_topics({topic: 4})
    sent = asyncio.run(
        produce(
            broker.bootstrap,
            topic,
            rate=None,
            duration=None,
            count=events,
            simulator=JourneySimulator(seed=42),
        )
    )
    if sent != events:
        raise SystemExit(f"bench: produced {sent} of {events} events")


def _metric(samples: list[tuple[str, dict[str, str], float]], name: str) -> float:
    return sum(value for sample, _labels, value in samples if sample == name)


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_worker(broker: EmbeddedBroker, topic: str, events: int, workdir: Path) -> Result:
    port = free_port()
    env = {
        **os.environ,
        **EMBEDDED_BROKER_ENV,
        "CPIMON_BROKER": broker.url,
        "CPIMON_EVENTS_TOPIC": topic,
        "CPIMON_OBSERVATIONS_TOPIC": f"{topic}-observations",
        "CPIMON_DEAD_LETTER_TOPIC": f"{topic}-dead-letters",
        "CPIMON_APP_ID": f"bench-{uuid.uuid4().hex[:8]}",
        "CPIMON_METRICS_PORT": str(port),
        "CPIMON_DATA_DIR": str(workdir / "data"),
        "CPIMON_CATALOG": str(ROOT / "catalog.example.yaml"),
    }
    log = open(workdir / "worker.log", "wb")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    started = finished = 0.0
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"bench: worker exited, see {workdir / 'worker.log'}")
            try:
                samples = scrape(url)
            except OSError:
                time.sleep(0.2)
                continue
            consumed = _metric(samples, "cpimon_events_consumed_total")
            now = time.perf_counter()
            if consumed and not started:
                started = now
            routed = _metric(samples, "cpimon_observations_routed_total")
            applied = _metric(samples, "cpimon_observations_applied_total")
            if consumed >= events and applied >= routed:
                finished = now
                break
            time.sleep(0.05)
        else:
            raise SystemExit("bench: the worker did not finish within 600 s")
        rss = _peak_rss_mb(process.pid)
    finally:
        stop_process(process)
        log.close()
    return Result("cpimon worker (catalog.example.yaml)", events, finished - started, rss)


def print_table(results: list[Result], reference: Result) -> None:
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, broker: embedded Tansu (memory)"
    )
    print(
        f"{'path':42} {'events':>9} {'seconds':>8} {'events/s':>10} {'µs/event':>9} "
        f"{'x raw':>6} {'peak RSS':>9}"
    )
    for result in results:
        rss = f"{result.peak_rss_mb:.0f} MB" if result.peak_rss_mb else "-"
        print(
            f"{result.path:42} {result.events:>9,} {result.seconds:>8.2f} "
            f"{result.rate:>10,.0f} {1e6 / result.rate:>9.1f} "
            f"{result.rate / reference.rate:>6.2f} {rss:>9}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="cpimon-bench-"))
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        print(f"bench: producing {args.events:,} simulated events to {topic}…", flush=True)
        fill_topic(broker, topic, args.events)
        print("bench: raw aiokafka getmany + orjson + River…", flush=True)
        raw = Result(
            "raw aiokafka getmany + orjson + River",
            args.events,
            run_raw(broker.bootstrap, topic, args.events),
        )
        print("bench: cpimon worker…", flush=True)
        worker = run_worker(broker, topic, args.events, workdir)
    print_table([raw, worker], raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
