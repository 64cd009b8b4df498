"""Routing a signup (the seed's "First step"), decided from what the database knows about its
email and domain (``Known``, read in one round trip by ``services.signups``):

  public mailbox domain ......................... triage (case 3)
  a domain (or parent) with a live instance ...... case 1: redirect there
  pre-qualified account, fresh domain ............ case 2.1 / 2.2: claim a pool instance
      pool empty or instance cap reached ......... waiting_for_capacity (``services.capacity``)
  anything else .................................. triage (case 3)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.normalize import Email
from trialflow.domain.trial import CASE_EXISTING, CASE_MANUAL, CASE_NAMED, CASE_UNNAMED, SYSTEM, PlainTrial

T = TypeVar("T")
Owner = tuple[str | None, str | None, str | None]  # (account_name, ae, ce) of the trial that claimed a domain

# How a colleague joins the domain's instance (case 1), decided from what is known of it:
JOIN_ACCOUNT = "account"              # a trial instance: trialflow makes their account and emails them its link
JOIN_ADMIN_ACCOUNT = "admin_account"  # its claim is provisional (nobody seen signed in): their own admin account
JOIN_REQUEST = "request"              # a converted or customer instance, or auto-add off: its admin is asked
TRIAL_INSTANCE_STATES = frozenset({lc.ACTIVE, lc.EXTENDED})


@dataclass(frozen=True)
class Instance:
    """What routing knows of a domain's instance: its owning trial's state (None: not a trial's, e.g.
    from instances.csv), its admin of record, and whether that admin was ever seen signed in."""
    owner_state: str | None = None
    admin_email: str | None = None
    provisional: bool = False


@dataclass(frozen=True)
class Claim:
    domain: str
    instance_host: str | None
    trial_id: str | None
    owner: Owner | None
    instance: Instance = Instance()


@dataclass(frozen=True)
class Account:
    domain: str
    account_name: str
    prequalified: bool
    named_account: bool
    named_sdr: str | None
    owner_ae: str | None
    owner_ce: str | None
    auto_add_colleagues: bool = True


@dataclass
class Known:
    """What the database knows about a signup's email and domain."""
    existing: object | None = None  # the email's trial already (a ``signups.SignupResult``)
    claims: dict[str, Claim] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    has_marketing_events: bool = False

    def first(self, found: dict[str, T], candidates: list[str]) -> T | None:
        for domain in candidates:  # most specific first
            if domain in found:
                return found[domain]
        return None


def route(trial: PlainTrial, email: Email, known: Known) -> Account | None:
    """Route ``trial`` as far as ``known`` allows. Returns the pre-qualified account whose pool
    instance it should claim (``capacity.claim_for_domain`` takes it from there), or None when
    routing is done."""
    now = trial.created_at
    if email.is_public:
        trial.case = CASE_MANUAL
        trial.fire(lc.SEND_TO_TRIAGE, actor=SYSTEM, at=now, reason="public email domain")
        return None
    candidates = email.domain_candidates()
    claim = known.first(known.claims, candidates)
    if claim is not None and claim.instance_host:
        join_existing(trial, claim.domain, claim.instance_host, claim.owner, known.accounts.get(claim.domain),
                      claim.instance)
        return None
    account = known.first(known.accounts, candidates)
    if account is None or not account.prequalified:
        trial.case = CASE_MANUAL
        if account is not None:
            trial.account_name = account.account_name
            trial.domain = account.domain
        trial.fire(lc.SEND_TO_TRIAGE, actor=SYSTEM, at=now)
        return None
    trial.domain = account.domain
    trial.account_name = account.account_name
    trial.case = CASE_NAMED if account.named_account else CASE_UNNAMED
    if account.named_account:
        trial.sdr = account.named_sdr
        trial.ae = account.owner_ae
        trial.ce = account.owner_ce
    return account


def needs_claim(email: Email, known: Known) -> bool:
    """Whether routing this signup claims a pool instance (writes more than the trial's rows)."""
    if email.is_public:
        return False
    candidates = email.domain_candidates()
    claim = known.first(known.claims, candidates)
    if claim is not None and claim.instance_host:
        return False
    account = known.first(known.accounts, candidates)
    return account is not None and account.prequalified


def how_to_join(instance: Instance, account: Account | None) -> str:
    """A provisional claim never blocks a real person at the domain: until someone is seen signed
    in, each colleague gets an admin account of their own."""
    if instance.provisional:
        return JOIN_ADMIN_ACCOUNT
    auto_add = account.auto_add_colleagues if account is not None else True
    if instance.owner_state in TRIAL_INSTANCE_STATES and auto_add:
        return JOIN_ACCOUNT
    return JOIN_REQUEST


def join_existing(trial: PlainTrial, domain: str, host: str, owner: Owner | None, account: Account | None,
                  instance: Instance = Instance()) -> None:
    """Case 1: the domain's people are the ones who own its instance (its first trial's, or the account's)."""
    owner_name, owner_ae, owner_ce = owner or (None, None, None)
    trial.case = CASE_EXISTING
    trial.domain = domain
    trial.instance_host = host
    trial.account_name = owner_name or (account.account_name if account else None)
    trial.ae = owner_ae or (account.owner_ae if account else None)
    trial.ce = owner_ce or (account.owner_ce if account else None)
    trial.fire(lc.ROUTE_TO_EXISTING, actor=SYSTEM, at=trial.created_at, instance=host,
               join=how_to_join(instance, account), admin=instance.admin_email)


def join_claimed(session: Session, trial: PlainTrial, domain: str, host: str, owner_trial_id: str | None) -> None:
    """Case 1 found only at claim time (another signup won the domain a moment ago): read its people."""
    t, a, i = tables.trials.c, tables.accounts.c, tables.instances.c
    owner = session.execute(select(t.account_name, t.ae, t.ce, t.state).where(t.id == owner_trial_id)).first() \
        if owner_trial_id else None
    row = session.execute(select(a.account_name, a.owner_ae, a.owner_ce, a.auto_add_colleagues)
                          .where(a.domain == domain)).first()
    account = Account(domain, row.account_name, True, False, None, row.owner_ae, row.owner_ce,
                      bool(row.auto_add_colleagues)) if row else None
    seen = session.execute(select(i.admin_email, i.admin_seen_at).where(i.host == host)).first()
    instance = Instance(owner.state if owner else None, seen.admin_email if seen else None,
                        bool(owner_trial_id) and seen is not None and seen.admin_seen_at is None)
    join_existing(trial, domain, host, (owner.account_name, owner.ae, owner.ce) if owner else None, account, instance)
