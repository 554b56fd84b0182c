"""Budget alerts: when a principal's spent + reserved crosses `--alert-at` percent of its budget, and when it
reaches 100%, once per threshold per period.

Once means once for the whole deployment: the ledger records each alert (`claim_alert`) in the same store all
replicas share, and only the process whose claim made the record tells anyone, so restarts and replicas send
it once. Telling is a log line, the metric `apikey_budget_alerts_total{threshold}` (`count_alert`), and with
`--alert-webhook` a POST of `{"principal", "budget", "spent", "reserved", "threshold", "period"}` signed
with `APIKEY_ALERT_SECRET` in `X-Apikey-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`,
retried with backoff.

Nothing here blocks the call that crossed a threshold: the ledger tells `notice`, which only queues the
principal (bounded); a worker checks and claims, another delivers (bounded too).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
import httpx2
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import metrics
from .budget import LedgerStore
from .config import Settings
from .gateway.webhooks import sign
from .periods import label, period_start

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Apikey-Signature"
MAX_CHECKS = 1000  # principals waiting to be checked
MAX_DELIVERIES = 1000  # alerts waiting to be posted
ATTEMPTS = 6  # posts of one alert, then it is logged as undelivered
FIRST_DELAY, MAX_DELAY = 0.5, 8.0  # backoff between posts, doubling
TIMEOUT = httpx2.Timeout(10.0, connect=5.0)

ALERTS_TOTAL: Counter[int] = Counter()  # threshold -> alerts this process sent; what count_alert records


def count_alert(threshold: int) -> None:
    """One more alert sent at `threshold` percent: the metric `apikey_budget_alerts_total{threshold}` (when metrics
    are on) and this process's own count."""
    ALERTS_TOTAL[threshold] += 1
    metrics.budget_alert(threshold)


def signature(secret: str, body: bytes, *, now: float | None = None) -> str:
    at = int(time.time() if now is None else now)
    return f"t={at},v1={sign(secret, at, body)}"


def verify_signature(secret: str, header: str, body: bytes, *, tolerance: float = 300.0) -> bool:
    """What a receiver checks: the HMAC over "<t>.<body>", and a timestamp within `tolerance` seconds."""
    try:
        fields = dict(part.strip().split("=", 1) for part in header.split(","))
        at = int(fields["t"])
    except (ValueError, KeyError):
        return False
    fresh = abs(time.time() - at) <= tolerance
    return fresh and hmac.compare_digest(sign(secret, at, body), fields.get("v1", ""))


class Alerts:
    def __init__(
        self,
        settings: Settings,
        store: LedgerStore,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.store, self.clock, self._sleep = store, clock, sleep
        self.webhook = settings.alert_webhook
        self._secret = settings.alert_secret.get_secret_value() if settings.alert_secret else None
        self._checks_in: MemoryObjectSendStream[str] | None = None  # open while `run` runs
        self._posts_in: MemoryObjectSendStream[bytes] | None = None
        self._queued: set[str] = set()
        if self.webhook and not self._secret:
            log.warning("--alert-webhook is set without APIKEY_ALERT_SECRET: alerts are posted unsigned")

    def notice(self, principal: str) -> None:
        """A principal's spending changed: check its thresholds soon. Never blocks, never raises."""
        if principal in self._queued or self._checks_in is None:
            return
        try:
            self._checks_in.send_nowait(principal)
        except (anyio.WouldBlock, anyio.ClosedResourceError):
            log.warning(
                "alerts: %d principals wait to be checked; %s is checked at its next change", MAX_CHECKS, principal
            )
            return
        self._queued.add(principal)

    async def run(self) -> None:
        """Check and deliver until cancelled (in the accounts' task group)."""
        self._checks_in, checks = anyio.create_memory_object_stream[str](MAX_CHECKS)
        self._posts_in, posts = anyio.create_memory_object_stream[bytes](MAX_DELIVERIES)
        try:
            async with anyio.create_task_group() as group, httpx2.AsyncClient(timeout=TIMEOUT) as http:
                group.start_soon(self._deliver_all, http, posts)
                async for principal in checks:
                    self._queued.discard(principal)
                    try:
                        await self.check(principal)
                    except Exception as exc:  # a fault stays local: the next change checks again
                        log.warning("alerts: could not check %s (%s)", principal, exc)
        finally:
            for stream in (self._checks_in, checks, self._posts_in, posts):
                stream.close()
            self._checks_in = self._posts_in = None
            self._queued.clear()  # what was queued is gone with the streams: the next change queues it again

    async def check(self, principal: str) -> list[int]:
        """Claim and send the alerts `principal` has crossed in its current period; the thresholds sent."""
        policy, now = await self.store.policy(principal), self.clock()
        totals = await self.store.totals(principal, now=now)
        used, start, sent = totals.spent + totals.reserved, period_start(policy.period, now), []
        for threshold in policy.thresholds():
            if totals.budget > 0 and used * 100 >= threshold * totals.budget:
                if await self.store.claim_alert(principal, threshold, start):
                    sent.append(threshold)
                    body = {
                        "principal": principal,
                        "budget": totals.budget,
                        "spent": totals.spent,
                        "reserved": totals.reserved,
                        "threshold": threshold,
                        "period": label(policy.period, start),
                    }
                    self._tell(body)
        return sent

    def _tell(self, body: dict[str, object]) -> None:
        log.warning(
            "budget alert: %s has used %d%% or more of its %s-credit budget (%s spent, %s reserved; %s)",
            body["principal"],
            body["threshold"],
            body["budget"],
            body["spent"],
            body["reserved"],
            body["period"],
        )
        count_alert(int(body["threshold"]))  # type: ignore[call-overload]
        if not self.webhook or self._posts_in is None:
            return
        try:
            self._posts_in.send_nowait(json.dumps(body, separators=(",", ":")).encode())
        except anyio.WouldBlock:
            log.warning("alerts: %d alerts wait to be posted; this one is only logged", MAX_DELIVERIES)

    async def _deliver_all(self, http: httpx2.AsyncClient, posts: MemoryObjectReceiveStream[bytes]) -> None:
        async for body in posts:
            await self._deliver(http, body)

    async def _deliver(self, http: httpx2.AsyncClient, body: bytes) -> bool:
        """Post one alert, retrying a failure with backoff; False (logged) if it never got a 2xx."""
        assert self.webhook is not None
        delay, why = FIRST_DELAY, ""
        for attempt in range(ATTEMPTS):
            headers = {"content-type": "application/json"}
            if self._secret:
                headers[SIGNATURE_HEADER] = signature(self._secret, body)
            try:
                answer = await http.post(self.webhook, content=body, headers=headers)
                if answer.is_success:
                    return True
                why = f"HTTP {answer.status_code}"
            except Exception as exc:  # unreachable, or a URL no client takes (InvalidURL; a port out of range fails
                why = type(exc).__name__  # as an OverflowError in the connect's task group): never the worker's end
                if isinstance(exc, ExceptionGroup):
                    why = ", ".join(type(inner).__name__ for inner in exc.exceptions)
            if attempt + 1 < ATTEMPTS:
                await self._sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
        log.warning("alerts: the webhook did not take an alert after %d tries (%s): %s", ATTEMPTS, why, body.decode())
        return False
