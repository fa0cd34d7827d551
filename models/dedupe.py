"""Recently seen message ids, to drop producer-side duplicates within a bounded horizon."""

from __future__ import annotations

from collections import deque


class RecentIds:
    """The last ``capacity`` distinct ids, oldest forgotten first.

    >>> recent = RecentIds(capacity=2)
    >>> [recent.seen(i) for i in ["a", "b", "a", "c", "a"]]
    [False, False, True, False, False]

    (``"a"`` was forgotten once ``"c"`` made room, so its third copy counts again:
    duplicates further apart than the horizon are not caught.)
    """

    __slots__ = ("_ids", "_order", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # A set for membership and a FIFO for age.  (Not a dict's insertion order with
        # ``del ids[next(iter(ids))]``: each deletion leaves a hole at the front that the
        # next ``iter`` walks over, so once full each id cost O(capacity): 30-400 µs.)
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def seen(self, message_id: str) -> bool:
        """True if ``message_id`` is among the recent ids; otherwise remember it."""
        ids = self._ids
        if message_id in ids:
            return True
        ids.add(message_id)
        self._order.append(message_id)
        if len(ids) > self.capacity:
            ids.remove(self._order.popleft())
        return False

    def __len__(self) -> int:
        return len(self._ids)
