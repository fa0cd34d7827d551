"""``make soak``: a worker under a steady load for a long time; does its memory stay flat?

Runs the embedded broker, the simulator at a fixed rate and one worker on
catalog.example.yaml.  Every 10 s it samples the worker's RSS, its open windows
(``/metrics``), its active series and the closed windows they hold
(``/api/v1/state``).  At the end it prints RSS at the start, after the warm-up
and at the end, the least-squares slope of RSS after the warm-up (MB per hour),
and the same for the open windows and series, and writes every sample to
``samples.csv`` in the run's folder.

The warm-up is long enough for the bounded structures to fill: the dedupe
horizon of every input partition (``horizon x partitions / rate`` seconds) and
the windows each series and link keeps (``PartitionSeries.HISTORY`` and the
links' ``history + max_lag`` windows).  Event time runs ``--speed`` times faster
than the wall clock (default 20: a one-minute window every 3 s), so those
windows fill early and a 30-minute soak closes 600 windows per series.

The default rate, 300 events/s, is set by the test broker, not the worker: Tansu keeps
every record in memory and takes a full core at 1,000 events/s from the start; past about
1.0 million stored events it can no longer serve its consumers at the rate (a 30-minute
run at 1,000 events/s stalled from 1,000 s on, the worker idle at 2 % CPU while the
broker used 94-100 %, and the stalls made RSS and open windows rise).  30 minutes at 300
events/s stores 540,000.  The dedupe horizon defaults to 30,000 ids so that it fills
within the warm-up; its table is allocated whole at creation, so its size does not
change how memory moves afterwards.

``--short`` is for iterating: 8 minutes and a dedupe horizon of 20,000.
Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from agents.demo import EMBEDDED_BROKER_ENV, scrape, stop_process
from bench.common import cpu_seconds, start_worker
from bench.series_memory import bytes_per_dedupe_id, bytes_per_series
from models.aggregation import PartitionSeries
from models.catalog import load_catalog
from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "catalog.example.yaml"
#: Input partitions of the soak's events topic.
PARTITIONS = 4
#: Seconds for the worker to start and join its group, added to the warm-up.
STARTUP_SECONDS = 30.0


@dataclass
class Sample:
    """One reading of the worker, every ``--interval`` seconds."""

    elapsed: float
    rss_mb: float
    open_windows: int
    series: int
    history_windows: int
    consumed: int
    duplicates: int
    cpu_seconds: float
    load: float


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def read_state(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/state", timeout=5) as answer:
        state: dict[str, Any] = orjson.loads(answer.read())
    return state


def take_sample(pid: int, port: int, elapsed: float) -> Sample | None:
    """The worker's figures now, or None while its web server does not answer."""
    try:
        metrics = scrape(f"http://127.0.0.1:{port}/metrics", timeout=5)
        state = read_state(port)
    except OSError:
        return None
    series = [entry for indicator in state["indicators"] for entry in indicator["series"]]
    return Sample(
        elapsed=elapsed,
        rss_mb=rss_mb(pid),
        open_windows=int(sum(v for n, _, v in metrics if n == "cpimon_open_windows")),
        series=len(series),
        history_windows=sum(len(entry["history"]) for entry in series),
        consumed=int(sum(v for n, _, v in metrics if n == "cpimon_events_consumed_total")),
        duplicates=int(sum(v for n, _, v in metrics if n == "cpimon_events_duplicate_total")),
        cpu_seconds=cpu_seconds(pid) or 0.0,
        load=os.getloadavg()[0],
    )


def warmup_seconds(rate: float, horizon: int, speed: float, window: float, windows: int) -> float:
    """Wall seconds until the dedupe horizons and the kept windows are full.

    >>> warmup_seconds(rate=1000, horizon=100_000, speed=20, window=60, windows=35)
    430.0
    """
    dedupe_fill = horizon * PARTITIONS / rate
    history_fill = windows * window / speed
    return STARTUP_SECONDS + max(dedupe_fill, history_fill)


