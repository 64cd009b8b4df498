"""The transactional outbox: effects are rows written in the same transaction as the state change."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from trialflow.domain.decisions import Decisions
from trialflow.services.uow import UnitOfWork

# Payload keys whose values are secrets meant for one recipient (a password-reset link):
# never logged, never shown by `trialflow outbox`, never posted to Slack.
SECRET_KEYS = frozenset({"reset_link", "token", "license_key"})


def enqueue(uow: UnitOfWork, *, key: str, kind: str, payload: dict[str, Any], now: datetime,
            trial_id: str | None = None) -> int | None:
    """Add one effect outside a lifecycle step (a delivery failure's notice, a GitHub comment, the
    failsafe's email). A second enqueue with the same idempotency key is a no-op (returns None)."""
    decisions = Decisions()
    decisions.effect(key, kind, payload, now, trial_id)
    ids = uow.persist(decisions)
    return ids[0] if ids else None


def redact(payload: Any) -> Any:
    if isinstance(payload, dict):
        return {k: ("[redacted]" if k in SECRET_KEYS else redact(v)) for k, v in payload.items()}
    if isinstance(payload, list):
        return [redact(v) for v in payload]
    return payload
