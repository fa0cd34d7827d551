"""Range bookkeeping of batch offsets: what may be committed, and when."""

from __future__ import annotations

import random

import pytest

from streams.commits import BatchRanges

TP = ("observations", 2)


def committable(ranges: BatchRanges, acked: list[int], committed: int | None) -> int | None:
    forgotten: list[int] = []
    offset = ranges.committable(TP, acked, committed, forgotten.extend)
    assert all(last not in acked for last in forgotten)
    return offset


def test_acked_batches_commit_up_to_the_end_of_the_last() -> None:
    ranges = BatchRanges()
    for first, last in [(100, 199), (200, 349), (350, 350)]:
        ranges.delivered(TP, first, last)
    acked = [199, 349, 350]
    assert committable(ranges, acked, 100) == 351
    assert acked == []
    assert committable(ranges, acked, 351) is None


def test_an_unacked_batch_holds_back_the_batches_after_it() -> None:
    ranges = BatchRanges()
    for first, last in [(0, 9), (10, 19), (20, 29)]:
        ranges.delivered(TP, first, last)
    acked = [9, 29]  # 10..19 still being applied
    assert committable(ranges, acked, 0) == 10
    assert acked == [29]
    assert committable(ranges, acked, 10) is None  # still held
    acked.append(19)
    assert committable(ranges, acked, 10) == 30


def test_nothing_is_committed_before_the_first_batch_after_the_committed_offset() -> None:
    ranges = BatchRanges()
    ranges.delivered(TP, 60, 80)
    acked = [80]
    assert committable(ranges, acked, 50) is None  # offsets 50..59 not applied
    assert acked == [80]


def test_the_first_batch_after_a_seek_may_start_one_after_the_committed_offset() -> None:
    ranges = BatchRanges()
    ranges.delivered(TP, 51, 80)  # Faust: read offset = committed, first = read + 1
    ranges.delivered(TP, 82, 90)  # ...but later batches must follow on exactly
    acked = [80, 90]
    assert committable(ranges, acked, 50) == 81
    assert acked == [90]


def test_revoked_partitions_are_forgotten() -> None:
    ranges = BatchRanges()
    ranges.delivered(TP, 0, 9)
    ranges.revoked([TP])
    acked = [9]
    # Without its range the message stands for its own offset only.
    assert committable(ranges, acked, 0) is None


@pytest.mark.parametrize("seed", range(30))
def test_the_commit_never_passes_an_unapplied_offset(seed: int) -> None:
    """Batches applied (acked) in order, committed at random moments: the committed
    offset is always the end of the applied prefix."""
    rng = random.Random(seed)
    ranges = BatchRanges()
    start = rng.randint(0, 1000)
    batches, offset = [], start
    for _ in range(50):
        size = rng.randint(1, 30)
        batches.append((offset, offset + size - 1))
        offset += size
    committed: int | None = start
    acked: list[int] = []
    applied = 0  # batches applied (acked), in delivery order
    for delivered, (first, last) in enumerate(batches, start=1):
        ranges.delivered(TP, first, last)
        while applied < delivered and rng.random() < 0.6:  # applying lags behind
            acked.append(batches[applied][1])
            applied += 1
        if rng.random() < 0.5:
            new = committable(ranges, acked, committed)
            applied_upto = batches[applied - 1][1] + 1 if applied else start
            assert new == (applied_upto if applied_upto != committed else None)
            committed = new or committed
    acked.extend(last for _first, last in batches[applied:])
    final = committable(ranges, acked, committed)
    assert (final or committed) == offset  # everything, once all applied
