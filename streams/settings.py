"""The worker's settings: one object, read from ``CPIMON_*`` variables in one place.

Command-line options override the environment; the environment overrides the
defaults.  Every field's variable is ``CPIMON_`` + its name in upper case,
e.g. ``CPIMON_BROKER=kafka://kafka-1:9092,kafka://kafka-2:9092``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from models.errors import ConfigError

ENV_PREFIX = "CPIMON_"

#: Internal topics and their name after the app id when not set.
_INTERNAL_TOPICS = {
    "dead_letter_topic": "dead-letters",
    "observations_topic": "observations",
    "windows_topic": "windows",
    "checkpoint_topic": "checkpoints",
    "link_checkpoint_topic": "link-checkpoints",
}


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to know besides the catalog's contents."""

    broker: str = "kafka://127.0.0.1:9092"
    catalog: str = "catalog.example.yaml"
    #: Consumer group and Faust app id; workers sharing it split the partitions.
    app_id: str = "cpi-monitor"
    events_topic: str = "journey-events"
    kpi_topic: str = "kpi-values"
    dead_letter_topic: str = ""
    #: Internal topic where events are repartitioned by (indicator, segment).
    observations_topic: str = ""
    observation_partitions: int = 4
    #: Internal, one partition: closed windows of every indicator, for the CPI→KPI links.
    windows_topic: str = ""
    #: Internal, compacted: checkpoints of the links state.
    link_checkpoint_topic: str = ""
    #: Internal, compacted: checkpoints of every observation partition's state.
    checkpoint_topic: str = ""
    #: Seconds between checkpoints; a crashed worker's successor replays at most this much.
    checkpoint_interval: float = 5.0
    #: Message ids remembered per input partition to drop duplicates.
    dedupe_horizon: int = 100_000
    topic_partitions: int = 4
    topic_replication: int = 1
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 6066
    data_dir: str = ".cpimon-data"
    max_event_bytes: int = 64 * 1024
    max_future_seconds: float = 300.0
    #: Seconds without any observation after which every open window closes. Must be
    #: at least three times the session timeout: a crashed worker's partitions are
    #: silent until the group notices and reassigns them (one or two rebalances), and
    #: their replayed events must not find their windows closed.
    idle_timeout: float = 120.0
    #: Where a new consumer group starts: "earliest" replays the topic, "latest" goes live.
    auto_offset_reset: str = "latest"
    commit_interval: float = 1.0
    session_timeout: float = 30.0
    heartbeat_interval: float = 3.0
    #: Bytes per producer batch; 1 = one record per batch (needed by brokers that
    #: report end offsets per batch, such as the Tansu test broker).
    producer_max_batch_size: int = 16384
    max_poll_records: int = 10_000
    #: Seconds the broker may hold a fetch that finds no new records.  Short, because
    #: aiokafka has one fetch in flight per broker: while idle partitions (caught up, or a
    #: quiet KPI topic) hold it, busy partitions of that broker wait too.  Each idle
    #: fetch costs one small request per broker and period.
    fetch_max_wait: float = 0.1
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    log_level: str = "info"

    def __post_init__(self) -> None:
        # Internal topics default to names prefixed by the app id, as Faust names its
        # own, so that two deployments sharing a cluster never share state.
        for name, suffix in _INTERNAL_TOPICS.items():
            if not getattr(self, name):
                object.__setattr__(self, name, f"{self.app_id}-{suffix}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``CPIMON_*`` variables, then ``overrides`` (None values are ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = _convert(field, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        # An empty list (CPIMON_BROKER=",") would leave the Kafka clients nothing to dial.
        for url in self.broker_urls or [self.broker]:
            if not url.startswith("kafka://"):
                raise ConfigError(
                    f"broker {url!r} must look like kafka://HOST:PORT "
                    "(several separated by commas); set --broker or CPIMON_BROKER"
                )
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError("CPIMON_AUTO_OFFSET_RESET must be 'earliest' or 'latest'")
        protocols = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
        if self.security_protocol not in protocols:
            raise ConfigError(f"CPIMON_SECURITY_PROTOCOL must be one of {', '.join(protocols)}")
        if self.security_protocol.startswith("SASL") and not self.sasl_username:
            raise ConfigError(
                f"{self.security_protocol} needs CPIMON_SASL_USERNAME and CPIMON_SASL_PASSWORD"
            )
        if self.idle_timeout < 3 * self.session_timeout:
            raise ConfigError(
                f"CPIMON_IDLE_TIMEOUT ({self.idle_timeout:g}s) must be at least three times "
                f"CPIMON_SESSION_TIMEOUT ({self.session_timeout:g}s): otherwise windows close "
                "while a crashed worker's partitions wait for the group to reassign them, and "
                "their events are then dropped as late. Raise CPIMON_IDLE_TIMEOUT."
            )
        if self.observation_partitions < 1 or self.topic_partitions < 1:
            raise ConfigError("partition counts must be at least 1")
        if not 0 < self.fetch_max_wait <= 30:
            raise ConfigError(
                f"CPIMON_FETCH_MAX_WAIT ({self.fetch_max_wait:g}s) must be more than 0 and at "
                "most 30 seconds (0.1 suits most deployments)"
            )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def broker_urls(self) -> list[str]:
        return [url.strip() for url in self.broker.split(",") if url.strip()]

    @property
    def bootstrap_servers(self) -> list[str]:
        """``HOST:PORT`` entries for plain Kafka clients."""
        return [url.removeprefix("kafka://") for url in self.broker_urls]

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile or None)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
        return context

    def kafka_client_options(self) -> dict[str, Any]:
        """SASL/SSL options in the keyword form aiokafka and kafka-python share."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        return options

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def _convert(field: dataclasses.Field[Any], raw: str) -> Any:
    kind = field.type if isinstance(field.type, type) else str(field.type)
    name = ENV_PREFIX + field.name.upper()
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            number = float(raw)
            # float() takes "nan" and "inf"; every comparison with NaN is false, so
            # e.g. CPIMON_IDLE_TIMEOUT=nan would flush every window at every tick.
            if not math.isfinite(number):
                raise ValueError(raw)
            return number
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    return raw
