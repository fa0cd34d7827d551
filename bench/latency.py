"""Event → visible in ``cpimon_cpi_live_value``: latency of a worker under load.

On a fresh broker (the throughput phase leaves the loaded one holding hundreds of
MB, which slows every fetch), a ``cpimon worker`` on ``catalog.example.yaml``
reads simulated journey events produced at ``rate`` per second (``make bench``:
half the worker's sustained rate).  Meanwhile probe events are sent a few times a
second: ``Payment Attempted`` events of a segment of their own (channel and region
``latency-probe``), all on one key so that they stay in order, all stamped in one
future window (so that no window closes under them).  Probe ``k`` carries
``success = k > 1``, so once probes 1..k are applied the probe series'
``cpimon_cpi_live_value`` is ``(k - 1) / k``: each scrape tells how many probes
are visible.  A probe's latency is the time from just before its send to the
first scrape showing it; scrapes run every ``scrape_every`` seconds, which bounds
the error from above.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from agents.demo import stop_process
from bench.common import start_worker, worker_env
from streams.broker import EmbeddedBroker, free_port

ROOT = Path(__file__).resolve().parent.parent
PROBE = "latency-probe"
#: Probes are stamped this far ahead: their window opens after every background event.
PROBE_AHEAD = 150.0


@dataclass
class Latency:
    rate: float
    produced: int
    #: Seconds the load was paced over.
    seconds: float
    latencies: list[float]
    scrape_every: float

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        if not self.latencies:
            return "latency: no probe became visible"
        return (
            f"latency event → cpimon_cpi_live_value at {self.produced / self.seconds:,.0f} "
            f"events/s (asked {self.rate:,.0f}/s), {len(self.latencies)} probes: "
            f"p50 {self.quantile(0.5) * 1000:.0f} ms, p99 {self.quantile(0.99) * 1000:.0f} ms, "
            f"max {max(self.latencies) * 1000:.0f} ms, mean "
            f"{statistics.fmean(self.latencies) * 1000:.0f} ms "
            f"(scrapes every {self.scrape_every * 1000:.0f} ms)"
        )


def probe_event(k: int, stamp: float) -> bytes:
    return orjson.dumps(
        {
            "type": "track",
            "event": "Payment Attempted",
            "messageId": f"{PROBE}-{uuid.uuid4()}",
            "userId": PROBE,
            "timestamp": stamp,
            "properties": {"success": k > 1, "amount": 1.0},
            "context": {"channel": PROBE, "region": PROBE},
        }
    )


def visible_probes(url: str) -> int:
    """How many probes the worker has applied, read off its /metrics page."""
    with urllib.request.urlopen(url, timeout=5.0) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("cpimon_cpi_live_value{") and f'channel="{PROBE}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            return round(1.0 / (1.0 - value)) if value < 1.0 else 0
    return 0


class Watcher(threading.Thread):
    """Scrapes every ``every`` seconds; remembers when each probe count was first seen."""

    def __init__(self, url: str, every: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.seen_at: dict[int, float] = {}
        self.visible = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            with contextlib.suppress(OSError):
                count = visible_probes(self.url)
                now = time.perf_counter()
                for k in range(self.visible + 1, count + 1):
                    self.seen_at[k] = now
                self.visible = max(self.visible, count)
            self.stop.wait(max(0.0, self.every - (time.perf_counter() - started)))


async def _send_probes(
    bootstrap: str, topic: str, watcher: Watcher, duration: float, every: float
) -> dict[int, float]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    sent_at: dict[int, float] = {}
    stamp = time.time() + PROBE_AHEAD
    try:
        # Probe 1 opens the probe series: wait until the worker shows it (it has joined
        # the group and caught up), then time the others.
        await producer.send_and_wait(topic, probe_event(1, stamp), key=PROBE.encode())
        deadline = time.monotonic() + 60
        while watcher.visible < 1:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the worker never showed the first latency probe")
            await asyncio.sleep(0.05)
        end = time.monotonic() + duration
        k = 2
        while time.monotonic() < end:
            sent_at[k] = time.perf_counter()
            await producer.send_and_wait(topic, probe_event(k, stamp), key=PROBE.encode())
            k += 1
            await asyncio.sleep(every)
        deadline = time.monotonic() + 10
        while watcher.visible < k - 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await producer.stop()
    return sent_at


async def _load_and_probe(
    broker_url: str, topic: str, rate: float, duration: float, watcher: Watcher, probe_every: float
) -> tuple[int, float, dict[int, float]]:
    """Probes from this process; the load from a ``cpimon simulate`` process of its own,
    so that generating events does not delay the probes."""
    bootstrap = broker_url.removeprefix("kafka://")
    probes = asyncio.create_task(_send_probes(bootstrap, topic, watcher, duration, probe_every))
    while watcher.visible < 1 and not probes.done():
        await asyncio.sleep(0.05)
    load = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "agents.cli", "simulate", "--broker", broker_url, "--topic", topic),
        *("--rate", f"{rate:.0f}", "--duration", f"{duration:g}", "--seed", "7"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
    )
    output, _ = await load.communicate()
    sent = re.search(rb"sent ([0-9,]+) events\s*$", output)
    if load.returncode != 0 or sent is None:
        raise SystemExit(f"bench: cpimon simulate failed: {output[-500:].decode(errors='replace')}")
    return int(sent.group(1).replace(b",", b"")), duration, await probes


def measure(
    rate: float,
    workdir: Path,
    duration: float = 20.0,
    scrape_every: float = 0.05,
    probe_every: float = 0.2,
) -> Latency:
    """Latency of a fresh worker on a fresh broker while ``rate`` events/s flow."""
    port = free_port()
    topic = f"latency-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker(log_path=workdir / "latency-broker.log") as broker:
        broker.create_topics({topic: 4})
        env = worker_env(broker.url, topic, "latency", port, workdir)
        log = open(workdir / "latency-worker.log", "wb")  # noqa: SIM115 - closed below
        process = start_worker(env, log)
        watcher = Watcher(f"http://127.0.0.1:{port}/metrics", scrape_every)
        watcher.start()
        try:
            produced, seconds, sent_at = asyncio.run(
                _load_and_probe(broker.url, topic, rate, duration, watcher, probe_every)
            )
        finally:
            watcher.stop.set()
            watcher.join(10)
            stop_process(process)
            log.close()
    latencies = [watcher.seen_at[k] - sent for k, sent in sent_at.items() if k in watcher.seen_at]
    if len(latencies) < len(sent_at):
        raise SystemExit(
            f"bench: {len(sent_at) - len(latencies)} of {len(sent_at)} latency probes never "
            f"became visible; see {workdir / 'latency-worker.log'}"
        )
    return Latency(rate, produced, seconds, latencies, scrape_every)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--rate", type=float, default=20_000.0, help="background events/s")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--scrape-every", type=float, default=0.05)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="cpimon-latency-"))
    print(measure(args.rate, workdir, args.duration, args.scrape_every).summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
