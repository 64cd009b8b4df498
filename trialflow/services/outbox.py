"""The transactional outbox: effects are rows written in the same transaction as the state change."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from trialflow.db import tables
from trialflow.services.uow import UnitOfWork

# Payload keys whose values are secrets meant for one recipient (a password-reset link):
# never logged, never shown by `trialflow outbox`, never posted to Slack.
SECRET_KEYS = frozenset({"reset_link", "token", "license_key"})


# Built once: the values are bound per call. Building the statement with them (``.values(...)``)
# made SQLAlchemy construct it and compute its cache key on every enqueue.
_INSERT = {
    dialect: module.insert(tables.outbox).on_conflict_do_nothing(index_elements=["key"]).returning(tables.outbox.c.id)
    for dialect, module in (("postgresql", postgresql), ("sqlite", sqlite))
}


def enqueue(uow: UnitOfWork, *, key: str, kind: str, payload: dict[str, Any], now: datetime,
            trial_id: str | None = None) -> int | None:
    """Add one effect. A second enqueue with the same idempotency key is a no-op (returns None)."""
    batch = getattr(uow, "batched_writes", None)
    if batch is not None:  # the sweep writes a whole batch's effects in one statement (services/sweep.py)
        batch.effect(dict(key=key, kind=kind, payload=payload, trial_id=trial_id, status="pending", attempts=0,
                          next_attempt_at=now, created_at=now))
        return None
    effect_id = uow.session.execute(_INSERT[uow.session.get_bind().dialect.name], dict(
        key=key, kind=kind, payload=payload, trial_id=trial_id, status="pending", attempts=0,
        next_attempt_at=now, created_at=now,
    )).scalar()
    if effect_id is not None:
        uow.new_effect_ids.append(effect_id)
    return effect_id


def redact(payload: Any) -> Any:
    if isinstance(payload, dict):
        return {k: ("[redacted]" if k in SECRET_KEYS else redact(v)) for k, v in payload.items()}
    if isinstance(payload, list):
        return [redact(v) for v in payload]
    return payload
