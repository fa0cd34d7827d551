"""``make soak``: a worker under a steady load for a long time; does its memory stay flat?

Runs the embedded broker, the simulator at a fixed rate and one worker on
catalog.example.yaml; every 10 s samples the worker's RSS and its open
windows.  At the end prints the samples' summary and the least-squares slope
of RSS after the warm-up (MB per hour).  Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from agents.demo import EMBEDDED_BROKER_ENV, scrape, stop_process
from streams.broker import EmbeddedBroker, free_port

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="cpimon-soak-"))
    run = uuid.uuid4().hex[:8]
    port = free_port()
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        topic = f"soak-{run}"
        broker.create_topics({topic: 4})
        env = {
            **os.environ,
            **EMBEDDED_BROKER_ENV,
            "CPIMON_BROKER": broker.url,
            "CPIMON_EVENTS_TOPIC": topic,
            "CPIMON_APP_ID": f"soak-{run}",
            "CPIMON_METRICS_PORT": str(port),
            "CPIMON_IDLE_TIMEOUT": "30",
            "CPIMON_CATALOG": str(ROOT / "catalog.example.yaml"),
        }
        cli = [sys.executable, "-m", "agents.cli"]
        with open(workdir / "worker.log", "wb") as wlog, open(workdir / "sim.log", "wb") as slog:
            worker = subprocess.Popen(
                [*cli, "worker"], env=env, stdout=wlog, stderr=subprocess.STDOUT, cwd=ROOT
            )
            simulator = subprocess.Popen(
                [
                    *cli,
                    "simulate",
                    "--topic",
                    topic,
                    "--rate",
                    str(args.rate),
                    "--duration",
                    str(args.minutes * 60),
                ],
                env=env,
                stdout=slog,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        samples: list[tuple[float, float, float, float]] = []
        started = time.monotonic()
        print(
            f"soak: {args.minutes:g} min at {args.rate:g} events/s; logs in {workdir}", flush=True
        )
        try:
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(args.interval)
                if worker.poll() is not None:
                    raise SystemExit(f"soak: the worker exited; see {workdir / 'worker.log'}")
                try:
                    metrics = scrape(f"http://127.0.0.1:{port}/metrics")
                except OSError:
                    continue
                windows = sum(v for n, _, v in metrics if n == "cpimon_open_windows")
                consumed = sum(v for n, _, v in metrics if n == "cpimon_events_consumed_total")
                elapsed = time.monotonic() - started
                samples.append((elapsed, rss_mb(worker.pid), windows, consumed))
                print(
                    f"{elapsed:7.0f}s  rss {samples[-1][1]:7.1f} MB  open windows "
                    f"{windows:5.0f}  consumed {consumed:12,.0f}",
                    flush=True,
                )
        finally:
            stop_process(simulator)
            stop_process(worker)
    after = [s for s in samples if s[0] >= args.warmup_minutes * 60]
    if len(after) < 3:
        print("soak: too short to fit a slope")
        return 1
    t = np.array([s[0] for s in after]) / 3600
    rss = np.array([s[1] for s in after])
    slope = float(np.polyfit(t, rss, 1)[0])
    open_counts = [s[2] for s in after]
    print(
        f"\nsoak: {len(samples)} samples; after {args.warmup_minutes:g} min warm-up: RSS "
        f"{rss.min():.1f}-{rss.max():.1f} MB, slope {slope:+.2f} MB/hour; open windows "
        f"{min(open_counts):.0f}-{max(open_counts):.0f}; consumed {samples[-1][3]:,.0f} events"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
