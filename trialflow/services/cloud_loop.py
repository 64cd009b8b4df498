"""Closing the loop with the cloud team: their requests (``tables.cloud_requests``: termination,
trial-extend, license-change, domain-change, pool-replenish issues) are done when the issue is
closed, or when someone comments ``/done`` on it, by a ``cloud`` or ``admin`` member of
staff.csv. The completion is recorded on the request and in the trial's history
(``confirm_request_done``): only then does a termination free its capacity, and a domain change
move the trial to its new host. A request open past ``TRIALFLOW_CLOUD_SLA_HOURS`` is chased on its
issue once a day.

As for the instance-ready signal (``services.github_signals``), nothing in the issue's body is
trusted: the request is the one whose hidden effect marker the body ends with, and only if
trialflow recorded opening exactly that issue number for it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.decisions import Decisions
from trialflow.errors import NotAllowed, NotFound, TransitionRefused
from trialflow.inert import code_span
from trialflow.services import outbox
from trialflow.services.directory import Directory, Person
from trialflow.services.messages import chase_text, issue_body
from trialflow.services.trials import CLOUD_ROLES, Command, get_trial, handle
from trialflow.services.uow import App, UnitOfWork
from trialflow.settings import Settings

log = logging.getLogger("trialflow.interactions")

CHASE_EVERY = timedelta(days=1)
CHASE_BATCH = 100


@dataclass(frozen=True)
class DoneSignal:
    key: str                 # the github.issue effect that opened the issue
    number: int
    login: str
    repo: str | None
    how: str                 # "closed" or "/done"


def _opened_as(session: Session, key: str) -> int | None:
    """The issue number trialflow recorded when it opened the request's issue."""
    o = tables.outbox.c
    result = session.scalar(select(o.result).where(o.key == key, o.kind == "github.issue", o.status == "delivered"))
    number = (result or {}).get("number") if isinstance(result, dict) else None
    return number if isinstance(number, int) else None


def _may_complete(person: Person | None) -> bool:
    return person is not None and person.active and person.role in CLOUD_ROLES


def complete_request(rt: App, uow: UnitOfWork, signal: DoneSignal, delivery_id: str, now: datetime) -> dict[str, Any]:
    """Record the completion a delivery signals (in the caller's transaction). Returns the answer."""
    session = uow.session
    expected_repo = rt.settings.github_repo
    if expected_repo and signal.repo and signal.repo.lower() != expected_repo.lower():
        return {"status": "ignored", "reason": f"the issue is in {signal.repo}, not {expected_repo}"}
    c = tables.cloud_requests.c
    request = session.execute(select(tables.cloud_requests).where(c.key == signal.key)).first()
    if request is None or _opened_as(session, signal.key) != signal.number:
        return {"status": "ignored", "reason": f"issue #{signal.number} is not a request trialflow waits for"}
    if request.completed_at is not None:
        return {"status": "ignored", "reason": f"already completed by {request.completed_by}",
                "trial_id": request.trial_id}
    person = Directory(session).by_github_login(signal.login) if signal.login else None
    if not _may_complete(person):
        log.warning("refused: GitHub user %s may not complete %s", signal.login, signal.key,
                    extra={"trial_id": request.trial_id})
        outbox.enqueue(uow, key=f"github-refused:{delivery_id}", kind="github.comment", now=now,
                       trial_id=request.trial_id, payload={"ref": request.ref, "body": issue_body(
                           f"trialflow did not record this request as done: {code_span(signal.login, 'this user')} is "
                           "not a `cloud` or `admin` member of staff.csv. Someone who is can close the issue or "
                           "comment `/done`.")})
        return {"status": "refused", "reason": f"{signal.login} may not complete cloud requests",
                "trial_id": request.trial_id}
    session.execute(update(tables.cloud_requests).where(c.key == signal.key)
                    .values(completed_at=now, completed_by=signal.login[:64]))
    if request.trial_id:
        detail = {"kind": request.kind, "number": signal.number, "how": signal.how, **(request.detail or {})}
        try:
            with session.begin_nested():
                trial = get_trial(uow, request.trial_id, lock=True)
                done = Command(trial.id, lc.CONFIRM_REQUEST_DONE, signal.login, person, detail)
                handle(uow, rt.settings, now, done, trial)
        except (NotFound, TransitionRefused, NotAllowed) as exc:
            log.warning("%s done, but not recorded on trial %s: %s", signal.key, request.trial_id, exc,
                        extra={"trial_id": request.trial_id})
    log.info("cloud request %s (%s) done: %s by %s", signal.key, request.kind, signal.how, signal.login,
             extra={"trial_id": request.trial_id})
    return {"status": "request_done", "kind": request.kind, "trial_id": request.trial_id, "number": signal.number}


def chase_overdue(session: Session, settings: Settings, now: datetime) -> Decisions:
    """A comment on each request open past the SLA, once a day (with GitHub configured: a dry-run
    issue has nothing to comment on)."""
    decisions = Decisions()
    if settings.github_token is None:
        return decisions
    c = tables.cloud_requests.c
    overdue = session.execute(
        select(tables.cloud_requests).where(c.completed_at.is_(None),
                                            c.requested_at <= now - timedelta(hours=settings.cloud_sla_hours),
                                            (c.chased_at.is_(None)) | (c.chased_at <= now - CHASE_EVERY))
        .order_by(c.requested_at).limit(CHASE_BATCH)).all()
    for request in overdue:
        decisions.effect(f"chase:{request.key}:{now.date()}", "github.comment", {"ref": request.ref, "body": issue_body(
            chase_text(f"{int((now - request.requested_at).total_seconds() // 3600)} hours",
                       f"{settings.cloud_sla_hours:g} hours"))}, now, request.trial_id)
    if overdue:
        session.execute(update(tables.cloud_requests).where(c.key.in_([r.key for r in overdue])).values(chased_at=now))
    return decisions
