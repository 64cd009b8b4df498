"""Routing a signup inside the request (the seed's "First step"), answered in the same call.

  public mailbox domain ......................... triage (case 3)
  a domain (or parent) with a live instance ...... case 1: redirect there
  pre-qualified account, fresh domain ............ case 2.1 / 2.2: claim a pool instance
      pool empty or instance cap reached ......... waiting_for_capacity
  anything else .................................. triage (case 3)
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import delete, func, insert, select, update

from trialflow.db import tables
from trialflow.db.sql import insert_ignore, take_lock
from trialflow.domain import lifecycle as lc
from trialflow.domain.normalize import Email, normalize_email
from trialflow.domain.trial import (CASE_EXISTING, CASE_MANUAL, CASE_NAMED, CASE_UNNAMED, SYSTEM, Trial,
                                    new_trial_id)
from trialflow.errors import InvalidSignup
from trialflow.scoring import attach_marketing_events
from trialflow.services import outbox, policies
from trialflow.services.directory import next_in_rotation
from trialflow.services.uow import UnitOfWork

log = logging.getLogger("trialflow.signups")

MESSAGES = {
    lc.JOINING_EXISTING: "{domain} already has a Sourcegraph instance: we are taking you there. "
                         "Its admin may need to add you; we have let your account team know.",
    lc.ACTIVE: "Your Sourcegraph instance is ready. Check {email} for a link to set your password.",
    lc.WAITING_FOR_CAPACITY: "Thanks! We are reviewing your request; we will email you as soon as your instance is ready.",
    lc.TRIAGE: "Thanks! We are reviewing your request and will get back to you by email shortly.",
}
CAPACITY_LOCK = "capacity"


@dataclass
class SignupInput:
    email: Any
    name: str | None = None
    company: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class SignupResult:
    """What the signup page is told; a snapshot, so it outlives the transaction."""
    trial_id: str
    case: str | None
    state: str
    domain: str
    email: str
    instance_url: str | None
    created: bool

    @classmethod
    def of(cls, trial: Trial, created: bool) -> "SignupResult":
        return cls(trial.id, trial.case, trial.state, trial.domain, trial.email, trial.instance_url, created)

    @property
    def message(self) -> str:
        template = MESSAGES.get(self.state, "Thanks! We have your request.")
        return template.format(domain=self.domain, email=self.email)

    @property
    def redirect_url(self) -> str | None:
        if self.state in (lc.JOINING_EXISTING, lc.ACTIVE) and self.instance_url:
            return f"{self.instance_url}/sign-in"
        return None


def _clean(value: Any, field: str, limit: int = 200) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidSignup(f"{field} must be text.", field)
    value = value.strip()
    if len(value) > limit:
        raise InvalidSignup(f"{field} is too long ({limit} characters at most).", field)
    return value or None


_RESULT_COLUMNS = (tables.trials.c.id, tables.trials.c.case, tables.trials.c.state, tables.trials.c.domain,
                   tables.trials.c.email, tables.trials.c.instance_host)


def find_by_email(uow: UnitOfWork, address: str) -> SignupResult | None:
    row = uow.session.execute(select(*_RESULT_COLUMNS).where(tables.trials.c.email == address)).first()
    if row is None:
        return None
    return SignupResult(row.id, row.case, row.state, row.domain, row.email,
                        f"https://{row.instance_host}" if row.instance_host else None, created=False)


def submit_signup(uow_factory, settings, clock, data: SignupInput) -> SignupResult:
    """Route one signup and commit it with its effects, in one transaction.

    The trial is routed as a plain object and written with Core statements at the end: a signup
    is the hottest path of the service, and the ORM's unit of work costs more here than the
    routing itself. Inserting the trial row with ON CONFLICT (email) DO NOTHING is the per-email
    lock: a second request for the same email waits for the first to commit, inserts nothing,
    rolls back whatever it routed and answers with the first one's trial.
    """
    email = normalize_email(data.email)
    name = _clean(data.name, "name")
    company = _clean(data.company, "company")
    source = _clean(data.source, "source", 100)
    with uow_factory() as uow:
        existing = find_by_email(uow, email.address)
        if existing is not None:
            return existing
        now = clock.now()
        trial = Trial(new_trial_id(), email.address, email.domain, now, name=name, company=company, source=source)
        _route(uow, settings, trial, email)
        # Marketing actions seen before the signup count now, so the triage alert shows the score.
        attach_marketing_events(uow.session, trial)
        if not _insert_trial(uow, trial):
            uow.rollback()
            existing = find_by_email(uow, email.address)
            if existing is None:  # the other request's trial vanished again: not a race we can answer
                raise RuntimeError(f"signup of {email.address} conflicted with a trial that no longer exists")
            return existing
        policies.apply(uow, trial, settings)
        uow.commit()
        return SignupResult.of(trial, created=True)


def _insert_trial(uow: UnitOfWork, trial: Trial) -> bool:
    """Write the routed trial and its history; False when the email already has a trial."""
    values = {column.name: getattr(trial, column.name) for column in tables.trials.columns
              if column.name not in ("kept", "mql_points")}
    values["kept"] = bool(trial.kept)
    values["mql_points"] = trial.mql_points or 0
    values["id"] = trial.id
    if not insert_ignore(uow.session, tables.trials, values, index_elements=["email"]):
        return False
    uow.session.execute(insert(tables.trial_history), [
        {"trial_id": trial.id, "from_state": h.from_state, "to_state": h.to_state, "trigger": h.trigger,
         "actor": h.actor, "at": h.at, "detail": h.detail}
        for h in trial.history
    ])
    return True


def _first_match(uow: UnitOfWork, table, column, candidates: list[str], *columns):
    if len(candidates) == 1:
        condition = column == candidates[0]
    else:
        condition = column.in_(candidates)
    rows = {r._mapping[column.name]: r for r in uow.session.execute(select(*(columns or (table,))).where(condition))}
    for domain in candidates:  # most specific first
        if domain in rows:
            return rows[domain]
    return None


def _route(uow: UnitOfWork, settings, trial: Trial, email: Email) -> None:
    now = trial.created_at
    if email.is_public:
        trial.case = CASE_MANUAL
        trial.fire("send_to_triage", actor=SYSTEM, at=now, reason="public email domain")
        return
    candidates = email.domain_candidates()
    claims = tables.domain_claims.c
    claim = _first_match(uow, tables.domain_claims, claims.domain, candidates,
                         claims.domain, claims.instance_host, claims.trial_id)
    if claim is not None and claim.instance_host:
        _join_existing(uow, trial, claim.domain, claim.instance_host, claim.trial_id)
        return
    account = _first_match(uow, tables.accounts, tables.accounts.c.domain, candidates)
    if account is None or not account.prequalified:
        trial.case = CASE_MANUAL
        if account is not None:
            trial.account_name = account.account_name
            trial.domain = account.domain
        trial.fire("send_to_triage", actor=SYSTEM, at=now)
        return
    trial.domain = account.domain
    trial.account_name = account.account_name
    trial.case = CASE_NAMED if account.named_account else CASE_UNNAMED
    if account.named_account:
        trial.sdr = account.named_sdr
        trial.ae = account.owner_ae
        trial.ce = account.owner_ce
    claim_for_domain(uow, settings, trial, now, assign=_assign_by_rotation)


def _join_existing(uow, trial: Trial, domain: str, host: str, owner_trial_id: str | None) -> None:
    """Case 1: the domain's people are the ones who own its instance (its first trial's, or the account's)."""
    t, a = tables.trials.c, tables.accounts.c
    owner = uow.session.execute(select(t.account_name, t.ae, t.ce).where(t.id == owner_trial_id)).first() \
        if owner_trial_id else None
    account = uow.session.execute(select(a.account_name, a.owner_ae, a.owner_ce).where(a.domain == domain)).first() \
        if owner is None or not (owner.account_name and owner.ae and owner.ce) else None
    trial.case = CASE_EXISTING
    trial.domain = domain
    trial.instance_host = host
    trial.account_name = (owner.account_name if owner else None) or (account.account_name if account else None)
    trial.ae = (owner.ae if owner else None) or (account.owner_ae if account else None)
    trial.ce = (owner.ce if owner else None) or (account.owner_ce if account else None)
    trial.fire("route_to_existing", actor=SYSTEM, at=trial.created_at, instance=host)


