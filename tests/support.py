"""Helpers shared by integration tests: worker processes, polling, scraping."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from kafka import KafkaConsumer

from agents.demo import EMBEDDED_BROKER_ENV, Sample, scrape, stop_process
from bench.common import start_worker
from streams.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CATALOG = ROOT / "catalog.example.yaml"


T = TypeVar("T")


def isolated_topics(app: str) -> dict[str, str]:
    """Worker settings naming topics and an app id no other test uses (the session broker
    keeps every topic and consumer group): ``CPIMON_APP_ID`` is ``app`` plus a run id."""
    run = uuid.uuid4().hex[:8]
    return {
        "CPIMON_EVENTS_TOPIC": f"events-{run}",
        "CPIMON_OBSERVATIONS_TOPIC": f"observations-{run}",
        "CPIMON_DEAD_LETTER_TOPIC": f"dead-letters-{run}",
        "CPIMON_CHECKPOINT_TOPIC": f"checkpoints-{run}",
        "CPIMON_KPI_TOPIC": f"kpis-{run}",
        "CPIMON_APP_ID": f"{app}-{run}",
    }


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.5,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``.

    ``describe`` adds the state seen at the deadline to the failure message.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    state = describe() if describe is not None else repr(last)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {state}")


#: Labelled counters summed in failure messages: where observations went instead of a count.
DIAGNOSTIC_COUNTERS = (
    "cpimon_events_consumed_total",
    "cpimon_events_duplicate_total",
    "cpimon_events_rejected_total",
    "cpimon_events_late_total",
    "cpimon_events_unmeasurable_total",
    "cpimon_records_undelivered_total",
    "cpimon_fetch_holes_total",
    "cpimon_offsets_skipped_total",
)


class WorkerProcess:
    """A ``cpimon worker`` child process with its metrics URL and log."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}/metrics"

    def samples(self) -> list[Sample]:
        if self.process.poll() is not None:
            raise AssertionError(
                f"worker exited with {self.process.returncode}:\n{self.log_tail()}"
            )
        try:
            return scrape(self.url)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return []

    def value(self, name: str, **labels: str) -> float | None:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        found = [
            value
            for sample_name, sample_labels, value in self.samples()
            if sample_name == name and labels.items() <= sample_labels.items()
        ]
        return sum(found) if found else None

    def counted(self) -> float:
        """Observations counted over every series (``cpimon_{cpi,kpi,metric}_events_total``)."""
        return sum(
            self.value(f"cpimon_{kind}_events_total") or 0 for kind in ("cpi", "kpi", "metric")
        )

    def describe(self, *names: str) -> str:
        """The current values of ``names`` (when none: the unlabelled cpimon_ metrics and
        the sums of the counters that explain a missing count), for failure messages."""
        samples = self.samples()
        wanted = [
            f"{name}{labels}={value}"
            for name, labels, value in samples
            if (name in names if names else name.startswith("cpimon_") and not labels)
        ]
        if not names:
            for counter in DIAGNOSTIC_COUNTERS:
                total = sum(value for name, _labels, value in samples if name == counter)
                wanted.append(f"sum {counter}={total}")
        return "; ".join(wanted) + "\n--- worker log tail:\n" + self.log_tail(20)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def worker_process(
    broker_url: str,
    tmp_path: Path,
    env: Mapping[str, str],
    catalog: Path = EXAMPLE_CATALOG,
) -> Iterator[WorkerProcess]:
    """Run ``cpimon worker`` against ``broker_url`` until the block ends; stop it by PID."""
    port = free_port()
    log_path = tmp_path / f"worker-{port}.log"
    full_env = {
        **os.environ,
        **EMBEDDED_BROKER_ENV,
        "CPIMON_BROKER": broker_url,
        "CPIMON_CATALOG": str(catalog),
        "CPIMON_METRICS_PORT": str(port),
        "CPIMON_DATA_DIR": str(tmp_path / f"data-{port}"),
        **env,
    }
    with open(log_path, "wb") as log:
        process = start_worker(full_env, log)
    worker = WorkerProcess(process, port, log_path)
    try:
        wait_for(worker.samples, 60, f"worker metrics on port {port}")
        yield worker
    finally:
        stop_process(process)


def topic_records(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` (kafka-python ConsumerRecords), read straight from the
    broker until 5 s pass without one, partition by partition in offset order."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5_000
    )
    records = list(consumer)
    consumer.close()
    return sorted(records, key=lambda record: (record.partition, record.offset))


def topic_values(bootstrap: str, topic: str) -> list[bytes]:
    """The value of every record in ``topic``."""
    return [record.value for record in topic_records(bootstrap, topic)]


def message_ids(bootstrap: str, topic: str) -> list[str]:
    """The ``messageId`` of every record in ``topic``."""
    return [orjson.loads(value)["messageId"] for value in topic_values(bootstrap, topic)]


def unstored_records(futures: list[Any]) -> int:
    """Sends (kafka-python futures, flushed) that failed or that the broker acknowledged with
    offset -1, which is how Tansu acknowledges a record it did not store."""
    return sum(future.failed() or future.get(timeout=0).offset < 0 for future in futures)
