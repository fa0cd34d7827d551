"""RecentIds: exact against a plain model, also when hashes share low bits, and bounded in size."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.dedupe import RecentIds


def _check_against_model(recent: RecentIds, ids: list[str]) -> None:
    model = deque[str](maxlen=recent.capacity)
    for message_id in ids:
        expected = message_id in model
        if not expected:
            model.append(message_id)
        assert recent.seen(message_id) == expected, message_id
    assert len(recent) == len(model)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 40),
    ids=st.lists(st.integers(0, 90).map(lambda n: f"m{n}"), max_size=600),
)
def test_answers_like_a_deque_of_the_last_capacity_ids(capacity: int, ids: list[str]) -> None:
    _check_against_model(RecentIds(capacity), ids)


def _same_home(message_id: str) -> int:
    """Every id's hash has the same low 32 bits: the ids collide in the set's table."""
    return (int(message_id[1:]) + 1) << 32 | 0xFFFF_FFFF


def _four_homes(message_id: str) -> int:
    return (int(message_id[1:]) + 1) << 32 | (int(message_id[1:]) % 4) * 7


@pytest.mark.parametrize("hash_function", [_same_home, _four_homes])
@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 13, 50])
def test_colliding_hashes_stay_exact(hash_function: object, capacity: int) -> None:
    """Forgetting ids whose hashes collide must leave every remaining id findable."""
    rng = random.Random(capacity)
    recent = RecentIds(capacity, hash_function=hash_function)  # type: ignore[arg-type]
    _check_against_model(recent, [f"m{rng.randrange(3 * capacity)}" for _ in range(4000)])


def test_an_id_hashing_to_zero_is_remembered() -> None:
    recent = RecentIds(4, hash_function=lambda message_id: 0 if message_id == "z" else 5)
    assert recent.seen("z") is False
    assert recent.seen("z") is True


def test_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RecentIds(0)


def test_memory_stops_growing_at_the_horizon_and_keeps_no_id_strings() -> None:
    """Filled, then churned through two more horizons: the memory stays what it was
    when full, and is far below what keeping the uuid strings (85 bytes each) takes."""
    capacity = 100_000  # the default (below 50,000, a set keeps more slots per member)

    def message_id(n: int) -> str:
        return f"{n:08x}-7f6e-4d3c-8b2a-{n:012x}"

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        recent = RecentIds(capacity)
        for n in range(capacity):
            recent.seen(message_id(n))
        full = tracemalloc.get_traced_memory()[0] - before
        peak_after_full = full
        for n in range(capacity, 3 * capacity):
            recent.seen(message_id(n))
            if n % 5000 == 0:
                peak_after_full = max(peak_after_full, tracemalloc.get_traced_memory()[0] - before)
        later = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(recent) == capacity
    # A set slot (16 bytes, at most 60 % full), the hash as an int (32) and a queue slot (8).
    assert 50 * capacity <= full <= 100 * capacity
    # The set may be rebuilt at the same size as deleted slots pile up, never larger.
    assert peak_after_full <= full * 1.05 and later <= full * 1.05