def _assign_by_rotation(uow, trial: Trial) -> None:
    """AE and CE from the round robin, for whoever the account does not name."""
    if not trial.ae:
        trial.ae = next_in_rotation(uow.session, "ae")
    if not trial.ce:
        trial.ce = next_in_rotation(uow.session, "ce")


def has_capacity(uow: UnitOfWork, settings) -> bool:
    holding = uow.session.scalar(
        select(func.count()).select_from(tables.trials).where(tables.trials.c.state.in_(lc.HOLDING_INSTANCE)))
    return holding < settings.instance_cap


def claim_for_domain(uow: UnitOfWork, settings, trial: Trial, now,
                     assign: Callable[[UnitOfWork, Trial], None] | None = None) -> None:
    """Give ``trial`` its domain's instance: the one already claimed, or a fresh pool instance.

    Inserting the domain's claim row is the per-domain lock: on PostgreSQL a concurrent insert of
    the same domain waits until this transaction ends, then finds the row and joins (case 1).
    ``assign`` runs only once this trial has won the domain, so the signups that lose a race for
    it (and join the winner's instance) never use up a turn of the round robin.
    Locks, always in this order: the domain's claim, the round robin, the capacity lock.
    """
    if not insert_ignore(uow.session, tables.domain_claims,
                         {"domain": trial.domain, "instance_host": None, "trial_id": trial.id, "claimed_at": now}):
        claim = uow.session.execute(select(tables.domain_claims).where(tables.domain_claims.c.domain == trial.domain)).first()
        if claim is not None and claim.instance_host:
            _join_existing(uow, trial, claim.domain, claim.instance_host, claim.trial_id)
            return
        _wait(trial, now, "another signup of this domain is waiting for capacity")
        return
    if assign is not None:
        assign(uow, trial)
    take_lock(uow.session, CAPACITY_LOCK)
    host = None
    if has_capacity(uow, settings):
        host = uow.session.scalar(
            select(tables.instances.c.host).where(tables.instances.c.status == "pool")
            .order_by(tables.instances.c.host).limit(1).with_for_update(skip_locked=True))
    if host is None:
        uow.session.execute(delete(tables.domain_claims).where(tables.domain_claims.c.domain == trial.domain))
        _wait(trial, now, "instance cap reached" if not has_capacity(uow, settings) else "pool empty")
        return
    uow.session.execute(update(tables.instances).where(tables.instances.c.host == host).values(
        status="live", admin_email=trial.email, trial_id=trial.id, claimed_at=now))
    uow.session.execute(update(tables.domain_claims).where(tables.domain_claims.c.domain == trial.domain)
                        .values(instance_host=host))
    trial.instance_host = host
    trial.fire("claim_pool_instance", actor=SYSTEM, at=now, instance=host)
    _check_pool_low_water(uow, settings, now)


