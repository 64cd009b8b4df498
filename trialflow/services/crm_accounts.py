"""Named and pre-qualified accounts read from the CRM (Salesforce), written through the one
reference-data loader (``services.reference``): by ``trialflow config load --from salesforce``
(with staff.csv and instances.csv, as a load from files) and every hour on the schedule (accounts
only).

All or nothing: every page is read before anything is written, and the write is one transaction,
so a load that fails half-way (Salesforce unreachable, its API allowance used up) leaves the
accounts as they were.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from trialflow.crm import Crm, crm_for
from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.errors import ConfigError
from trialflow.services.reference import LoadReport, Progress, load_accounts, load_reference_data
from trialflow.services.uow import App

log = logging.getLogger("trialflow.crm")

LAST_LOAD_KEY = "crm_accounts_loaded_at"


def _report_skipped(report: LoadReport, skipped: list[str], source: str) -> None:
    report.warnings[:0] = [f"{source}: left out {s}" for s in skipped[:50]]


def load_from_crm(rt: App, crm: Crm, progress: Progress | None = None, config_dir: Path | None = None) -> LoadReport:
    """``config load --from salesforce``: accounts from the CRM, staff and instances from the files."""
    read = crm.accounts(progress)
    report = load_reference_data(rt.session_factory, config_dir or rt.settings.config_dir, rt.clock.now(), progress,
                                 accounts=read.accounts, accounts_source=crm.name)
    _report_skipped(report, read.skipped, crm.name)
    _mark_loaded(rt, rt.clock.now())
    return report


def load_from_salesforce(rt: App, directory: Path, progress: Progress | None = None) -> tuple[LoadReport, str]:
    """``trialflow config load --from salesforce``: (the report, where it came from)."""
    if not rt.settings.salesforce_configured:
        raise ConfigError("Salesforce is not configured: set TRIALFLOW_SALESFORCE_CLIENT_ID, _USERNAME and "
                          "_PRIVATE_KEY_FILE (see the README), or load accounts.csv without --from")
    report = load_from_crm(rt, crm_for(rt.settings), progress, directory)
    return report, f"Salesforce ({rt.settings.salesforce_login_url}) and {directory}"


def refresh_accounts(rt: App, crm: Crm | None = None, force: bool = False) -> LoadReport | None:
    """On the schedule: the accounts again from the CRM, if it is configured and an hour
    (``salesforce_accounts_every_hours``) has passed since the last load. None: nothing to do."""
    settings = rt.settings
    if not settings.salesforce_configured:
        return None
    now = rt.clock.now()
    if not force and not _due(rt, now):
        return None
    crm = crm or crm_for(settings)
    read = crm.accounts()
    report = load_accounts(rt.session_factory, read.accounts, crm.name)
    _report_skipped(report, read.skipped, crm.name)
    _mark_loaded(rt, now)
    log.info("accounts from %s: %d read, %d added, %d removed, %d changed", crm.name, len(read.accounts),
             len(report.added), len(report.removed), len(report.changed))
    return report


def _due(rt: App, now: datetime) -> bool:
    with rt.session_factory() as session:
        last = session.scalar(select(tables.kv.c.value).where(tables.kv.c.key == LAST_LOAD_KEY))
    if not last:
        return True
    return datetime.fromisoformat(last) + timedelta(hours=rt.settings.salesforce_accounts_every_hours) <= now


def _mark_loaded(rt: App, now: datetime) -> None:
    with rt.session_factory() as session, session.begin():
        if not insert_ignore(session, tables.kv, {"key": LAST_LOAD_KEY, "value": now.isoformat()}):
            session.execute(update(tables.kv).where(tables.kv.c.key == LAST_LOAD_KEY).values(value=now.isoformat()))
