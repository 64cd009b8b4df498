"""What keeps a trial's Opportunity in the CRM (Salesforce) up to date: one ``crm.opportunity``
effect per step that changes it, each an upsert by the trial id (``delivery.crm``). Called by
``services.policies`` (one handler per step stays there); pure, like it.

The Opportunity exists from "Converted to Opp" or "Qualify" on; after that the trial's start, an
extension (its new end date), a new PQL grade or activation, the conversion (the won stage) and the
termination (the lost stage, with the reason) each send the whole picture again. An upsert is
idempotent, and the deliverer keeps a trial's upserts in order, so the last one sent is what
Salesforce shows. Without Salesforce nothing is decided here: the opportunity id the SDR typed
stays on the trial, as before.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Protocol

from trialflow.domain import lifecycle as lc
from trialflow.domain.decisions import Decisions
from trialflow.domain.trial import PlainTrial
from trialflow.services import slack_blocks as sb
from trialflow.services.fit import Data
from trialflow.services.messages import account_of, channel_name
from trialflow.services.timers import REVIEW_DAYS
from trialflow.settings import Settings

KIND = "crm.opportunity"
# The steps that create the Opportunity (a qualified lead waiting for capacity counts as qualified).
CREATING = frozenset({lc.QUALIFY, lc.CONVERT_TO_OPPORTUNITY})


class Effects(Protocol):
    out: Decisions

    def add(self, name: str, kind: str, payload: dict[str, Any]) -> None: ...


def has_opportunity(trial: PlainTrial) -> bool:
    return bool(trial.opportunity_id) or any(
        h.trigger in CREATING or (h.trigger == lc.WAIT_FOR_CAPACITY and h.detail.get("qualified"))
        for h in trial.history)


def stage(settings: Settings, trial: PlainTrial) -> str:
    if trial.state == lc.CONVERTED:
        return settings.salesforce_stage_won
    if trial.state == lc.TERMINATED:
        return settings.salesforce_stage_lost
    if trial.state in lc.STARTED:
        return settings.salesforce_stage_started
    return settings.salesforce_stage_qualified


def trial_end(trial: PlainTrial, at: datetime) -> date:
    """The last extension's end, day 15 of a started trial, or 15 days from now before the start."""
    for entry in reversed(trial.history):
        if entry.trigger == lc.EXTEND and entry.detail.get("until"):
            return datetime.fromisoformat(entry.detail["until"]).date()
    return ((trial.started_at or at) + timedelta(days=REVIEW_DAYS)).date()


def upsert(fx: Effects, settings: Settings, trial: PlainTrial, at: datetime, *, reason: str | None = None,
           always: bool = False) -> None:
    """The Opportunity as the trial stands now; ``always``: also when none exists yet (this step creates it)."""
    if not settings.salesforce_configured or not (always or has_opportunity(trial)):
        return
    end = trial_end(trial, at)
    final = trial.state in (lc.CONVERTED, lc.TERMINATED)
    fields: dict[str, Any] = {
        "trial_id": trial.id, "name": f"{account_of(trial)} - Cloud trial", "stage": stage(settings, trial),
        "close_date": (at.date() if final else end).isoformat(), "owner_email": trial.ae,
        "lead_source": settings.salesforce_lead_source, "instance_url": trial.instance_url,
        "trial_end": end.isoformat(), "pql_grade": trial.pql_grade, "activated": trial.last_activity_at is not None,
        "loss_reason": reason if trial.state == lc.TERMINATED else None,
    }
    fx.add("crm-opportunity", KIND, {"ref": f"opportunity:{trial.id}", "domain": trial.domain, "fields": fields})


class _GradeEffects:
    """Keyed by the activity report that moved the grade, not by the grade: a grade that comes back
    (B, C, then B again with no step between) is a change Salesforce must hear too, while the same
    report recorded twice (its duplicate is ignored) never decides it twice."""

    def __init__(self, trial: PlainTrial, out: Decisions, at: datetime, report_at: datetime):
        self.trial, self.out, self.at, self.report_at = trial, out, at, report_at

    def add(self, name: str, kind: str, payload: dict[str, Any]) -> None:
        key = (f"{self.trial.id}:{len(self.trial.history)}:pql-{self.trial.pql_grade or 'none'}"
               f":{self.report_at.isoformat()}:{name}")
        self.out.effect(key, kind, payload, self.at, self.trial.id)


def grade_changed(settings: Settings, trial: PlainTrial, at: datetime, report_at: datetime) -> Decisions:
    """The instance's activity report of ``report_at`` moved the trial's PQL grade (or activated
    it): the Opportunity hears, once per report."""
    out = Decisions()
    upsert(_GradeEffects(trial, out, at, report_at), settings, trial, at)
    return out


def linked(trial: PlainTrial, opportunity_id: str, url: str | None, at: datetime, alerts: str) -> Decisions:
    """Salesforce answered with the Opportunity's id: the account channel gets its link."""
    out = Decisions()
    shown = f"<{url}|{sb.escape(opportunity_id)}>" if url else sb.escape(opportunity_id)
    text = sb.mrkdwn(":briefcase: Salesforce Opportunity {opp} for {account} (trial `{trial}`).",
                     opp=shown, account=Data(account_of(trial)), trial=trial.id)
    channel = "#" + channel_name(trial.account_name) if trial.account_name else alerts
    out.effect(f"{trial.id}:opportunity:{opportunity_id}", "slack.message",
               {"channel": channel, **sb.message(text)}, at, trial.id)
    return out
