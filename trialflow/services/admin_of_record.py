"""The admin of record of a trial instance, and why a claim is provisional until it is known.

Anyone can type an address at a pre-qualified domain; only its owner can follow the link emailed
to it and sign in. So the claim of a pool instance is *provisional* (``instances.admin_seen_at``
is empty) until the instance's API shows someone at the domain signed in: the first one seen
becomes the admin of record (``instances.admin_email``), and the step is recorded in the history
of the trial that owns the instance. Until then every colleague who signs up gets an admin
account of their own (``services.colleagues``), so a squatter's claim never locks a real person out.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.instance_admin import SignIn
from trialflow.domain.trial import SYSTEM
from trialflow.errors import NotFound
from trialflow.services.trials import Command, get_trial, handle

log = logging.getLogger("trialflow.instances")


def belongs_to(email: str | None, domain: str) -> bool:
    """``email`` is an address at ``domain`` or one of its sub-domains."""
    if not email or "@" not in email:
        return False
    at = email.rsplit("@", 1)[1].lower().rstrip(".")
    return at == domain or at.endswith("." + domain)


def note_sign_ins(uow: Any, settings: Any, host: str, signed_in: list[SignIn], at: datetime) -> str | None:
    """Settle the admin of record from who the instance saw signed in (oldest activity first).
    Returns the new admin's email when this answer settled it."""
    i = tables.instances.c
    row = uow.session.execute(select(i.admin_email, i.admin_seen_at, i.trial_id).where(i.host == host)).first()
    if row is None or row.admin_seen_at is not None or not row.trial_id or not signed_in:
        return None
    try:
        trial = get_trial(uow, row.trial_id, lock=True)
    except NotFound:
        return None
    first = next((s for s in signed_in if belongs_to(s.email, trial.domain)), None)
    if first is None or first.email is None:
        return None
    admin = first.email.lower()
    uow.session.execute(update(tables.instances).where(i.host == host).values(admin_email=admin, admin_seen_at=at))
    if trial.can(lc.CONFIRM_ADMIN):
        handle(uow, settings, at, Command(trial.id, lc.CONFIRM_ADMIN, SYSTEM, None,
                                          {"admin": admin, "claimed_by": row.admin_email, "host": host}, internal=True),
               trial)
    log.info("%s: %s signed in and is its admin of record", host, admin, extra={"trial_id": trial.id})
    return admin


def is_provisional(session: Any, host: str) -> bool:
    seen = session.execute(select(tables.instances.c.admin_seen_at).where(tables.instances.c.host == host)).first()
    return seen is not None and seen.admin_seen_at is None
