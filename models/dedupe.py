"""Recently seen message ids, to drop producer-side duplicates within a bounded horizon."""

from __future__ import annotations


class RecentIds:
    """The last ``capacity`` distinct ids, oldest forgotten first.

    >>> recent = RecentIds(capacity=2)
    >>> [recent.seen(i) for i in ["a", "b", "a", "c", "a"]]
    [False, False, True, False, False]

    (``"a"`` was forgotten once ``"c"`` made room, so its third copy counts again:
    duplicates further apart than the horizon are not caught.)
    """

    __slots__ = ("_ids", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # dict keeps insertion order: a FIFO with O(1) membership.
        self._ids: dict[str, None] = {}

    def seen(self, message_id: str) -> bool:
        """True if ``message_id`` is among the recent ids; otherwise remember it."""
        ids = self._ids
        if message_id in ids:
            return True
        ids[message_id] = None
        if len(ids) > self.capacity:
            del ids[next(iter(ids))]
        return False

    def __len__(self) -> int:
        return len(self._ids)
