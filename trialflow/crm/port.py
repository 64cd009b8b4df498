"""The CRM port (see ``trialflow.crm``): where named and pre-qualified accounts come from and where opportunities go.

Two adapters: ``trialflow.crm.salesforce.SalesforceCrm`` (the system of record, when
``TRIALFLOW_SALESFORCE_*`` is set) and ``LocalRecords`` (unset: ``accounts.csv``, and opportunities
recorded on the trial only, as typed in Slack). ``crm_for(settings)`` picks one.

Errors are the delivery errors (``trialflow.errors``): ``RetryLater`` for what may pass (an
unreachable server, the org's API allowance used up), ``PermanentFailure`` for what a person must fix.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class OpportunityFields:
    """What trialflow keeps up to date on a trial's Opportunity (keyed by the trial id)."""
    trial_id: str
    name: str
    stage: str
    close_date: date
    account_id: str | None = None          # the CRM's account id, when the account came from it
    owner_email: str | None = None         # the AE; the adapter finds their user
    lead_source: str | None = None
    instance_url: str | None = None
    trial_end: date | None = None
    pql_grade: str | None = None
    activated: bool | None = None
    loss_reason: str | None = None


@dataclass(frozen=True)
class UpsertedOpportunity:
    id: str | None
    created: bool
    url: str | None = None                 # where a person opens it


@dataclass
class AccountsRead:
    """Accounts in ``reference.parse_accounts``'s shape, plus what was left out and why."""
    accounts: list[dict[str, Any]] = field(default_factory=list)
    read: int = 0
    skipped: list[str] = field(default_factory=list)


class Crm(Protocol):
    name: str

    def accounts(self, progress: Progress | None = None) -> AccountsRead: ...

    def upsert_opportunity(self, fields: OpportunityFields) -> UpsertedOpportunity: ...
