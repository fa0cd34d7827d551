"""The records of the observations topic (stage 1 ingest → stage 2 aggregate), as bytes.

One record carries what consecutive input batches of one source partition routed to
one observation partition, grouped by series key, in a compact little-endian layout::

    header   magic "cpo1", source partition u32, its partition count u32,
             newest event time f64 (NaN: none), last input offset i64,
             topic length u16, group count u32
    topic    UTF-8
    group    key length u32, observation count u32 (n ≥ 1), key UTF-8,
             n event times f64, n values f64, n input offsets i64

Within a group observations keep the input order, so applying the groups one
after the other gives every series the same sequence of values as applying the
observations one by one.  Packing and unpacking the numbers are single C calls
per group (``struct``), where JSON cost a parse and a list per observation.

A record of the topic may hold several such records back to back, one per input
partition (:func:`decode_observation_records`): stage 1 sends one record per
observation partition and delivery, whatever the number of sources in it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from models.errors import CpimonError

__all__ = [
    "MAGIC",
    "ObservationGroup",
    "ObservationRecord",
    "ObservationRecordError",
    "decode_observation_records",
    "decode_observations",
    "encode_observations",
]

MAGIC = b"cpo1"
_HEADER = struct.Struct("<4sIIdqHI")
_GROUP = struct.Struct("<II")
_NAN = math.nan


class ObservationRecordError(CpimonError):
    """A record of the observations topic is not in the layout this worker writes."""


class ObservationGroup(NamedTuple):
    """The observations of one series from one input batch, in input order."""

    key: str
    times: Sequence[float]
    values: Sequence[float]
    offsets: Sequence[int]


class ObservationRecord(NamedTuple):
    """One decoded record: where its input batch came from, and its groups."""

    topic: str
    partition: int
    partitions: int
    newest: float | None
    last_offset: int
    groups: list[ObservationGroup]


def encode_observations(
    topic: str,
    partition: int,
    partitions: int,
    newest: float | None,
    last_offset: int,
    groups: Iterable[tuple[str, Sequence[tuple[float, float, int]]]],
) -> bytes:
    """Pack (series key, [(event time, value, input offset), ...]) groups; empty ones are left out.

    >>> data = encode_observations("events", 0, 4, 12.5, 7, [("ok", [(12.5, 1.0, 7)])])
    >>> decode_observations(data).groups
    [ObservationGroup(key='ok', times=(12.5,), values=(1.0,), offsets=(7,))]
    """
    name = topic.encode()
    parts = [b""]
    count = 0
    for key, observations in groups:
        size = len(observations)
        if not size:
            continue
        encoded_key = key.encode()
        times, values, offsets = zip(*observations, strict=True)
        parts.append(_GROUP.pack(len(encoded_key), size))
        parts.append(encoded_key)
        parts.append(struct.pack(f"<{size}d{size}d{size}q", *times, *values, *offsets))
        count += 1
    parts[0] = _HEADER.pack(
        MAGIC,
        partition,
        partitions,
        _NAN if newest is None else newest,
        last_offset,
        len(name),
        count,
    )
    parts.insert(1, name)
    return b"".join(parts)


def decode_observations(data: bytes) -> ObservationRecord:
    """Inverse of :func:`encode_observations`; :class:`ObservationRecordError` if the
    bytes are not such a record (truncated, trailing bytes, bad magic or text)."""
    record, position = _decode_at(data, 0)
    if position != len(data):
        raise _corrupt(f"has {len(data) - position} bytes after its last group")
    return record


def decode_observation_records(data: bytes) -> list[ObservationRecord]:
    """The records of one value holding one or more encoded records back to back.

    >>> one = encode_observations("events", 0, 2, 1.0, 3, [("a", [(1.0, 1.0, 3)])])
    >>> two = encode_observations("events", 1, 2, 2.0, 8, [("a", [(2.0, 0.0, 8)])])
    >>> [(r.partition, r.last_offset) for r in decode_observation_records(one + two)]
    [(0, 3), (1, 8)]
    """
    records = []
    position = 0
    while True:
        record, position = _decode_at(data, position)
        records.append(record)
        if position == len(data):
            return records


def _decode_at(data: bytes, start: int) -> tuple[ObservationRecord, int]:
    """The record starting at ``start``, and where it ends."""
    try:
        magic, partition, partitions, newest, last_offset, name_size, count = _HEADER.unpack_from(
            data, start
        )
        if magic != MAGIC:
            raise _corrupt(f"starts with {bytes(magic)!r}, not {MAGIC!r}")
        position = start + _HEADER.size
        end = position + name_size
        if end > len(data):
            raise _corrupt("truncated in the topic name")
        topic = data[position:end].decode()
        position = end
        groups: list[ObservationGroup] = []
        unpack_group = _GROUP.unpack_from
        for _ in range(count):
            key_size, size = unpack_group(data, position)
            if not size:
                raise _corrupt("holds an empty group")
            position += _GROUP.size
            if position + key_size > len(data):
                raise _corrupt("truncated in a series key")
            key = data[position : position + key_size].decode()
            position += key_size
            numbers = struct.unpack_from(f"<{size}d{size}d{size}q", data, position)
            position += 24 * size
            groups.append(
                ObservationGroup(key, numbers[:size], numbers[size : 2 * size], numbers[2 * size :])
            )
    except (struct.error, UnicodeDecodeError) as error:
        raise _corrupt(f"cannot be read ({error})") from None
    return ObservationRecord(
        topic,
        partition,
        partitions,
        None if newest != newest else newest,
        last_offset,
        groups,
    ), position


def _corrupt(problem: str) -> ObservationRecordError:
    return ObservationRecordError(
        f"observation record {problem}: the observations topic holds records of another "
        "program or version. Give this deployment its own topic (CPIMON_OBSERVATIONS_TOPIC "
        "or a new CPIMON_APP_ID), or stop the workers writing the other layout."
    )
