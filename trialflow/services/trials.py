"""Commands people (and the clock) give a trial. One handler per command; each runs in one
transaction: load the trial with a row lock, check who may act, take the lifecycle step, write
its effects to the outbox, commit."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.decisions import Decisions
from trialflow.domain.normalize import is_public_domain, normalize_domain
from trialflow.domain.trial import CASE_NAMED, CASE_UNNAMED, SYSTEM, Trial
from trialflow.errors import InvalidSignup, NotAllowed, NotFound, TransitionRefused
from trialflow.services import capacity, policies, rotation
from trialflow.services.calendar import calendar_for
from trialflow.services.directory import Directory, Person
from trialflow.services.timers import EXTENSION_DAYS, review_at
from trialflow.services.uow import App, UnitOfWork
from trialflow.settings import Settings

SDR_ROLES = {"inbound_sdr", "named_sdr", "admin"}
CLOUD_ROLES = {"cloud", "admin"}


@dataclass
class Command:
    trial_id: str
    trigger: str
    actor: str = SYSTEM                 # "system", a Slack user id, or a GitHub login
    person: Person | None = None        # who the actor is in staff.csv
    detail: dict[str, Any] = field(default_factory=dict)
    # trialflow itself (the sweep, capacity promotion). Set only by internal callers, never derived
    # from a name: a GitHub login or Slack id can be anything, including "system".
    internal: bool = False


def get_trial(uow: UnitOfWork, trial_id: str, lock: bool = False) -> Trial:
    stmt = select(Trial).where(tables.trials.c.id == trial_id)
    if lock:
        stmt = stmt.with_for_update()
    trial = uow.session.scalars(stmt).first()
    if trial is None:
        raise NotFound(f"no trial {trial_id}")
    return trial


def authorize(trial: Trial, trigger: str, person: Person | None, actor: str, internal: bool = False,
              covering: bool = False) -> None:
    """Raises NotAllowed unless this person (or trialflow itself, ``internal``) may take this step.
    ``covering``: the person acts for the trial's CE while the CE is away (their backup)."""
    step = lc.STEPS.get(trigger)
    if step is None:
        raise TransitionRefused(trigger, trial.state, known=False)
    if internal:
        return
    if person is None:
        raise NotAllowed(f"{actor} is not in staff.csv, so they cannot take the step '{trigger}'")
    if not person.active:
        raise NotAllowed(f"{person.name} is not an active staff member")
    if person.role == "admin":
        return
    if step.who == "sdr" and person.role in SDR_ROLES:
        return
    if step.who == "owner" and (person.email in (trial.ce, trial.ae) or covering):
        return
    if step.who == "cloud" and person.role in CLOUD_ROLES:
        return
    needed = {"sdr": "an SDR", "owner": "the trial's CE or AE", "cloud": "the cloud team", "system": "trialflow itself"}[step.who]
    raise NotAllowed(f"only {needed} can do this ({trigger}); {person.name} is {person.role}")


def step(uow: UnitOfWork, settings: Settings, now: datetime, cmd: Command, trial: Trial,
         ctx: policies.Context) -> Decisions:
    """Take one command's step on ``trial`` (loaded *and row-locked* by the caller) and return
    what it decided, unwritten: the sweep writes a whole batch's decisions at once."""
    authorize(trial, cmd.trigger, cmd.person, cmd.actor, cmd.internal, _covers(uow, settings, now, trial, cmd.person))
    if not trial.can(cmd.trigger):
        raise TransitionRefused(cmd.trigger, trial.state)
    handler = COMMAND_HANDLERS.get(cmd.trigger)
    if handler is None:  # a routing step: trialflow takes it itself, inside a signup or the queue
        raise TransitionRefused(cmd.trigger, trial.state)
    handler(uow, settings, now, trial, cmd)
    return policies.decide(trial, ctx)


def _covers(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, person: Person | None) -> bool:
    """Whether ``person`` acts for the trial's CE today (the CE is away and they are the backup)."""
    if person is None or not trial.ce or person.email in (trial.ce, trial.ae):
        return False
    today = calendar_for(settings).today(now)
    return Directory(uow.session).acting_for(trial.ce, today, fallback=trial.ae) == person.email


def handle(uow: UnitOfWork, settings: Settings, now: datetime, cmd: Command, trial: Trial | None = None,
           ctx: policies.Context | None = None) -> Trial:
    """One command in the caller's transaction: lock the trial, take its step, write what it decided.
    ``ctx``: a policy context shared across commands of one transaction (its staff lookups are cached)."""
    trial = trial if trial is not None else get_trial(uow, cmd.trial_id, lock=True)
    uow.persist(step(uow, settings, now, cmd, trial, ctx or policies.Context(Directory(uow.session), settings)))
    return trial


def run(rt: App, cmd: Command) -> Trial:
    """One command, one transaction."""
    with rt.uow() as uow:
        trial = handle(uow, rt.settings, rt.clock.now(), cmd)
        uow.commit()
        return trial


