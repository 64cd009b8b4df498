"""The CRM port: where named and pre-qualified accounts come from and where opportunities go.

Two adapters: ``trialflow.crm.salesforce.SalesforceCrm`` (the system of record, when
``TRIALFLOW_SALESFORCE_*`` is set) and ``trialflow.crm.local.LocalRecords`` (unset: ``accounts.csv``,
and opportunities recorded on the trial only, as typed in Slack). ``crm_for(settings)`` picks one.

Errors are the delivery errors (``trialflow.errors``): ``RetryLater`` for what may pass (an
unreachable server, the org's API allowance used up), ``PermanentFailure`` for what a person must fix.
"""
from __future__ import annotations

from typing import Any

from trialflow.crm.local import LocalRecords
from trialflow.crm.port import AccountsRead, Crm, OpportunityFields, Progress, UpsertedOpportunity
from trialflow.crm.salesforce import SalesforceCrm

__all__ = ["AccountsRead", "Crm", "LocalRecords", "OpportunityFields", "Progress", "UpsertedOpportunity", "crm_for"]


def crm_for(settings: Any) -> Crm:
    if settings.salesforce_configured:
        return SalesforceCrm(settings)
    return LocalRecords(settings.config_dir)
