"""Trials changed in a transaction outside the ORM (a Core ``UPDATE trials``): the session notes
them so that ``services.aggregates`` refreshes their aggregates before the same transaction commits."""
from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

KEY = "trialflow.touched_trials"


def touch(session: Session, trial_ids: Iterable[str]) -> None:
    session.info.setdefault(KEY, set()).update(trial_ids)


def take(session: Session) -> list[str]:
    return sorted(session.info.pop(KEY, ()))
