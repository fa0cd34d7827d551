"""The range-based commit rule against Faust's own ``Consumer._new_offset``, run on
copies of the same state: same offset, same acked offsets, index and gaps after."""

from __future__ import annotations

import copy
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st
from intervaltree import IntervalTree

from streams.commit_offsets import next_commit_offset

TP0 = TP("events", 0)


def faust_state(
    acked: list[int], acked_index: set[int], gaps: list[tuple[int, int]], committed: int | None
) -> SimpleNamespace:
    """The fields ``Consumer._new_offset`` reads, for one partition."""
    tree = IntervalTree.from_tuples(gaps)
    tree.merge_overlaps()  # as Consumer._add_gap leaves them
    return SimpleNamespace(
        _acked=defaultdict(list, {TP0: list(acked)}),
        _acked_index=defaultdict(set, {TP0: set(acked_index)}),
        _gap=defaultdict(IntervalTree, {TP0: tree}),
        _committed_offset=defaultdict(lambda: None, {TP0: committed}),
    )


def both(state: SimpleNamespace) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(Faust's result, ours) on copies of ``state``: the offset and the state after."""
    theirs, ours = copy.deepcopy(state), copy.deepcopy(state)
    faust_offset = Consumer._new_offset(theirs, TP0)  # type: ignore[arg-type]
    our_offset = next_commit_offset(
        ours._acked[TP0], ours._acked_index[TP0], ours._gap[TP0], ours._committed_offset[TP0]
    )
    return (
        (faust_offset, *after(theirs)),
        (our_offset, *after(ours)),
    )


def after(state: SimpleNamespace) -> tuple[list[int], set[int], list[tuple[int, int]]]:
    gaps = sorted((gap.begin, gap.end) for gap in state._gap[TP0])
    return sorted(state._acked[TP0]), state._acked_index[TP0], gaps


def disjoint_gaps(cuts: list[int]) -> list[tuple[int, int]]:
    """Every other span between sorted distinct cut points."""
    points = sorted(set(cuts))
    return [(points[i], points[i + 1]) for i in range(0, len(points) - 1, 2)]


@settings(max_examples=400, deadline=None)
@given(
    acked=st.lists(st.integers(0, 60), unique=True, max_size=12),
    cuts=st.lists(st.integers(0, 61), max_size=10),
    committed=st.none() | st.integers(0, 30),
)
def test_any_state_gives_faust_s_offset_and_leaves_faust_s_state(
    acked: list[int], cuts: list[int], committed: int | None
) -> None:
    theirs, ours = both(faust_state(acked, set(acked), disjoint_gaps(cuts), committed))
    assert ours == theirs


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=8), data=st.data())
def test_batches_acked_in_any_order_commit_as_faust_commits(
    sizes: list[int], data: st.DataObject
) -> None:
    # The batch consumer's bookkeeping: each batch is a gap up to its last record plus
    # an ack of that record; acks come in any order, commits between any two of them.
    spans, start = [], 0
    for size in sizes:
        spans.append((start, start + size))
        start += size
    gaps = [(begin, end - 1) for begin, end in spans if end - 1 > begin]
    order = data.draw(st.permutations(range(len(spans))))
    state = faust_state([], set(), gaps, None)
    for batch in order:
        last = spans[batch][1] - 1
        state._acked[TP0].append(last)
        state._acked_index[TP0].add(last)
        theirs, ours = both(state)
        assert ours == theirs
        Consumer._new_offset(state, TP0)  # type: ignore[arg-type]


def test_per_record_gaps_holding_the_acked_record_commit_as_faust_commits() -> None:
    # Faust's per-record path registers the skipped offsets and the record itself.
    state = faust_state([8, 12], {8, 12}, [(6, 9), (10, 13)], 5)
    theirs, ours = both(state)
    assert ours == theirs
    assert ours[0] == 9


def test_whole_batches_leave_no_offsets_behind() -> None:
    acked = [9_999, 19_999]
    gaps = IntervalTree.from_tuples([(0, 9_999), (10_000, 19_999)])
    assert next_commit_offset(acked, set(acked), gaps, None) == 20_000
    assert acked == []
    assert not gaps


def test_a_batch_still_in_flight_holds_the_commit_below_it() -> None:
    # The second batch's gap is registered, its message not acked yet.
    acked = [99]
    gaps = IntervalTree.from_tuples([(0, 99), (100, 199)])
    assert next_commit_offset(acked, {99}, gaps, None) == 100
    assert sorted((gap.begin, gap.end) for gap in gaps) == [(100, 199)]
    assert next_commit_offset(acked, set(), gaps, 100) is None
