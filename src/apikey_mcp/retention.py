"""How long a task registry keeps finished tasks: in memory for `seconds` after they end, then only their ids
(the newest MAX_RETIRED), so that their owner may still look them up at the gateway."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

MAX_RETIRED = 10_000  # ids of let-go finished tasks kept per registry


class Retention:
    """`seconds`: how long a finished task stays in memory (None: for ever)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._finished: dict[str, float] = {}  # task id -> when it ended, oldest first
        self._retired: OrderedDict[str, None] = OrderedDict()  # ids of finished tasks let go of, newest last
        self.forgotten: list[Callable[[str], None]] = []  # told of every finished task let go of

    def ended(self, task_id: str, now: float) -> None:
        """The task ended now (a later, replayed end changes nothing)."""
        if task_id not in self._finished:
            self._finished[task_id] = now

    def retired(self, task_id: str) -> bool:
        """Whether the task was let go of (only its id is kept)."""
        return task_id in self._retired

    def revive(self, task_id: str) -> None:
        """The task is held in memory again (its owner looked it up)."""
        self._retired.pop(task_id, None)

    def expired(self, now: float) -> Iterator[str]:
        """The finished tasks whose time in memory is over, oldest first (each is given once)."""
        if self.seconds is None:
            return
        cutoff = now - self.seconds
        while self._finished:
            task_id, ended = next(iter(self._finished.items()))
            if ended > cutoff:
                break
            del self._finished[task_id]
            yield task_id

    def retire(self, task_id: str) -> None:
        """Keep only the id of a task let go of, and tell whoever listens."""
        self._retired[task_id] = None
        self._retired.move_to_end(task_id)
        if len(self._retired) > MAX_RETIRED:
            self._retired.popitem(last=False)
        for forget in self.forgotten:
            forget(task_id)
