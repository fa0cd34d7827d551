"""The binary records of the observations topic: round trips, and corrupt bytes refused."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.errors import CpimonError
from streams.observations import (
    MAGIC,
    ObservationGroup,
    ObservationRecordError,
    decode_observation_records,
    decode_observations,
    encode_observations,
)

finite = st.floats(allow_nan=False, allow_infinity=False)
offsets = st.integers(min_value=-(2**63), max_value=2**63 - 1)
observation = st.tuples(finite, finite, offsets)
group = st.tuples(st.text(max_size=30), st.lists(observation, max_size=20))


@settings(max_examples=300, deadline=None)
@given(
    topic=st.text(max_size=40),
    partition=st.integers(0, 2**32 - 1),
    partitions=st.integers(0, 2**32 - 1),
    newest=st.none() | finite,
    last_offset=offsets,
    groups=st.lists(group, max_size=8),
)
def test_a_record_decodes_to_what_was_encoded(
    topic: str,
    partition: int,
    partitions: int,
    newest: float | None,
    last_offset: int,
    groups: list[tuple[str, list[tuple[float, float, int]]]],
) -> None:
    data = encode_observations(topic, partition, partitions, newest, last_offset, groups)
    record = decode_observations(data)
    assert (record.topic, record.partition, record.partitions) == (topic, partition, partitions)
    assert record.newest == newest and record.last_offset == last_offset
    expected = [
        ObservationGroup(
            key,
            tuple(t for t, _v, _o in observations),
            tuple(v for _t, v, _o in observations),
            tuple(o for _t, _v, o in observations),
        )
        for key, observations in groups
        if observations  # empty groups are left out
    ]
    assert record.groups == expected


def test_the_layout_is_compact() -> None:
    observations = [(1_800_000_000.0 + i, 1.0, 1000 + i) for i in range(100)]
    data = encode_observations(
        "journey-events", 2, 4, 1.8e9, 1099, [("checkout\x1feu", observations)]
    )
    # 34 header + 14 topic + 8 group header + 11 key + 24 per observation
    assert len(data) == 34 + 14 + 8 + 11 + 24 * 100


def test_negative_zero_and_extreme_values_survive() -> None:
    groups = [("k", [(-0.0, 5e-324, -(2**63)), (1e308, -1e308, 2**63 - 1)])]
    (decoded,) = decode_observations(encode_observations("t", 0, 1, None, 0, groups)).groups
    assert math.copysign(1.0, decoded.times[0]) == -1.0
    assert decoded.values == (5e-324, -1e308)
    assert decoded.offsets == (-(2**63), 2**63 - 1)


VALID = encode_observations(
    "events", 1, 4, 12.5, 9, [("a\x1feu", [(12.0, 1.0, 8), (12.5, 0.0, 9)]), ("b", [(3.0, 2.0, 7)])]
)


@pytest.mark.parametrize("length", range(len(VALID)))
def test_every_truncation_is_refused(length: int) -> None:
    with pytest.raises(ObservationRecordError, match="observations topic holds records"):
        decode_observations(VALID[:length])


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(ObservationRecordError, match="1 bytes after its last group"):
        decode_observations(VALID + b"\x00")


def test_a_json_record_of_the_former_layout_is_refused() -> None:
    legacy = b'["events",1,4,12.5,9,[["a",12.0,1.0,8]]]'
    with pytest.raises(ObservationRecordError, match="not b'cpo1'") as caught:
        decode_observations(legacy)
    assert isinstance(caught.value, CpimonError)
    assert "CPIMON_OBSERVATIONS_TOPIC" in str(caught.value)


def test_invalid_utf8_in_a_key_is_refused() -> None:
    position = VALID.index(b"a\x1feu")
    corrupt = VALID[:position] + b"\xff" + VALID[position + 1 :]
    with pytest.raises(ObservationRecordError, match="cannot be read"):
        decode_observations(corrupt)


def test_an_empty_group_is_refused() -> None:
    header = struct.pack("<4sIIdqHI", MAGIC, 0, 1, 1.0, 0, 1, 1) + b"t"
    with pytest.raises(ObservationRecordError, match="empty group"):
        decode_observations(header + struct.pack("<II", 1, 0) + b"k")


def test_a_group_longer_than_the_record_is_refused() -> None:
    header = struct.pack("<4sIIdqHI", MAGIC, 0, 1, 1.0, 0, 1, 1) + b"t"
    with pytest.raises(ObservationRecordError):
        decode_observations(header + struct.pack("<II", 1, 1000) + b"k" + b"\x00" * 24)


def test_records_back_to_back_decode_one_by_one() -> None:
    first = encode_observations("events", 0, 2, 10.0, 41, [("a", [(10.0, 1.0, 41)])])
    second = encode_observations("events", 1, 2, None, 7, [])
    third = encode_observations("kpis", 0, 1, 12.5, 3, [("b", [(12.5, 2.0, 3), (12.0, 4.0, 2)])])
    decoded = decode_observation_records(first + second + third)
    assert decoded == [decode_observations(part) for part in (first, second, third)]
    assert decode_observation_records(first) == [decode_observations(first)]
    with pytest.raises(ObservationRecordError, match="cannot be read"):
        decode_observation_records(first + second[:10])
    with pytest.raises(ObservationRecordError, match="bytes after its last group"):
        decode_observations(first + second)
