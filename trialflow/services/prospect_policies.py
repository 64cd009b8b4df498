"""What the prospect (the person who signed up) is told, by email: the trial's start, a notice 3
days before the day-15 review and the day-30 decision, its extension, conversion and end; a short
onboarding sequence from the CE (AE in cc) while the instance is unused, and check-ins once it is
used (the seed: "after there is usage on the instance, feel free to start checking-in"). Called by
``services.policies``; pure, like it.

Each email is an ``email`` effect (a template of ``trialflow/templates``, which the config
directory's ``templates/`` may override), keyed by the event's place in the history, so a retried
step or a sweep run twice never sends it again. An account whose ``prospect_emails`` is false in
accounts.csv gets none of these (the timers still run; nothing is sent).
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Protocol

from trialflow.domain import lifecycle as lc
from trialflow.domain.decisions import Decisions
from trialflow.domain.trial import Event, PlainTrial
from trialflow.services.messages import account_of
from trialflow.services.timers import (
    CHECK_IN_EVERY_DAYS,
    DEADLINE_NOTICE_DAYS,
    FIRST_CHECK_IN_DAYS,
    ONBOARDING_TIP_DAYS,
    REVIEW_DAYS,
    extension_end,
    review_at,
)

# Every template these emails use (tests/unit checks each exists, and the README lists them).
TEMPLATES = ("trial_started", "trial_review_notice", "trial_ending_notice", "trial_extended", "trial_converted",
             "trial_ended", *(f"onboarding_tip_{n}" for n in range(1, len(ONBOARDING_TIP_DAYS) + 1)), "check_in")


class People(Protocol):
    def by_email(self, email: str | None) -> Any: ...

    def acting_for(self, email: str | None, today: date, fallback: str | None = None) -> str | None: ...


class Effects(Protocol):
    out: Decisions
    event: Event

    def email(self, slot: str, template: str, to: str, *, cc: list[str | None] | None = None,
              sender: str | None = None, **context: Any) -> None: ...


class Prospect:
    """The emails of one event to its trial's prospect; ``on``: the account lets trialflow email them.
    They come from the CE, or while the CE is away from whoever acts for them (their backup, else the
    trial's AE: the same rule as the CE's prompts), signed by that person; ``today``: the event's day."""

    def __init__(self, fx: Effects, people: People, trial: PlainTrial, on: bool, today: date):
        self.fx = fx
        self.people = people
        self.trial = trial
        self.on = on
        self.today = today

    def send(self, slot: str, template: str, **context: Any) -> None:
        if not self.on:
            return
        trial = self.trial
        sender = self.people.acting_for(trial.ce, self.today, fallback=trial.ae) if trial.ce else None
        ce = self.people.by_email(sender)
        ae = self.people.by_email(trial.ae)
        self.fx.email(f"prospect-{slot}", template, trial.email, cc=[trial.ae if trial.ae != sender else None],
                      sender=sender, name=trial.name or "", account=account_of(trial),
                      instance_url=trial.instance_url or "", ce_name=ce.name if ce else "", ce_email=sender or "",
                      ae_name=ae.name if ae else "", **context)


def _day(at: datetime) -> str:
    return f"{at.day} {at:%B %Y}"


def started(p: Prospect, now: datetime) -> None:
    """The trial started (a pool instance claimed, or the hand-off): the first email, and the clocks."""
    trial = p.trial
    start = trial.started_at or now
    review = start + timedelta(days=REVIEW_DAYS)
    p.send("started", "trial_started", review_date=_day(review))
    p.fx.out.schedule(trial.id, lc.ONBOARDING_TIP, start + timedelta(days=ONBOARDING_TIP_DAYS[0]), now)
    p.fx.out.schedule(trial.id, lc.PROSPECT_DEADLINE_NOTICE, review - timedelta(days=DEADLINE_NOTICE_DAYS), now)


def tell_deadline(p: Prospect, event: Event) -> None:
    trial = p.trial
    if event.detail.get("decision") == "day15":
        p.send("review-notice", "trial_review_notice", decision_date=_day(review_at(trial)))
        return
    until = extension_end(trial)
    if until is not None:
        p.send("ending-notice", "trial_ending_notice", decision_date=_day(until))


def extended(p: Prospect, event: Event, until: datetime) -> None:
    p.send("extended", "trial_extended", end_date=_day(until))
    notice = until - timedelta(days=DEADLINE_NOTICE_DAYS)
    if notice > event.at:  # closer than that, the extension's own email gives the date
        p.fx.out.schedule(p.trial.id, lc.PROSPECT_DEADLINE_NOTICE, notice, event.at)
    else:
        p.fx.out.cancel(p.trial.id, lc.PROSPECT_DEADLINE_NOTICE)


def converted(p: Prospect) -> None:
    p.send("converted", "trial_converted")


def ended(p: Prospect, event: Event, feedback_url: str) -> None:
    """Only a trial that had started has an instance to lose: a cancelled request or a place in the
    queue is not a trial's end."""
    if event.from_state in lc.LIVE_TRIAL:
        p.send("ended", "trial_ended", feedback_url=feedback_url)


def onboarding_tip(p: Prospect, event: Event) -> None:
    """The latest tip whose day has come (a sweep that ran late skips the stale ones rather than
    sending them all at once), and the next one, always in the future: a sweep run twice for the
    same moment sends nothing the second time."""
    trial = p.trial
    start = trial.started_at or event.at
    due = [n for n, day in enumerate(ONBOARDING_TIP_DAYS, 1) if start + timedelta(days=day) <= event.at]
    tip = due[-1] if due else 1
    p.send(f"tip-{tip}", f"onboarding_tip_{tip}")
    if tip < len(ONBOARDING_TIP_DAYS):
        p.fx.out.schedule(trial.id, lc.ONBOARDING_TIP, start + timedelta(days=ONBOARDING_TIP_DAYS[tip]), event.at)


def check_in(p: Prospect, event: Event) -> None:
    p.send("check-in", "check_in")
    p.fx.out.schedule(p.trial.id, lc.PROSPECT_CHECK_IN, event.at + timedelta(days=CHECK_IN_EVERY_DAYS), event.at)


def first_use(trial_id: str, now: datetime) -> Decisions:
    """The instance reported its first use since the trial started: check-ins may begin."""
    out = Decisions()
    out.schedule(trial_id, lc.PROSPECT_CHECK_IN, now + timedelta(days=FIRST_CHECK_IN_DAYS), now)
    out.cancel(trial_id, lc.ONBOARDING_TIP)
    return out
