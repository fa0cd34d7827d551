"""``make bench``: events/s of the full worker next to a raw aiokafka loop and stock Faust.

Starts the embedded broker, fills a 4-partition topic with simulated journey
events, then reads it, each in a fresh process, with:

1. ``raw``: a raw aiokafka getmany + orjson + River loop (bench/raw_loop.py);
2. ``stock``: a stock Faust agent doing the same work, ``async for`` over the
   stream (bench/stock_faust.py; fewer events, it is slow);
3. ``worker``: a ``cpimon worker`` on ``catalog.example.yaml``.

Every path runs ``--runs`` times, interleaved (the order rotates each round), and
the table shows medians.  raw and stock time themselves from their first event to
their last.  The worker is timed from outside through ``/metrics``: from the first
scrape that shows consumed events (the events consumed before it are not counted)
to the first scrape showing every event consumed and every observation routed
from them applied.  Scrapes are 2 per second (a scrape costs the worker CPU), and
20 per second once the end is less than a second away, so the end is known to
within 50 ms.

Then, unless ``--latency-duration 0``, the latency phase (bench/latency.py): on a
fresh broker, a fresh worker reads events produced at half the worker's median
rate while probe events measure event → visible in ``cpimon_cpi_live_value``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from agents.demo import scrape, stop_process
from bench import latency, stages
from bench.common import CATALOG, ROOT, cpu_seconds, peak_rss_mb, start_worker, worker_env
from models.aggregation import PartitionSeries
from models.catalog import load_catalog
from models.routing import series_key
from streams.broker import EmbeddedBroker, free_port
from streams.simulator import JourneySimulator, produce

#: Seconds between /metrics scrapes while the worker runs, and near its end.
SCRAPE_EVERY = 0.5
SCRAPE_EVERY_NEAR_END = 0.05

PATHS = {
    "raw": "raw aiokafka getmany + orjson + River",
    "stock": "stock Faust agent, same work",
    "worker": "cpimon worker (catalog.example.yaml)",
}


@dataclass
class Result:
    path: str
    events: int
    seconds: float
    #: CPU time of the process (all threads) over the same interval.
    cpu_seconds: float | None = None
    peak_rss_mb: float | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_micros(self) -> float | None:
        """CPU µs per event: less sensitive than events/s to what else runs on the machine."""
        return None if self.cpu_seconds is None else self.cpu_seconds * 1e6 / self.events


@dataclass
class Run:
    """What every path needs: the broker, the filled topic and where logs go."""

    broker: EmbeddedBroker
    topic: str
    events: int
    stock_events: int
    workdir: Path
    profile: Path | None


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


def _child_result(name: str, args: list[str], events: int, run: Run, label: str) -> Result:
    """Run a bench child writing {"seconds", "cpu_seconds", "peak_rss_mb"} as JSON to its
    last argument."""
    log = run.workdir / f"{label}.log"
    result_file = run.workdir / f"{label}.json"
    with open(log, "wb") as output:
        done = subprocess.run(
            [sys.executable, "-m", *args, str(result_file)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            timeout=600,
            check=False,
        )
    if done.returncode != 0 or not result_file.exists():
        raise SystemExit(f"bench: {name} failed (exit {done.returncode}), see {log}")
    result = orjson.loads(result_file.read_bytes())
    return Result(
        PATHS[name], events, result["seconds"], result["cpu_seconds"], result["peak_rss_mb"]
    )


def run_raw(run: Run, label: str) -> Result:
    args = ["bench.raw_loop", run.broker.bootstrap, run.topic, str(run.events)]
    return _child_result("raw", args, run.events, run, label)


def run_stock(run: Run, label: str) -> Result:
    args = ["bench.stock_faust", run.broker.url, run.topic, str(run.stock_events)]
    return _child_result("stock", args, run.stock_events, run, label)


def _metric(samples: list[tuple[str, dict[str, str], float]], name: str) -> float:
    return sum(value for sample, _labels, value in samples if sample == name)


def run_worker(run: Run, label: str) -> Result:
    port = free_port()
    topic = run.topic
    env = worker_env(run.broker.url, topic, label, port, run.workdir)
    log = open(run.workdir / f"{label}.log", "wb")  # noqa: SIM115 - closed below
    process = start_worker(env, log)
    profiler: subprocess.Popen[bytes] | None = None
    url = f"http://127.0.0.1:{port}/metrics"
    started = finished = 0.0
    consumed_before = 0.0
    cpu_started = cpu_finished = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"bench: worker exited, see {run.workdir / label}.log")
            try:
                samples = scrape(url)
            except OSError:
                time.sleep(0.2)
                continue
            now = time.perf_counter()
            consumed = _metric(samples, "cpimon_events_consumed_total")
            if consumed and not started:
                started, consumed_before = now, consumed
                cpu_started = cpu_seconds(process.pid)
                if run.profile is not None:  # the steady state only, not start-up
                    profiler = _start_profiler(process.pid, run.profile / f"{label}.txt")
            routed = _metric(samples, "cpimon_observations_routed_total")
            applied = _metric(samples, "cpimon_observations_applied_total")
            if consumed >= run.events and applied >= routed:
                finished = now
                cpu_finished = cpu_seconds(process.pid)
                break
            pause = SCRAPE_EVERY
            if started and consumed > consumed_before:
                left = (run.events - consumed) / (consumed - consumed_before) * (now - started)
                if left < 1.0:
                    pause = SCRAPE_EVERY_NEAR_END
            time.sleep(pause)
        else:
            raise SystemExit("bench: the worker did not finish within 600 s")
        rss = peak_rss_mb(process.pid)
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file and exits
            profiler.wait(30)
        stop_process(process)
        log.close()
    events = run.events - int(consumed_before)
    cpu = None
    if cpu_started is not None and cpu_finished is not None:
        cpu = cpu_finished - cpu_started
    return Result(PATHS["worker"], events, finished - started, cpu, rss)


def _start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
    return subprocess.Popen(
        # --gil: only samples of the thread holding the GIL, i.e. Python work, not the
        # threads waiting for it (or for the kernel) after a send or a cross-thread wake-up.
        [
            py_spy,
            "record",
            "-p",
            str(pid),
            "-f",
            "raw",
            "-r",
            "250",
            "--gil",
            "--nonblocking",
            "-o",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


RUNNERS: dict[str, Callable[[Run, str], Result]] = {
    "raw": run_raw,
    "stock": run_stock,
    "worker": run_worker,
}


def bytes_per_series(series: int = 2000) -> dict[str, float]:
    """Bytes one active series holds in a PartitionSeries, by measure kind (tracemalloc).

    Each of ``series`` segments of every event-fed indicator gets observations in
    one open window: the key, the series, its open window's River estimator and the
    partition's bookkeeping (closed-window history and drop detectors come on top
    once windows close: see bench/series_memory.py if present).
    """
    catalog = load_catalog(CATALOG)
    out: dict[str, float] = {}
    for indicator in catalog.indicators:
        if indicator.source != "events":
            continue
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        partition = PartitionSeries({indicator.name: indicator}, idle_timeout=3600.0)
        for round_ in range(3):
            batch = [
                (series_key(indicator.name, [f"segment-{i}"]), 10.0 + round_, 1.0, round_)
                for i in range(series)
            ]
            partition.apply(("events", 0, 1), 10.0 + round_, round_, batch, now=0.0)
        del batch
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        out.setdefault(indicator.measure.kind, held / series)
    return out


def print_table(results: dict[str, list[Result]], series_bytes: dict[str, float]) -> None:
    rounds = len(results["raw"])
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, broker: embedded Tansu (memory); "
        f"medians of {rounds} interleaved run{'s' if rounds > 1 else ''}"
    )
    rates = {path: statistics.median(r.rate for r in runs) for path, runs in results.items()}
    stock = rates.get("stock")
    print(
        f"{'path':38} {'events':>8} {'events/s':>9} {'µs/event':>8} {'CPU µs/ev':>9} "
        f"{'x raw':>6} {'x stock':>7} {'peak RSS':>8}   events/s of each run"
    )
    for path, runs in results.items():
        rate = rates[path]
        cpus = [r.cpu_micros for r in runs if r.cpu_micros is not None]
        cpu = f"{statistics.median(cpus):.1f}" if cpus else "-"
        rss_values = [r.peak_rss_mb for r in runs if r.peak_rss_mb]
        rss = f"{statistics.median(rss_values):.0f} MB" if rss_values else "-"
        versus_stock = f"{rate / stock:.1f}" if stock else "-"
        each = ", ".join(f"{r.rate:,.0f}" for r in runs)
        events = statistics.median(r.events for r in runs)
        print(
            f"{PATHS[path]:38} {events:>8,.0f} {rate:>9,.0f} {1e6 / rate:>8.1f} {cpu:>9} "
            f"{rate / rates['raw']:>6.2f} {versus_stock:>7} {rss:>8}   {each}"
        )
    kinds = ", ".join(f"{kind} {size:,.0f}" for kind, size in sorted(series_bytes.items()))
    print(f"bytes per active series (one open window), by measure kind: {kinds}")
    print(
        "CPU µs/event: CPU time of the path's process (all threads) over the timed interval "
        "per event; the broker's CPU is not included."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--stock-events", type=int, default=50_000, help="for stock Faust")
    parser.add_argument("--runs", type=int, default=3, help="rounds of every path")
    parser.add_argument("--paths", default="raw,stock,worker", help="comma-separated subset")
    parser.add_argument(
        "--profile", type=Path, help="write a py-spy raw profile of each worker run here"
    )
    parser.add_argument(
        "--latency-duration",
        type=float,
        default=20.0,
        help="seconds of the latency phase at half the worker's rate (0: skip it)",
    )
    args = parser.parse_args(argv)
    paths = [path for path in args.paths.split(",") if path]
    if not set(paths) <= set(PATHS) or "raw" not in paths:
        raise SystemExit(f"bench: --paths takes raw (always) and any of {', '.join(PATHS)}")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="cpimon-bench-"))
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    results: dict[str, list[Result]] = {path: [] for path in PATHS if path in paths}
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        print(f"bench: producing {args.events:,} simulated events to {topic}…", flush=True)
        fill_topic(broker, topic, args.events)
        run = Run(broker, topic, args.events, args.stock_events, workdir, args.profile)
        for round_ in range(args.runs):
            order = paths[round_ % len(paths) :] + paths[: round_ % len(paths)]
            for path in order:
                result = RUNNERS[path](run, f"{path}-{round_ + 1}")
                results[path].append(result)
                cpu = result.cpu_micros
                print(
                    f"bench: round {round_ + 1}, {path:6}: {result.events:,} events "
                    f"in {result.seconds:.2f} s = {result.rate:,.0f}/s"
                    + (f", {cpu:.1f} CPU µs/event" if cpu is not None else ""),
                    flush=True,
                )
    print_table(results, bytes_per_series())
    if args.latency_duration > 0 and results.get("worker"):
        rate = statistics.median(r.rate for r in results["worker"]) / 2
        print(latency.measure(rate, workdir, args.latency_duration).summary(), flush=True)
    stage_micros = stages.measure(events=20_000, batch=2_500, repeat=5)
    per_event = stage_micros.pop("observations/event")
    print(
        "in memory, CPU µs per event (least of 5; "
        f"{per_event:.2f} observations/event): "
        + ", ".join(f"{stage} {micros:.2f}" for stage, micros in stage_micros.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
