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
from typing import Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.normalize import Email
from trialflow.domain.trial import CASE_EXISTING, CASE_MANUAL, CASE_NAMED, CASE_UNNAMED, SYSTEM, PlainTrial

T = TypeVar("T")
Owner = tuple[str | None, str | None, str | None]  # (account_name, ae, ce) of the trial that claimed a domain


@dataclass(frozen=True)
class Claim:
    domain: str
    instance_host: str | None
    trial_id: str | None
    owner: Owner | None


@dataclass(frozen=True)
class Account:
    domain: str
    account_name: str
    prequalified: bool
    named_account: bool
    named_sdr: str | None
    owner_ae: str | None
    owner_ce: str | None


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
        join_existing(trial, claim.domain, claim.instance_host, claim.owner, known.accounts.get(claim.domain))
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


class AccountOwners(Protocol):
    """An account's name and owners: an ``Account``, or a row of the accounts table."""

    @property
    def account_name(self) -> str | None: ...

    @property
    def owner_ae(self) -> str | None: ...

    @property
    def owner_ce(self) -> str | None: ...


def join_existing(trial: PlainTrial, domain: str, host: str, owner: Owner | None, account: AccountOwners | None) -> None:
    """Case 1: the domain's people are the ones who own its instance (its first trial's, or the account's)."""
    owner_name, owner_ae, owner_ce = owner or (None, None, None)
    trial.case = CASE_EXISTING
    trial.domain = domain
    trial.instance_host = host
    trial.account_name = owner_name or (account.account_name if account else None)
    trial.ae = owner_ae or (account.owner_ae if account else None)
    trial.ce = owner_ce or (account.owner_ce if account else None)
    trial.fire(lc.ROUTE_TO_EXISTING, actor=SYSTEM, at=trial.created_at, instance=host)


def join_claimed(session: Session, trial: PlainTrial, domain: str, host: str, owner_trial_id: str | None) -> None:
    """Case 1 found only at claim time (another signup won the domain a moment ago): read its people."""
    t, a = tables.trials.c, tables.accounts.c
    owner = session.execute(select(t.account_name, t.ae, t.ce).where(t.id == owner_trial_id)).first() \
        if owner_trial_id else None
    account = session.execute(select(a.account_name, a.owner_ae, a.owner_ce).where(a.domain == domain)).first()
    join_existing(trial, domain, host, tuple(owner) if owner else None, account)
