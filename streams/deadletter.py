"""Dead-letter records: the original bytes, with why and where they were rejected in headers."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

REASON = "cpimon-reason"
DETAIL = "cpimon-detail"
SOURCE_TOPIC = "cpimon-source-topic"
SOURCE_PARTITION = "cpimon-source-partition"
SOURCE_OFFSET = "cpimon-source-offset"
REJECTED_AT = "cpimon-rejected-at"

#: Header values are cut to this many bytes so a huge detail cannot make the record too large.
MAX_HEADER_BYTES = 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message and its provenance."""

    key: bytes | None
    value: bytes | None
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int

    def headers(self, now: float | None = None) -> list[tuple[str, bytes]]:
        """Kafka headers describing the rejection."""
        rejected_at = time.time() if now is None else now
        return [
            (REASON, self.reason.encode()),
            (DETAIL, self.detail.encode("utf-8", "replace")[:MAX_HEADER_BYTES]),
            (SOURCE_TOPIC, self.topic.encode()),
            (SOURCE_PARTITION, str(self.partition).encode()),
            (SOURCE_OFFSET, str(self.offset).encode()),
            (REJECTED_AT, f"{rejected_at:.3f}".encode()),
        ]


def read_headers(headers: Sequence[tuple[str, bytes]] | None) -> Mapping[str, str]:
    """Dead-letter headers as text, for tools and tests reading the topic.

    >>> letter = DeadLetter(None, b"{", "invalid_json", "truncated", "events", 3, 42)
    >>> read_headers(letter.headers(now=0.0))[SOURCE_OFFSET]
    '42'
    """
    return {name: value.decode("utf-8", "replace") for name, value in headers or ()}