def _plain(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, cmd: Command) -> None:
    trial.fire(cmd.trigger, actor=cmd.actor, at=now, **cmd.detail)


NO_CE = "no active CE in staff.csv to assign"


def has_active(session: Session, role: str) -> bool:
    return session.scalar(select(tables.staff.c.email).where(
        tables.staff.c.role == role, tables.staff.c.active.is_(True)).limit(1)) is not None


def account_name_for(trial: Trial) -> str:
    """The account of a lead not in accounts.csv. Never the company the lead typed (a stranger
    typing "Acme Corp" would land in Acme's channel): the domain they proved by their email, or for
    a public mailbox domain (shared by strangers) the address itself. The typed company stays in
    ``trials.company`` for display."""
    return trial.email if is_public_domain(trial.domain) else trial.domain


def _qualify(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, cmd: Command) -> None:
    # The instance request names the CE who hands the instance off: never a blank in their place.
    if not trial.ce and not has_active(uow.session, "ce"):
        raise InvalidSignup(f"{NO_CE}: add one (role ce, active true) and qualify again", "staff")
    if cmd.person is not None:
        trial.sdr = cmd.person.email
    opp = (cmd.detail.get("opportunity_id") or "").strip()
    if opp:
        trial.opportunity_id = opp
    trial.account_name = trial.account_name or account_name_for(trial)
    rotation.assign(uow.session, settings, trial, now, tuple(r for r in ("ae", "ce") if not getattr(trial, r)))
    capacity.lock_capacity(uow.session)
    if not capacity.has_capacity(uow.session, settings):
        trial.fire(lc.WAIT_FOR_CAPACITY, actor=cmd.actor, at=now, reason="instance cap reached", qualified=True, **cmd.detail)
        return
    trial.fire(lc.QUALIFY, actor=cmd.actor, at=now, **cmd.detail)


def _disqualify(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, cmd: Command) -> None:
    reason = (cmd.detail.get("reason") or "").strip()
    if not reason:
        raise InvalidSignup("a disqualification needs a reason", "reason")
    if cmd.person is not None:
        trial.sdr = cmd.person.email
    trial.fire(lc.DISQUALIFY, actor=cmd.actor, at=now, reason=reason)


def _convert_to_opp(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, cmd: Command) -> None:
    opp = (cmd.detail.get("opportunity_id") or "").strip()
    if opp:
        trial.opportunity_id = opp
    if cmd.person is not None and cmd.person.role in SDR_ROLES - {"admin"}:
        trial.sdr = trial.sdr or cmd.person.email
    trial.fire(lc.CONVERT_TO_OPPORTUNITY, actor=cmd.actor, at=now, opportunity_id=trial.opportunity_id)


def _reassign(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, cmd: Command) -> None:
    people = Directory(uow.session)
    before = {"ae": trial.ae, "ce": trial.ce}
    for role in ("ae", "ce"):
        wanted = cmd.detail.get(role)
        if wanted == "next":
            rotation.assign(uow.session, settings, trial, now, (role,))
        elif wanted:
            person = people.by_email(wanted.strip().lower())
            if person is None or person.role != role or not person.active:
                raise InvalidSignup(f"{wanted} is not an active {role.upper()} in staff.csv", role)
            setattr(trial, role, person.email)
    reason = {"reason": cmd.detail["reason"]} if cmd.detail.get("reason") else {}
    # Who was replaced: their Home tab no longer lists the trial (``policies._refresh_homes``).
    replaced = {role: email for role, email in before.items() if email and email != getattr(trial, role)}
    trial.fire(lc.REASSIGN, actor=cmd.actor, at=now, ae=trial.ae, ce=trial.ce, **reason,
               **({"replaced": replaced} if replaced else {}))


def _mark_ready(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, cmd: Command) -> None:
    host = cmd.detail.get("host")
    if not host:
        raise InvalidSignup("the instance's URL or host is needed to mark it ready", "host")
    host = normalize_domain(host.split("://", 1)[-1].split("/", 1)[0])
    trial.instance_host = host  # the instance is registered as live by the step's decisions
    trial.fire(lc.MARK_INSTANCE_READY, actor=cmd.actor, at=now, instance=host)


def _keep(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, cmd: Command) -> None:
    trial.kept = True
    trial.fire(lc.KEEP, actor=cmd.actor, at=now)


def current_end(trial: Trial) -> datetime:
    """When the trial currently ends: the last extension's date, or day 15."""
    for entry in reversed(trial.history):
        if entry.trigger == lc.EXTEND and entry.detail.get("until"):
            return datetime.fromisoformat(entry.detail["until"])
    return review_at(trial)


