"""The operator's spending policy for one principal: a cap per call, allowed models or modalities, a budget
period and an alert threshold. Stored in the ledger with the principal (`admin set-policy`); new principals
get the server's default (`--max-per-call`, `--allow`, `--period`, `--alert-at`).

The checks here run before anything is reserved: the allow-list before the estimate (a refused model costs
not even a price), the cap after it. Each refusal names the rule and who can change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import AgentError
from .periods import PERIODS, iso, period_end, period_start

if TYPE_CHECKING:
    from .config import Settings

MODALITIES = ("image", "video", "music", "chat", "embedding")


class PolicyRefusedError(AgentError):
    """A paid call the spending policy refuses; nothing was reserved or created. The message says why."""

    outcome = "refused_policy"


@dataclass(frozen=True)
class Policy:
    max_per_call: int | None = None  # credits one call may be estimated at, at most
    allow: tuple[str, ...] = ()  # model ids or modalities; empty: every model
    period: str = "none"  # the budget renews each day, week or month (UTC), or never
    alert_at: int | None = None  # percent of the budget at which the operator hears (and at 100%)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", tuple(sorted(set(self.allow))))  # one spelling, as the stores keep it
        if self.max_per_call is not None and self.max_per_call < 0:
            raise ValueError("--max-per-call must be at least 0 credits")
        if self.period not in PERIODS:
            raise ValueError(f"--period must be one of {', '.join(PERIODS)} (got '{self.period}')")
        if self.alert_at is not None and not 1 <= self.alert_at <= 100:
            raise ValueError(f"--alert-at must be a percent from 1 to 100 (got {self.alert_at})")
        if any(not entry or "," in entry for entry in self.allow):
            raise ValueError("--allow takes model ids or modalities, comma-separated")

    @classmethod
    def of(cls, max_per_call: int | None, allow: str | None, period: str | None, alert_at: int | None) -> Policy:
        """From the stored (or flag) form: `allow` comma-separated."""
        entries = tuple(e.strip() for e in (allow or "").split(",") if e.strip())
        return cls(max_per_call, entries, period or "none", alert_at)

    @classmethod
    def default(cls, settings: Settings) -> Policy:
        return cls.of(settings.max_per_call, settings.allow, settings.period, settings.alert_at)

    def row(self) -> tuple[int | None, str | None, str, int | None]:
        """As the stores keep it: max_per_call, allow (comma-separated or NULL), period, alert_at."""
        return self.max_per_call, ",".join(self.allow) or None, self.period, self.alert_at

    def thresholds(self) -> list[int]:
        """The percents of the budget that raise an alert, each once per period."""
        return sorted({self.alert_at, 100}) if self.alert_at is not None else [100]

    def describe(self) -> str:
        parts = [
            f"max {self.max_per_call} credits per call" if self.max_per_call is not None else "no cap per call",
            f"only {', '.join(self.allow)}" if self.allow else "any model",
            f"budget per {self.period}" if self.period != "none" else "no budget period",
            f"alert at {self.alert_at}%" if self.alert_at is not None else "alert at 100%",
        ]
        return "; ".join(parts)

    def view(self) -> dict[str, Any]:
        """As budget_status shows it: what is not set is left out (allow is always there; empty: every model)."""
        view = {"max_per_call": self.max_per_call, "allow": list(self.allow), "alert_at": self.alert_at}
        return {k: v for k, v in view.items() if v is not None}

    def status(self, now: float) -> dict[str, Any]:
        """What budget_status shows of it at `now`: the policy, the period's name, and when it renews (ISO, UTC)."""
        end = period_end(self.period, period_start(self.period, now))
        return {"policy": self.view(), "period": self.period, "resets_at": iso(end) if end is not None else None}


def _changed_by(principal: str, hosted: bool) -> str:
    if hosted:
        return f"the operator of this server can change it (apikey-mcp admin set-policy {principal} ...)"
    return "whoever runs this server can change it (its --max-per-call / --allow settings)"


def check_allowed(policy: Policy, principal: str, model: str, modality: str, *, hosted: bool) -> None:
    """Refuse a model outside the allow-list (a model id or its modality must be on it)."""
    if not policy.allow or model in policy.allow or modality in policy.allow:
        return
    raise PolicyRefusedError(
        f"Not allowed: the spending policy allows only {', '.join(policy.allow)}, not '{model}' ({modality}), "
        f"so nothing was estimated, reserved or created. The rule is the allow-list (--allow); "
        f"{_changed_by(principal, hosted)}. Pick an allowed model (list_models)."
    )


def check_cap(policy: Policy, principal: str, credits: int, purpose: str, *, hosted: bool) -> None:
    """Refuse a call estimated above the cap per call, before anything is reserved or asked."""
    if policy.max_per_call is None or credits <= policy.max_per_call:
        return
    raise PolicyRefusedError(
        f"Over the cap per call: {purpose} is estimated at {credits} credits and the spending policy allows at "
        f"most {policy.max_per_call} per call, so nothing was reserved or created. The rule is the cap per call "
        f"(--max-per-call); {_changed_by(principal, hosted)}. Choose a smaller job or a cheaper model."
    )
