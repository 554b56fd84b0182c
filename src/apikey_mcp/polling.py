"""When a task watcher asks the gateway next: a pure function of what is known about the task.

- **Callbacks wired** (hosted with `--public-url`): the gateway pushes the end, so polling is only a fallback
  for a lost callback: first after a minute, then 1.5 times longer each time up to five minutes, with
  +-10 % jitter so that a burst of tasks does not poll in step. A waiting agent changes nothing: the push
  wakes it. Fallback polls also take turns process-wide (`Pacer`, 2 a second): each costs the server CPU, and
  1,000 open tasks created in a burst would otherwise all come due in the same few seconds a minute later.
- **An agent waits** (`poll_task`) and nothing is pushed: aim just after the task's estimated end. The
  estimate comes from what the gateway reports: the progress at the last poll (the task's age then, over
  the progress, is its whole duration), else the typical duration of this model's earlier tasks here (the
  middle between when each was last seen unfinished and when its end was noticed: the noticed end alone is
  late by the poll's aim, and aiming at it would creep later task after task). With
  no estimate, back off from `first` by 1.5 times per poll. Never sooner than 0.25 s or a tenth of the task's
  age after the last request (so a task whose progress stalls costs a few requests, not a storm), never
  later than `waiting_max` (so progress keeps coming).
- **Nobody waits**: the same aim, but never sooner than `first` or a quarter of the task's age after the last
  request and never later than `idle_max`: the end is still noticed (the reservation is settled) without
  spending requests on news nobody reads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

WAITING_MIN = 0.25  # s between two requests for a task someone waits on, at least
WAITING_AGE_SHARE = 0.1  # ... and at least this share of the task's age
IDLE_AGE_SHARE = 0.25  # when nobody waits
GROWTH = 1.5
END_MARGIN = 0.05  # aim this share of the estimated duration past the estimated end (plus END_SLACK)
END_SLACK = 0.05  # s: the gateway's clock started before our create returned, so our ages run a little short
JITTER = 0.1
MAX_TYPICAL_MODELS = 256  # models whose typical task duration is remembered
FALLBACK_POLLS_PER_SECOND = 2.0  # process-wide, with callbacks wired: under 2 % of a core, measured


@dataclass(frozen=True)
class Known:
    """What the watcher knows when it plans: ages in seconds on the registry's clock."""

    age: float  # since the task started (as far as we know)
    since_request: float  # since the last request about it was sent
    polls: int  # requests made so far
    progress: float | None  # 0..1 at the last answer, if reported and the task was running
    age_at_progress: float | None  # the task's age when that progress was reported
    typical: float | None  # how long this model's tasks took here lately
    waiting: bool  # an agent waits in poll_task


@dataclass(frozen=True)
class Schedule:
    first: float = 1.0  # settings.poll_interval
    waiting_max: float = 5.0  # settings.max_poll_interval
    idle_max: float = 30.0
    callbacks: bool = False
    fallback: float = 60.0
    fallback_max: float = 300.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, known: Known) -> float:
        """Seconds from now until the next request (0: now)."""
        if self.callbacks:
            interval = min(self.fallback * GROWTH**known.polls, self.fallback_max)
            return max(0.0, interval * self.rng.uniform(1 - JITTER, 1 + JITTER) - known.since_request)
        if known.waiting:
            floor, ceiling = max(WAITING_MIN, WAITING_AGE_SHARE * known.age), self.waiting_max
        else:
            floor, ceiling = max(self.first, IDLE_AGE_SHARE * known.age), self.idle_max
        floor = min(floor, ceiling)
        total = estimated_duration(known)
        if total is None:
            after_request = min(self.first * GROWTH**known.polls, ceiling)
        else:
            aim = total * (1 + END_MARGIN) + END_SLACK - known.age  # from now
            after_request = known.since_request + aim
        after_request = min(max(after_request, floor), ceiling)
        return max(0.0, after_request - known.since_request)


def estimated_duration(known: Known) -> float | None:
    """The task's whole duration as best known: from its progress, else from the model's typical one."""
    p, at = known.progress, known.age_at_progress
    if p is not None and at is not None and 0.0 < p < 1.0 and at > 0:
        return at / p
    if known.typical is not None and known.typical > known.age:
        return known.typical
    return None


class Pacer:
    """Turns for background requests, at most `per_second` of them process-wide, in the order asked.

    `reserve` books the next free turn at once (no lock: one event loop) and says how long to wait for it, so
    the caller can wait on its own interruptible sleep and re-check what it still needs after the wait.
    """

    def __init__(self, per_second: float = FALLBACK_POLLS_PER_SECOND) -> None:
        self.spacing = 1.0 / per_second
        self._next = float("-inf")

    def reserve(self, now: float) -> float:
        turn = max(now, self._next)
        self._next = turn + self.spacing
        return turn - now


class Durations:
    """How long each model's tasks took here lately (a moving average), to aim the polls of its next ones."""

    def __init__(self) -> None:
        self._typical: dict[str, float] = {}

    def learn(self, model: str, seconds: float) -> None:
        if model in self._typical:
            self._typical[model] = 0.7 * self._typical[model] + 0.3 * seconds
        elif len(self._typical) < MAX_TYPICAL_MODELS:
            self._typical[model] = seconds

    def typical(self, model: str | None) -> float | None:
        return self._typical.get(model or "")
