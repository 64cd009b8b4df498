"""What the CRM answered about a trial's Opportunity, recorded; and what the CRM transport reads
(``delivery.crm.OpportunityFacts`` on the database). Each call is one short transaction, safe to
run twice: a retried upsert reports the same id again, and only the first report posts its link."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from trialflow.crm.port import UpsertedOpportunity
from trialflow.db import tables
from trialflow.delivery.crm import KIND, Earlier
from trialflow.errors import NotFound
from trialflow.services import opportunity_policies
from trialflow.services.trials import get_trial
from trialflow.services.uow import App


class OpportunityRecorder:
    def __init__(self, rt: App):
        self.rt = rt

    def now(self) -> datetime:
        return self.rt.clock.now()

    def earlier_undelivered(self, effect_id: int, trial_id: str) -> Earlier | None:
        o = tables.outbox
        with self.rt.session_factory() as session:
            row = session.execute(
                select(o.c.id, o.c.status, o.c.next_attempt_at)
                .where(o.c.trial_id == trial_id, o.c.kind == KIND, o.c.id < effect_id, o.c.status != "delivered")
                .order_by(o.c.id).limit(1)).first()
        return Earlier(row.id, row.status, row.next_attempt_at) if row else None

    def account_id(self, domain: str | None) -> str | None:
        if not domain:
            return None
        a = tables.accounts
        with self.rt.session_factory() as session:
            found = session.scalar(select(a.c.crm_account_id).where(a.c.domain == domain))
        return str(found) if found else None

    def recorded(self, trial_id: str, opportunity: UpsertedOpportunity) -> None:
        if not opportunity.id:
            return
        with self.rt.uow() as uow:
            try:
                trial = get_trial(uow, trial_id, lock=True)
            except NotFound:
                return
            if trial.opportunity_id == opportunity.id:
                return  # known already (a retried upsert, or a later update)
            trial.opportunity_id = opportunity.id
            uow.persist(opportunity_policies.linked(trial, opportunity.id, opportunity.url, self.rt.clock.now(),
                                                    self.rt.settings.alerts_channel))
            uow.commit()