def _extend(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, cmd: Command) -> None:
    try:
        days = int(cmd.detail.get("days") or EXTENSION_DAYS)
    except (TypeError, ValueError):
        raise InvalidSignup("days must be a whole number", "days") from None
    if not 1 <= days <= 90:
        raise InvalidSignup("an extension is between 1 and 90 days", "days")
    until = current_end(trial) + timedelta(days=days)
    extra = until - review_at(trial)
    # The seed: a 15-day extension needs no license change; anything beyond 15 extra days does.
    license_change = extra > timedelta(days=EXTENSION_DAYS)
    trial.fire(lc.EXTEND, actor=cmd.actor, at=now, days=days, until=until.isoformat(), license_change=license_change,
               **{k: v for k, v in cmd.detail.items() if k not in ("days",)})


def _domain_change(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, cmd: Command) -> None:
    sub = (cmd.detail.get("subdomain") or "").strip().lower()
    if not sub or not all(c.isalnum() or c == "-" for c in sub) or sub.startswith("-") or len(sub) > 63:
        raise InvalidSignup("the new subdomain must be letters, digits and dashes, like acme-corp", "subdomain")
    parent = trial.instance_host.split(".", 1)[1] if trial.instance_host and "." in trial.instance_host else "sourcegraph.com"
    trial.fire(lc.REQUEST_DOMAIN_CHANGE, actor=cmd.actor, at=now, new_host=f"{sub}.{parent}")


def _request_done(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, cmd: Command) -> None:
    detail = {k: v for k, v in cmd.detail.items() if k != "new_host"}
    if detail.get("kind") == "domain-change" and cmd.detail.get("new_host"):
        # The trial follows its instance to the new host; the step's decisions move the instance and its claim.
        detail.update(from_host=trial.instance_host, to_host=cmd.detail["new_host"])
        trial.instance_host = cmd.detail["new_host"]
    trial.fire(lc.CONFIRM_REQUEST_DONE, actor=cmd.actor, at=now, **detail)


def _terminate(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial, cmd: Command) -> None:
    trial.fire(lc.TERMINATE, actor=cmd.actor, at=now, reason=(cmd.detail.get("reason") or "").strip())


# One handler per step a command can take (a test checks that, with the routing steps, this
# covers the lifecycle table exactly once).
COMMAND_HANDLERS: dict[str, Callable[[UnitOfWork, Any, datetime, Trial, Command], None]] = {
    lc.QUALIFY: _qualify,
    lc.DISQUALIFY: _disqualify,
    lc.CONVERT_TO_OPPORTUNITY: _convert_to_opp,
    lc.REASSIGN: _reassign,
    lc.MARK_INSTANCE_READY: _mark_ready,
    lc.KEEP: _keep,
    lc.EXTEND: _extend,
    lc.REQUEST_DOMAIN_CHANGE: _domain_change,
    lc.TERMINATE: _terminate,
    lc.CONFIRM_USER_ADDED: _plain,
    lc.REMIND_USER_ADDED: _plain,
    lc.HAND_OFF: _plain,
    lc.WARN_TERMINATION: _plain,
    lc.REMIND_DECISION: _plain,
    lc.ESCALATE_DECISION: _plain,
    lc.CONVERT: _plain,
    lc.REQUEST_FEEDBACK: _plain,
    lc.TELL_DEADLINE: _plain,
    lc.SEND_ONBOARDING_TIP: _plain,
    lc.CHECK_IN: _plain,
    lc.CHECK_USAGE: _plain,
    lc.ASK_DECISION: _plain,
    lc.CONFIRM_ADMIN: _plain,
    lc.CONFIRM_REQUEST_DONE: _request_done,
    lc.REMIND_TRIAGE: _plain,
    lc.ESCALATE_TRIAGE: _plain,
    lc.CHASE_INSTANCE_REQUEST: _plain,
    lc.REMIND_HAND_OFF: _plain,
    lc.ESCALATE_HAND_OFF: _plain,
}
# Steps trialflow takes while routing a signup or moving the capacity queue, never as a command.
ROUTING_STEPS = frozenset({lc.ROUTE_TO_EXISTING, lc.CLAIM_POOL_INSTANCE, lc.WAIT_FOR_CAPACITY, lc.SEND_TO_TRIAGE,
                           lc.REQUEST_INSTANCE})


def promote_waiting(uow: UnitOfWork, settings: Settings, now: datetime, trial: Trial) -> tuple[bool, Decisions]:
    """Capacity freed: move one waiting trial on. Whether it moved, and what that decided, for the
    caller to write."""
    decisions = Decisions()
    if trial.case in (CASE_NAMED, CASE_UNNAMED):
        decisions.extend(capacity.claim_for_domain(uow.session, settings, trial, now))
        moved = trial.state != lc.WAITING_FOR_CAPACITY
    else:
        capacity.lock_capacity(uow.session)
        if not capacity.has_capacity(uow.session, settings):
            return False, decisions
        trial.fire(lc.REQUEST_INSTANCE, actor=SYSTEM, at=now)
        moved = True
    decisions.extend(policies.decide(trial, policies.Context(Directory(uow.session), settings)))
    return moved, decisions
