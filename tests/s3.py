"""A local S3 stand-in (moto's server) so that the embedded broker keeps its data across restarts.

Tansu's ``memory://`` storage loses every record and committed offset when the broker
stops; its ``s3://`` storage does not. moto (``moto[s3]``, with ``flask`` and
``flask-cors`` for its server, all in the ``test`` extra) answers the S3 protocol on a
loopback port, in memory: the data lives as long as this process, which is what a test
of a broker restart needs. Started and stopped by PID, like every process of the tests.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agents.demo import stop_process
from streams.broker import EmbeddedBroker, free_port

BUCKET = "tansu"


class S3Server:
    """moto's S3 server on 127.0.0.1, with one bucket for the broker."""

    def __init__(self, log_path: Path, bucket: str = BUCKET) -> None:
        self.port = free_port()
        self.bucket = bucket
        self.log_path = log_path
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What Tansu's S3 client reads: endpoint, dummy credentials, plain HTTP allowed."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": "cpimon-test",
            "AWS_SECRET_ACCESS_KEY": "cpimon-test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    @property
    def storage(self) -> str:
        return f"s3://{self.bucket}/"

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"moto's S3 server exited with {self._process.returncode}; see {self.log_path}"
                )
            try:
                self._request("PUT", f"/{self.bucket}")
                return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"moto's S3 server did not answer on {self.endpoint} within "
                        f"{timeout:g} s; see {self.log_path}"
                    ) from None
                time.sleep(0.2)

    def object_count(self) -> int:
        """Objects in the bucket (the broker's records, offsets and metadata)."""
        return self._request("GET", f"/{self.bucket}?list-type=2").count(b"<Key>")

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            self._process = None

    def _request(self, method: str, path: str) -> bytes:
        request = urllib.request.Request(self.endpoint + path, method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            body: bytes = response.read()
            return body


@contextmanager
def s3_broker(directory: Path) -> Iterator[tuple[EmbeddedBroker, S3Server]]:
    """A started broker whose storage is a fresh bucket on a started S3 server; both
    stopped by PID at the end. Logs go to ``directory``."""
    s3 = S3Server(directory / "s3.log")
    s3.start()
    try:
        broker = EmbeddedBroker(
            log_path=directory / "tansu.log", storage=s3.storage, storage_env=s3.env
        )
        with broker:
            yield broker, s3
    finally:
        s3.stop()
