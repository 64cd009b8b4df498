"""``crm.opportunity`` effects: the trial's Opportunity upserted in the CRM by the trial id.

``{ref, domain, fields: OpportunityFields as JSON}``. The upsert is keyed by the trial id (an
External ID field in Salesforce), so delivering the same effect twice (a worker killed after the
call, an answer lost on the way back) updates the one Opportunity instead of making a second.

Order: a trial's upserts each carry the whole picture, so the last one delivered wins. An effect
therefore waits while an earlier one of its trial is not delivered (retrying, or held by another
worker), and is parked behind one that is parked: retry that one first.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from trialflow.crm.port import Crm, OpportunityFields, UpsertedOpportunity
from trialflow.delivery.core import Effect
from trialflow.errors import PermanentFailure, RetryLater
from trialflow.services.opportunity_policies import KIND

__all__ = ["KIND", "CrmTransport", "Earlier", "OpportunityFacts"]


@dataclass(frozen=True)
class Earlier:
    effect_id: int
    status: str
    next_attempt_at: datetime


class OpportunityFacts(Protocol):
    """Where the transport reads and records (``services.opportunities.OpportunityRecorder``)."""

    def earlier_undelivered(self, effect_id: int, trial_id: str) -> Earlier | None: ...

    def account_id(self, domain: str | None) -> str | None: ...

    def recorded(self, trial_id: str, opportunity: UpsertedOpportunity) -> None: ...

    def now(self) -> datetime: ...


class CrmTransport:
    def __init__(self, crm: Crm, facts: OpportunityFacts):
        self.crm = crm
        self.facts = facts

    def deliver(self, effect: Effect) -> dict[str, Any]:
        if effect.kind != KIND:
            raise PermanentFailure(f"the CRM transport does not know effect kind {effect.kind}")
        if effect.trial_id:
            self._wait_for_earlier(effect)
        fields = _fields(effect.payload, self.facts.account_id(effect.payload.get("domain")))
        opportunity = self.crm.upsert_opportunity(fields)
        if effect.trial_id and opportunity.id:
            self.facts.recorded(effect.trial_id, opportunity)
        return {"crm": self.crm.name, "id": opportunity.id, "created": opportunity.created, "url": opportunity.url,
                "stage": fields.stage}

    def _wait_for_earlier(self, effect: Effect) -> None:
        assert effect.trial_id is not None
        earlier = self.facts.earlier_undelivered(effect.id, effect.trial_id)
        if earlier is None:
            return
        if earlier.status == "failed":
            raise PermanentFailure(f"an earlier update of this Opportunity (effect {earlier.effect_id}) is parked: "
                                   f"retry it first (`trialflow outbox retry {earlier.effect_id}`), then this one")
        wait = max((earlier.next_attempt_at - self.facts.now()).total_seconds(), 0.0) + 0.5
        raise RetryLater(f"waits for effect {earlier.effect_id}, an earlier update of this Opportunity", wait)


def _day(value: Any) -> date | None:
    return date.fromisoformat(value) if value else None


def _fields(payload: dict[str, Any], account_id: str | None) -> OpportunityFields:
    f = payload["fields"]
    close = _day(f.get("close_date"))
    if close is None:
        raise PermanentFailure("a crm.opportunity effect without a close date")
    return OpportunityFields(
        trial_id=str(f["trial_id"]), name=str(f["name"]), stage=str(f["stage"]), close_date=close,
        account_id=account_id, owner_email=f.get("owner_email"), lead_source=f.get("lead_source"),
        instance_url=f.get("instance_url"), trial_end=_day(f.get("trial_end")), pql_grade=f.get("pql_grade"),
        activated=f.get("activated"), loss_reason=f.get("loss_reason"))
