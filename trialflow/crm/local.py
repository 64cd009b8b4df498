"""The CRM port without a CRM: ``accounts.csv`` and opportunities kept on the trial."""
from __future__ import annotations

from pathlib import Path

from trialflow.crm.port import AccountsRead, OpportunityFields, Progress, UpsertedOpportunity
from trialflow.services.reference import parse_accounts


class LocalRecords:
    """No CRM configured: accounts from ``accounts.csv``; an opportunity is what the SDR typed in
    Slack, kept on the trial (nothing is sent anywhere and no id is made up)."""

    name = "accounts.csv"

    def __init__(self, config_dir: Path):
        self.config_dir = Path(config_dir)

    def accounts(self, progress: Progress | None = None) -> AccountsRead:
        parsed = parse_accounts(self.config_dir / "accounts.csv", progress)
        return AccountsRead(parsed, len(parsed))

    def upsert_opportunity(self, fields: OpportunityFields) -> UpsertedOpportunity:
        return UpsertedOpportunity(None, False)
