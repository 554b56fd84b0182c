"""The sandbox's wallets: one per API key, whose credits chat and embeddings take at once and media tasks
reserve, then settle on success or release on failure."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SandboxError


@dataclass
class Wallet:
    """A key's credits; `reserved` is held by unfinished tasks, so `available` is what a new call may spend."""

    balance: int
    reserved: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    def charge(self, cost: int) -> None:
        """Take `cost` now (chat, embeddings), or refuse with the gateway's 402."""
        self._refuse_beyond_available(cost)
        self.balance -= cost

    def reserve(self, cost: int) -> None:
        """Hold `cost` for a task that has not ended, or refuse with the gateway's 402."""
        self._refuse_beyond_available(cost)
        self.reserved += cost

    def settle(self, amount: int) -> None:
        """A reserved task succeeded: its hold becomes a charge."""
        self.reserved -= amount
        self.balance -= amount

    def release(self, amount: int) -> None:
        """A reserved task failed or was forgotten: its hold is given back."""
        self.reserved -= amount

    def _refuse_beyond_available(self, cost: int) -> None:
        if self.available < cost:
            raise SandboxError(402, "insufficient_credits", "Insufficient credits")


__all__ = ["Wallet"]