def slope_per_hour(times: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of ``values`` per hour of ``times`` (seconds), and its
    standard error."""
    hours = times / 3600.0
    (slope, _intercept), residuals, *_ = np.polyfit(hours, values, 1, full=True)
    n = len(hours)
    spread = float(np.sum((hours - hours.mean()) ** 2))
    if n < 3 or spread == 0:
        return float(slope), math.nan
    variance = float(residuals[0]) / (n - 2) if len(residuals) else 0.0
    return float(slope), math.sqrt(variance / spread)


def bytes_per_state(series: int, windows: int) -> tuple[float, float]:
    """Mean and max bytes per active series over the catalog's indicators (tracemalloc,
    see bench/series_memory.py), measured in this process."""
    catalog = load_catalog(CATALOG)
    sizes = [bytes_per_series(i, series, windows) for i in catalog.cpis + catalog.kpis]
    return sum(sizes) / len(sizes), max(sizes)


def kept_windows() -> int:
    """The most closed windows any series or link keeps (what the warm-up must fill)."""
    catalog = load_catalog(CATALOG)
    link_windows = [link.history_windows + link.max_lag_windows for link in catalog.links]
    return max([PartitionSeries.HISTORY, *link_windows])


def run(args: argparse.Namespace, warmup: float, workdir: Path) -> list[Sample]:
    run_id = uuid.uuid4().hex[:8]
    port = free_port()
    samples: list[Sample] = []
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        topic, kpi_topic = f"soak-{run_id}", f"soak-kpi-{run_id}"
        broker.create_topics({topic: PARTITIONS, kpi_topic: 1})
        env = {
            **os.environ,
            **EMBEDDED_BROKER_ENV,
            "CPIMON_BROKER": broker.url,
            "CPIMON_EVENTS_TOPIC": topic,
            "CPIMON_KPI_TOPIC": kpi_topic,
            "CPIMON_APP_ID": f"soak-{run_id}",
            "CPIMON_METRICS_PORT": str(port),
            "CPIMON_DEDUPE_HORIZON": str(args.dedupe_horizon),
            "CPIMON_CATALOG": str(CATALOG),
        }
        cli = [sys.executable, "-m", "agents.cli"]
        simulate = [
            *cli,
            "simulate",
            "--topic",
            topic,
            "--kpi-topic",
            kpi_topic,
            "--rate",
            str(args.rate),
            "--duration",
            str(args.minutes * 60),
            "--speed",
            str(args.speed),
            "--cpi-variation",
            "1",
        ]
        with open(workdir / "worker.log", "wb") as wlog, open(workdir / "sim.log", "wb") as slog:
            launcher: tuple[str, ...] = ("agents.cli",)
            if args.trace_heap:
                env["CPIMON_SOAK_INTERVAL"], env["CPIMON_SOAK_WARMUP"] = (
                    str(args.interval),
                    str(warmup),
                )
                launcher = ("bench.traced_worker", str(workdir))
            worker = start_worker(env, wlog, launcher)
            simulator = subprocess.Popen(
                simulate, env=env, stdout=slog, stderr=subprocess.STDOUT, cwd=ROOT
            )
        started = time.monotonic()
        print(f"{'s':>6} {'RSS MB':>8} {'open win':>8} {'series':>6} {'kept win':>8} "
              f"{'consumed':>11} {'ev/s':>6} {'CPU %':>6} {'load':>5}", flush=True)  # fmt: skip
        try:
            while (elapsed := time.monotonic() - started) < args.minutes * 60:
                time.sleep(args.interval - elapsed % args.interval)
                if worker.poll() is not None:
                    raise SystemExit(f"soak: the worker exited; see {workdir / 'worker.log'}")
                sample = take_sample(worker.pid, port, time.monotonic() - started)
                if sample is None:
                    continue
                seconds = sample.elapsed - samples[-1].elapsed if samples else math.nan
                cpu = (
                    100 * (sample.cpu_seconds - samples[-1].cpu_seconds) / seconds
                    if samples
                    else math.nan
                )
                speed = (sample.consumed - samples[-1].consumed) / seconds if samples else math.nan
                samples.append(sample)
                over = len(samples) > 1 and samples[-2].elapsed < warmup <= sample.elapsed
                mark = "  <- warm-up over" if over else ""
                print(
                    f"{sample.elapsed:6.0f} {sample.rss_mb:8.1f} {sample.open_windows:8d} "
                    f"{sample.series:6d} {sample.history_windows:8d} {sample.consumed:11,d} "
                    f"{speed:6.0f} {cpu:6.0f} {sample.load:5.2f}{mark}",
                    flush=True,
                )
        finally:
            stop_process(simulator)
            stop_process(worker)
    with open(workdir / "samples.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([field.name for field in fields(Sample)])
        writer.writerows(astuple(sample) for sample in samples)
    return samples


def summarize(samples: list[Sample], warmup: float, args: argparse.Namespace) -> int:
    after = [s for s in samples if s.elapsed >= warmup]
    if len(after) < 3:
        print("soak: too short to fit a slope after the warm-up")
        return 1
    times = np.array([s.elapsed for s in after])
    rss = np.array([s.rss_mb for s in after])
    rss_slope, rss_error = slope_per_hour(times, rss)
    open_slope, _ = slope_per_hour(times, np.array([float(s.open_windows) for s in after]))
    opened = [s.open_windows for s in after]
    series = [s.series for s in after]
    kept = [s.history_windows for s in after]
    first, last = samples[0], samples[-1]
    hours = (last.elapsed - after[0].elapsed) / 3600
    cpu = 100 * (last.cpu_seconds - first.cpu_seconds) / (last.elapsed - first.elapsed)
    print(
        f"\nsoak: {args.minutes:g} min at {args.rate:g} events/s, event time x{args.speed:g}, "
        f"{len(samples)} samples every {args.interval:g} s; consumed {last.consumed:,d} "
        f"events ({last.duplicates:,d} duplicates); worker CPU {cpu:.0f} %, "
        f"machine load {np.mean([s.load for s in samples]):.2f} (mean 1-min load average)"
    )
    print(
        f"RSS: {first.rss_mb:.1f} MB at {first.elapsed:.0f} s, {after[0].rss_mb:.1f} MB after "
        f"the warm-up ({after[0].elapsed:.0f} s), {last.rss_mb:.1f} MB at the end; "
        f"after the warm-up {rss.min():.1f}-{rss.max():.1f} MB"
    )
    print(
        f"RSS slope after the warm-up: {rss_slope:+.2f} ± {rss_error:.2f} MB/hour "
        f"(± one standard error; {rss_slope * hours:+.2f} MB over the {hours * 60:.0f} "
        f"minutes fitted, {rss_slope * 24:+.1f} MB a day if it went on)"
    )
    print_rss_steps(after, args.rate)
    print(
        f"open windows after the warm-up: {min(opened)}-{max(opened)}, slope "
        f"{open_slope:+.1f}/hour; active series {min(series)}-{max(series)}; closed "
        f"windows kept {min(kept)}-{max(kept)} (at most {PartitionSeries.HISTORY} per series)"
    )
    if not args.skip_state_bytes:
        mean, most = bytes_per_state(series=200, windows=40)
        print(
            f"bytes per active series (open window, {PartitionSeries.HISTORY} closed windows, "
            f"drop detector; bench/series_memory.py): mean {mean:,.0f}, max {most:,.0f}"
        )
    dedupe = bytes_per_dedupe_id(args.dedupe_horizon) * args.dedupe_horizon
    print(
        f"dedupe: {dedupe / 1e6:.1f} MB per input partition (horizon "
        f"{args.dedupe_horizon:,d} ids, {dedupe / args.dedupe_horizon:.0f} bytes per id), "
        f"{PARTITIONS * dedupe / 1e6:.1f} MB for the {PARTITIONS} partitions"
    )
    if args.trace_heap:
        summarize_heap(args.workdir, warmup)
    print(f"samples: {args.workdir / 'samples.csv'}")
    return 0


def print_rss_steps(after: list[Sample], rate: float) -> None:
    """Where RSS rose after the warm-up, and whether the worker was catching up on a backlog
    then (a stall, or above 1.5 x the rate): the allocator keeps memory a burst needed, so
    RSS then rises in steps with the largest burst, not steadily with time."""
    steps, in_bursts = 0.0, 0.0
    for before, sample in itertools.pairwise(after):
        rise = sample.rss_mb - before.rss_mb
        if rise <= 0:
            continue
        steps += rise
        window = [s for s in after if abs(s.elapsed - sample.elapsed) <= 30]
        speeds = [
            (b.consumed - a.consumed) / (b.elapsed - a.elapsed)
            for a, b in itertools.pairwise(window)
        ]
        if speeds and (min(speeds) < 0.5 * rate or max(speeds) > 1.5 * rate):
            in_bursts += rise
    tail = [
        s
        for s in after
        if s.elapsed >= after[-1].elapsed - (after[-1].elapsed - after[0].elapsed) / 3
    ]
    tail_slope, tail_error = slope_per_hour(
        np.array([s.elapsed for s in tail]), np.array([s.rss_mb for s in tail])
    )
    print(
        f"RSS rose by {steps:.1f} MB in total after the warm-up, {in_bursts:.1f} MB of it within "
        f"30 s of a stall or catch-up burst (under 0.5x or over 1.5x the rate); slope over the "
        f"last third ({(tail[-1].elapsed - tail[0].elapsed) / 60:.0f} min): "
        f"{tail_slope:+.2f} ± {tail_error:.2f} MB/hour"
    )


def load_samples(path: Path) -> list[Sample]:
    """The samples of an earlier run, from its samples.csv."""
    with open(path, newline="") as source:
        rows = list(csv.reader(source))[1:]
    return [
        Sample(
            elapsed=float(row[0]),
            rss_mb=float(row[1]),
            open_windows=int(row[2]),
            series=int(row[3]),
            history_windows=int(row[4]),
            consumed=int(row[5]),
            duplicates=int(row[6]),
            cpu_seconds=float(row[7]),
            load=float(row[8]),
        )
        for row in rows
    ]


def summarize_heap(workdir: Path, warmup: float) -> None:
    """The worker's traced Python heap (``--trace-heap``) after the warm-up."""
    rows = [line.split() for line in (workdir / "heap.txt").read_text().splitlines()]
    after = np.array([(float(t), int(b) / 1e6) for t, b in rows if float(t) >= warmup])
    if len(after) < 3:
        print("heap: too few samples after the warm-up")
        return
    slope, error = slope_per_hour(after[:, 0], after[:, 1])
    print(
        f"traced Python heap: {after[0, 1]:.1f} MB after the warm-up, {after[-1, 1]:.1f} MB "
        f"at the end, slope {slope:+.2f} ± {error:.2f} MB/hour; biggest changes in "
        f"{workdir}/heap-diff-*.txt"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=300.0, help="events per second")
    parser.add_argument("--speed", type=float, default=20.0, help="event time x wall time")
    parser.add_argument(
        "--dedupe-horizon",
        type=int,
        default=30_000,
        help="CPIMON_DEDUPE_HORIZON of the worker (the worker's own default is "
        f"{Settings().dedupe_horizon:,}: it would take most of a 30-minute run to fill)",
    )
    parser.add_argument(
        "--warmup-minutes", type=float, help="default: computed to fill every bounded structure"
    )
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--short", action="store_true", help="8 minutes, dedupe horizon 20,000")
    parser.add_argument(
        "--trace-heap",
        action="store_true",
        help="run the worker under tracemalloc (bench/traced_worker.py) to tell a leak "
        "from the allocator keeping freed memory; slows the worker",
    )
    parser.add_argument(
        "--skip-state-bytes", action="store_true", help="do not measure bytes per series"
    )
    parser.add_argument(
        "--summarize",
        type=Path,
        metavar="DIR",
        help="only summarize the samples.csv of an earlier run (give its options too)",
    )
    args = parser.parse_args(argv)
    if args.short:
        args.minutes, args.dedupe_horizon = 8.0, 20_000
    window = min(i.window for i in load_catalog(CATALOG).indicators)
    computed = warmup_seconds(args.rate, args.dedupe_horizon, args.speed, window, kept_windows())
    warmup = computed if args.warmup_minutes is None else args.warmup_minutes * 60
    args.workdir = args.summarize or Path(tempfile.mkdtemp(prefix="cpimon-soak-"))
    print(
        f"soak: {args.minutes:g} min at {args.rate:g} events/s, event time x{args.speed:g}; "
        f"logs in {args.workdir}\nwarm-up {warmup:.0f} s: the dedupe horizons fill in "
        f"{args.dedupe_horizon:,d} ids x {PARTITIONS} partitions / {args.rate:g} events/s = "
        f"{args.dedupe_horizon * PARTITIONS / args.rate:.0f} s, the {kept_windows()} kept "
        f"windows in {kept_windows() * window / args.speed:.0f} s, plus "
        f"{STARTUP_SECONDS:.0f} s to start",
        flush=True,
    )
    if args.summarize is not None:
        args.workdir = args.summarize
        return summarize(load_samples(args.summarize / "samples.csv"), warmup, args)
    samples = run(args, warmup, args.workdir)
    return summarize(samples, warmup, args)


if __name__ == "__main__":
    raise SystemExit(main())
