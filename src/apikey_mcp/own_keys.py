"""Bring-your-own-key: the services of principals who call the gateway with a key of their own, still under
their one budget. The keys live in memory only, at most MAX_OWN_KEYS per principal.

A key new here is first checked with a free call, so a junk key never takes a slot; a key the gateway refused
is refused here for REFUSED_SECONDS without asking again; at the limit, the least recently used key with no
task running gives its slot up. Tasks created with an own key are resumed after a restart only when the
principal brings a key again.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import anyio
from pydantic import SecretStr

from .budget import Reservation
from .config import Settings
from .errors import AgentError
from .gateway import AuthenticationError, GatewayClient, GatewayError, NotFoundError, PermissionDeniedError
from .gateway.models import Task
from .service import Service
from .supervisor import Supervisor
from .windows import WindowLimit

MAX_OWN_KEYS = 4  # per principal: each own key holds a client and its watchers
REFUSED_SECONDS, MAX_REFUSED = 60.0, 1024  # own keys the gateway refused are refused here for a minute
KEY_CHECKS_PER_MINUTE = 10  # per principal: each own key new here costs the gateway a request to check it
KEY_CHECK_TASK = "apikey-mcp-key-check"  # no such task: a good key gets 404, a bad one 401, and nothing is spent


class TooManyKeysError(AgentError):
    pass


class KeyRefusedError(AgentError):
    """An own gateway key the gateway refused, or that could not be checked; the message says which."""


async def _check_key(client: GatewayClient) -> None:
    try:
        await client.get_task(KEY_CHECK_TASK)
    except NotFoundError:
        return
    except (AuthenticationError, PermissionDeniedError) as exc:
        raise KeyRefusedError(f"The gateway refused the key in the own-key header ({exc.code}).") from None
    except GatewayError as exc:
        raise KeyRefusedError(f"Could not check the key in the own-key header ({exc.message}); try again.") from None
    raise KeyRefusedError("The gateway answered a check of the own key oddly; it was not used.")


class OwnKeys:
    """The own-key slots of every principal. `open_service(principal, client)` makes a principal's service with
    that client; `ensure_principal(principal)` makes sure the principal's budget exists in the store."""

    def __init__(
        self,
        settings: Settings,
        supervisor: Supervisor,
        *,
        open_service: Callable[[str, GatewayClient], Service],
        ensure_principal: Callable[[str], Awaitable[object]],
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self._open_service = open_service
        self._ensure_principal = ensure_principal
        self.slots: OrderedDict[tuple[str, str], Service] = OrderedDict()  # (principal, key digest) -> its service
        self.key_checks = WindowLimit(KEY_CHECKS_PER_MINUTE)  # per principal
        self._awaiting_key: dict[str, list[tuple[Task, Reservation]]] = {}
        self._salt = secrets.token_bytes(16)
        self._refused: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key digest -> (when, why)

    def services(self) -> list[Service]:
        return list(self.slots.values())

    def by_principal(self) -> list[tuple[str, Service]]:
        """Every own-key service with its principal."""
        return [(principal, service) for (principal, _), service in self.slots.items()]

    def of(self, principal: str) -> list[Service]:
        return [service for (owner, _), service in self.slots.items() if owner == principal]

    def await_key(self, principal: str, task: Task, reservation: Reservation) -> None:
        """A task made with an own key before a restart: resumed when the principal brings a key again."""
        self._awaiting_key.setdefault(principal, []).append((task, reservation))

    async def aclose(self) -> None:
        """Close every own-key client (at shutdown, after their watchers stopped)."""
        with anyio.CancelScope(shield=True):
            for service in self.slots.values():
                await service.client.aclose()

    async def service(self, principal: str, key: SecretStr) -> Service:
        """The principal's service with its own gateway key, under its one budget. A key new here is first
        checked with a free call, so a junk key never takes one of the MAX_OWN_KEYS slots; at the limit, the
        least recently used key with no task running gives its slot up."""
        slot = (principal, hashlib.blake2b(key.get_secret_value().encode(), key=self._salt, digest_size=16).hexdigest())
        if (service := self.slots.get(slot)) is not None:
            self.slots.move_to_end(slot)
            return service
        if (refused := self._refused.get(slot[1])) is not None and time.monotonic() - refused[0] < REFUSED_SECONDS:
            raise KeyRefusedError(refused[1])  # the gateway is not asked again about a key it just refused
        if wait := self.key_checks.wait(principal):
            raise KeyRefusedError(
                f"Too many new own gateway keys for this principal (at most {KEY_CHECKS_PER_MINUTE} "
                f"checked a minute): try again in {int(wait + 0.999)} s."
            )
        self.key_checks.note(principal)
        client = GatewayClient(
            self.settings.base_url, key, auth_scheme=self.settings.auth_scheme, other_secrets=self.settings.secrets()
        )
        try:
            try:
                await _check_key(client)
            except KeyRefusedError as exc:
                self._refused[slot[1]] = (time.monotonic(), str(exc))
                while len(self._refused) > MAX_REFUSED:
                    self._refused.popitem(last=False)
                raise
            await self._ensure_principal(principal)
            if (service := self.slots.get(slot)) is None:  # unless a concurrent request got there first
                service = self._take_slot(principal, slot, client)
                for task, reservation in self._awaiting_key.pop(principal, []):
                    await service.registry.track(task, reservation.modality, reservation, confirmed=False)
        finally:
            if service is None or service.client is not client:
                await client.aclose()
        return service

    def _take_slot(self, principal: str, slot: tuple[str, str], client: GatewayClient) -> Service:
        mine = [s for s in self.slots if s[0] == principal]  # least recently used first
        if len(mine) >= MAX_OWN_KEYS:
            idle = next((s for s in mine if not self.slots[s].registry.unfinished()), None)
            if idle is None:
                raise TooManyKeysError(
                    f"at most {MAX_OWN_KEYS} own gateway keys per principal, and each has a task "
                    "running: wait for one to finish"
                )
            self.supervisor.spawn(self.slots.pop(idle).client.aclose, name="close an idle own-key client")
        service = self._open_service(principal, client)
        self.slots[slot] = service
        return service