def _wait(trial: Trial, now, reason: str) -> None:
    if trial.state == lc.WAITING_FOR_CAPACITY:
        return  # already in the queue: stays there, nothing new to record
    trial.fire("wait_for_capacity", actor=SYSTEM, at=now, reason=reason)


def _check_pool_low_water(uow: UnitOfWork, settings, now) -> None:
    free = uow.session.scalar(select(func.count()).select_from(tables.instances).where(tables.instances.c.status == "pool"))
    if free >= settings.pool_low_water:
        return
    # One request per low-water episode, not one per claim: the flag is cleared when config
    # load brings new pool instances.
    if not insert_ignore(uow.session, tables.kv, {"key": "pool_replenish_open", "value": now.isoformat()}):
        return
    episode = now.strftime("%Y%m%dT%H%M%S")
    outbox.enqueue(uow, key=f"pool-replenish:{episode}", kind="github.issue", now=now, payload={
        "issue_kind": "pool-replenish", "ref": f"pool-replenish:{episode}",
        "title": f"Pre-provision more cloud trial instances ({free} left in the pool)",
        "body": f"The pool of pre-provisioned trial instances is at {free}, below its low-water mark of "
                f"{settings.pool_low_water}. Please pre-provision more and add them to instances.csv with status `pool`.\n\n"
                f"<!-- trialflow:pool-replenish:{episode} -->",
        "labels": ["cloud-trial", "pool-replenish"],
    })


def keep_failed_signup(uow_factory, settings, clock, body: bytes, error: BaseException) -> None:
    """The failsafe: routing failed, so keep the raw signup and queue an email to support.

    ``uow_factory`` is the same one the signup used (``Runtime.uow``), so the support email is
    woken for delivery as soon as it is committed, like any other effect.
    """
    now = clock.now()
    text = body.decode("utf-8", "replace")
    with uow_factory() as uow:
        row_id = uow.session.execute(tables.failed_signups.insert().values(
            received_at=now, body=text, error=f"{type(error).__name__}: {error}").returning(tables.failed_signups.c.id)).scalar_one()
        try:
            submitted = json.loads(text)
        except ValueError:
            submitted = {"raw": text[:2000]}
        outbox.enqueue(uow, key=f"failed-signup:{row_id}", kind="email", now=now, payload={
            "template": "support_failsafe", "to": settings.support_email, "cc": [], "from": None,
            "context": {"signup": json.dumps(submitted, indent=2, default=str)[:4000], "error": type(error).__name__,
                        "failed_signup_id": row_id},
        })
        uow.commit()
    log.error("signup failed and was kept for support (failed_signups.id=%s): %s", row_id, type(error).__name__)
