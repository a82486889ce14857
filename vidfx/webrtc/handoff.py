"""A size-1, drop-oldest hand-off between a producer and a consumer on one event loop.

Why: aiortc's tracks queue every frame without bound, so a consumer slower than its producer (an encoder
behind a model, a model behind a camera) piles up latency frame by frame. Between every stage we keep only the
newest item: a `put` replaces an item nobody took yet (and counts it as dropped), a `get` waits for the next one.

Lifecycle: created empty and open; `put` fills or replaces the one slot; `get` empties it; `close` wakes every
waiter, after which `get` raises `HandoffClosed` once the slot is drained and `put` is ignored.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class HandoffClosed(Exception):
    """The producer side is gone; no more items will come."""


class LatestSlot(Generic[T]):
    def __init__(self) -> None:
        self._item: T | None = None
        self._full = False
        self._closed = False
        self._event = asyncio.Event()
        self.put_count = 0
        self.dropped = 0  # items replaced before anyone took them

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> None:
        if self._closed:
            return
        if self._full:
            self.dropped += 1
        self._item = item
        self._full = True
        self.put_count += 1
        self._event.set()

    def take_nowait(self) -> T | None:
        """The waiting item, or None (never blocks)."""
        if not self._full:
            return None
        item, self._item, self._full = self._item, None, False
        return item

    async def get(self) -> T:
        """The newest item; waits for one. Raises `HandoffClosed` once closed and drained."""
        while not self._full:
            if self._closed:
                raise HandoffClosed
            self._event.clear()
            await self._event.wait()
        item, self._item, self._full = self._item, None, False
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._closed = True
        self._event.set()
