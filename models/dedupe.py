"""Recently seen message ids, to drop producer-side duplicates within a bounded horizon."""

from __future__ import annotations


class RecentIds:
    """At least the last ``capacity`` distinct ids, in two generations of sets.

    New ids go into ``current``; once it holds ``capacity`` ids, it becomes
    ``previous`` (the old ``previous`` is forgotten) and a new ``current``
    starts.  So an id is remembered for at least ``capacity`` and at most
    ``2 * capacity`` newer distinct ids, and memory stays bounded.  (Exactly the
    last ``capacity`` needs a FIFO next to the set: two more operations per id,
    a fifth of a worker's dedupe time.)

    >>> recent = RecentIds(capacity=2)
    >>> [recent.seen(i) for i in ["a", "b", "a", "c", "a", "d", "e", "a"]]
    [False, False, True, False, True, False, False, False]

    (``"a"`` is still known after ``"c"`` (at least two newer ids are kept), and
    forgotten once ``"d"`` and ``"e"`` filled a generation after it.)

    Hot loops inline :meth:`seen` on ``current`` and ``previous`` and call
    :meth:`rotate` after each batch (a generation may then exceed ``capacity``
    by up to one batch).
    """

    __slots__ = ("capacity", "current", "previous")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.current: set[str] = set()
        self.previous: set[str] = set()

    def seen(self, message_id: str) -> bool:
        """True if ``message_id`` is among the recent ids; otherwise remember it."""
        if message_id in self.current or message_id in self.previous:
            return True
        self.current.add(message_id)
        self.rotate()
        return False

    def rotate(self) -> None:
        """Start a new generation if the current one is full."""
        if len(self.current) >= self.capacity:
            self.previous = self.current
            self.current = set()

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)
