"""Committable offsets of batch-delivered partitions, kept as ranges.

A batch topic's Faust message stands for a whole range of offsets ``[first,
last]`` and carries ``last``; it is acked once the agent is done with every
record of the range (see streams/transport.py).  Stock Faust would need the
offsets before ``last`` registered as a gap, which it expands into one list
entry per offset and sorts at every commit (5 % of a worker's time in ``make
bench``).  Here each batch is one entry: its first offset, by its last.

The offset to commit for a partition is the end of the longest run of acked
batches that starts at the committed offset (or, before any commit, at the
oldest acked batch) with no offset missing in between: a batch that is still
being applied holds back the commit of every batch after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["BatchRanges"]


class BatchRanges:
    """The first offset of every delivered, uncommitted batch, by its last offset."""

    __slots__ = ("_first",)

    def __init__(self) -> None:
        self._first: dict[object, dict[int, int]] = {}

    def delivered(self, tp: object, first: int, last: int) -> None:
        """A batch of ``tp`` covering ``first..last`` goes to the agent."""
        firsts = self._first.get(tp)
        if firsts is None:
            firsts = self._first[tp] = {}
        firsts[last] = first

    def committable(
        self,
        tp: object,
        acked: list[int],
        committed: int | None,
        forget: Callable[[Iterable[int]], None],
    ) -> int | None:
        """The new offset to commit for ``tp`` (None: nothing new).

        ``acked`` holds the last offsets of acked batches (Faust's list for ``tp``);
        those committed now are removed from it and passed to ``forget``.
        ``committed`` is the offset committed before (the next offset to read).
        """
        if not acked:
            return None
        acked.sort()
        firsts = self._first.get(tp, {})
        expected = committed
        # Faust seeds the read offset of a partition with its committed offset (the next
        # to read) and delivers the first batch after a seek as starting one later when
        # its first record lies beyond it: that batch may start at committed + 1.
        slack = 1
        done = 0
        for last in acked:
            first = firsts.get(last, last)  # a single-record message is its own range
            if expected is not None and first > expected + slack:
                break  # an older batch is still being applied
            if expected is None or last + 1 > expected:
                expected = last + 1
            slack = 0
            done += 1
        if not done:
            return None
        finished = acked[:done]
        del acked[:done]
        for last in finished:
            firsts.pop(last, None)
        forget(finished)
        return expected

    def revoked(self, tps: Iterable[object]) -> None:
        """Forget partitions this consumer no longer owns."""
        for tp in tps:
            self._first.pop(tp, None)
