"""Gateway answers that are the same for every principal (the model catalogue, the docs), kept for a while."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

_T = TypeVar("_T")


class Cache:
    """Answers by key, each kept for the `seconds` its reader asks. Concurrent misses of one key make one
    request, not one each."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, object]] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def get(self, key: str, seconds: float, fetch: Callable[[], Awaitable[_T]]) -> _T:
        async with self._locks.setdefault(key, anyio.Lock()):
            hit = self._entries.get(key)
            if hit is not None and time.monotonic() - hit[0] < seconds:
                return hit[1]  # type: ignore[return-value]
            value = await fetch()
            self._entries[key] = (time.monotonic(), value)
            return value
