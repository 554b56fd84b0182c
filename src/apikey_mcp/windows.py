"""A sliding-window count per key: at most `limit` events per key within `window` seconds, with bounded memory.

Used where each event costs someone else a request (an own gateway key checked at the gateway) and for failed
authentications per client address: the caller asks `wait` first and refuses while it is not 0, then `note`s
the event.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class WindowLimit:
    def __init__(
        self, limit: int, window: float = 60.0, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit, self.window, self.max_keys, self.clock = limit, window, max_keys, clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, key: str) -> float:
        """Seconds until `key` may have another event; 0 if it may now."""
        events = self._events.get(key)
        if events is None:
            return 0.0
        now = self.clock()
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]
            return 0.0
        return events[0] + self.window - now if len(events) >= self.limit else 0.0

    def count(self, key: str) -> int:
        """Events of `key` still counted (at most `limit`)."""
        events = self._events.get(key)
        return len(events) if events is not None else 0

    def note(self, key: str) -> None:
        events = self._events.setdefault(key, deque(maxlen=self.limit))
        events.append(self.clock())
        self._events.move_to_end(key)
        while len(self._events) > self.max_keys:  # the least recently active keys are forgotten first
            self._events.popitem(last=False)
