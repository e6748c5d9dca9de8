"""A bounded ring buffer of recent events, served by ``/api/v1/events`` and streamed by
``/api/v1/events/stream``."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from batchscope.model import Event


def event_record(event: Event) -> dict[str, Any]:
    """The same fields as the event's log line."""
    return {
        "timestamp": datetime.fromtimestamp(event.time, UTC).isoformat(),
        "level": "warning" if event.bad_news else "info",
        "event": event.event_name,
        **event.fields(),
    }


class EventBuffer:
    """The last ``capacity`` events, kept as the events themselves: each is rendered as a
    record when it is read (a few API reads and stream clients), not when it is added (a
    first cycle adds 10,000 at once; issue 12)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._items: deque[Event] = deque(maxlen=capacity)
        self._next: asyncio.Future[None] | None = None

    def extend(self, events: Iterable[Event]) -> None:
        before = len(self._items), self._items[-1].seq if self._items else None
        self._items.extend(events)
        after = len(self._items), self._items[-1].seq if self._items else None
        if after != before and self._next is not None:
            if not self._next.done():
                self._next.set_result(None)
            self._next = None

    def next_change(self) -> asyncio.Future[None]:
        """A future done once events are next added. Shared by every waiter (one future
        however many streams wait): await it through ``asyncio.wait``, never cancel it."""
        loop = asyncio.get_running_loop()
        if self._next is None or self._next.get_loop() is not loop:
            self._next = loop.create_future()
        return self._next

    def tail(self, n: int) -> list[dict[str, Any]]:
        """The last ``n`` events, oldest first."""
        if n <= 0:
            return []
        newest = list(itertools.islice(reversed(self._items), n))
        newest.reverse()
        return [event_record(e) for e in newest]

    def after(self, seq: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Events with a sequence number above ``seq``, oldest first."""
        items = self._items
        if not items or items[-1].seq <= seq:
            return []
        # Sequence numbers increase by one per event, so the start index is arithmetic;
        # the scan below only corrects for gaps left by a restart.
        start = min(len(items), max(0, seq - items[0].seq + 1))
        while start > 0 and items[start - 1].seq > seq:
            start -= 1
        while start < len(items) and items[start].seq <= seq:
            start += 1
        return [event_record(items[i]) for i in range(start, min(len(items), start + limit))]

    def __len__(self) -> int:
        return len(self._items)
