"""Small helpers shared by the bench processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from agents.demo import EMBEDDED_BROKER_ENV

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "catalog.example.yaml"


def worker_env(broker_url: str, topic: str, label: str, port: int, workdir: Path) -> dict[str, str]:
    """Environment of a benchmarked ``cpimon worker``: embedded-broker settings, a group
    and internal topics of its own, reading ``topic`` from the start."""
    return {
        **os.environ,
        **EMBEDDED_BROKER_ENV,
        "CPIMON_BROKER": broker_url,
        "CPIMON_EVENTS_TOPIC": topic,
        "CPIMON_OBSERVATIONS_TOPIC": f"{topic}-observations-{label}",
        "CPIMON_DEAD_LETTER_TOPIC": f"{topic}-dead-letters",
        "CPIMON_APP_ID": f"bench-{uuid.uuid4().hex[:8]}",
        "CPIMON_METRICS_PORT": str(port),
        "CPIMON_DATA_DIR": str(workdir / f"data-{label}"),
        "CPIMON_CATALOG": str(CATALOG),
    }


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident set size (VmHWM) of a process in MB, None if unreadable."""
    try:
        status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU time of a process (every thread) so far, None if unreadable."""
    try:
        stat = Path(f"/proc/{pid or os.getpid()}/stat").read_text()
    except OSError:
        return None
    # Fields after the command (which may hold spaces) start at the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_worker(
    env: dict[str, str], log: IO[bytes], launcher: Sequence[str] = ("agents.cli",)
) -> subprocess.Popen[bytes]:
    """``cpimon worker`` from this checkout, in a session of its own, output to ``log``.

    ``launcher``: the module (and its arguments) that runs the cpimon command line,
    e.g. ``("bench.traced_worker", OUTPUT_DIR)`` to run it under tracemalloc.
    """
    return subprocess.Popen(
        [sys.executable, "-m", *launcher, "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
