"""A person's step on a trial, taken from Slack: run once, answered politely.

Buttons, forms (``slack_interactions``) and ``/trial domain`` (``slack_commands``) all end in
``run_command``: one short transaction that also records the Slack request's de-duplication key
(``slack_requests``), so a Slack retry changes nothing the second time. A second click on a
button is refused by the lifecycle itself (or, for steps that do not change the state, by
``ONCE_ONLY``) and answered with who did it and when. Who may act is decided by
``trials.authorize`` from staff.csv; a refusal is logged with the trial id and explained to the
person, and nothing changes. Slow work (messages, issues, email) is already in the outbox when
the answer goes back.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import SYSTEM, Trial
from trialflow.errors import InvalidSignup, NotAllowed, NotFound, TransitionRefused
from trialflow.services import slack_blocks as sb
from trialflow.services.directory import Directory, Person
from trialflow.services.trials import Command, get_trial, handle
from trialflow.services.uow import App

log = logging.getLogger("trialflow.interactions")

# Button name (``trial:<name>``) → lifecycle trigger, where they differ.
TRIGGER_OF = {"user_added": lc.CONFIRM_USER_ADDED}
# Steps that leave the state as it is but make sense only once: a second press is "already done".
ONCE_ONLY = lc.ONCE_ONLY

esc = sb.escape


def trigger_of(action: str) -> str:
    return TRIGGER_OF.get(action, action)


def label_of(action: str) -> str:
    return sb.ACTIONS[action][0] if action in sb.ACTIONS else action.replace("_", " ")


@dataclass
class Outcome:
    status: str          # done | duplicate | refused | already | invalid | not_found
    text: str = ""
    field: str | None = None
    trial_state: str | None = None


def claim_request(session: Session, key: str, now: datetime) -> bool:
    """Record a Slack request's key; False when it was already processed (a retry or a replay).

    On PostgreSQL a concurrent insert of the same key waits for the first transaction, then
    finds the row: the retry is answered as a duplicate only once the first one has finished.
    """
    return insert_ignore(session, tables.slack_requests, {"key": key[:200], "received_at": now})


def who(session: Session, actor: str) -> str:
    """How an actor from the history reads in Slack."""
    if actor == SYSTEM:
        return "trialflow (the 15/30-day clock)"
    people = Directory(session)
    if people.by_slack_id(actor):
        return f"<@{actor}>"
    person = people.by_github_login(actor)
    if person:
        return f"{esc(person.name)} (GitHub {esc(actor)})"
    return esc(actor)


def explain_refusal(session: Session, trial: Trial, trigger: str, action: str) -> str:
    """The polite answer to a step the trial has moved past: who did what, and when."""
    same = next((h for h in reversed(trial.history) if h.trigger == trigger), None)
    if same is not None:
        return (f":information_source: Already done: *{label_of(action)}* on {esc(trial.email)}'s trial by "
                f"{who(session, same.actor)} on {same.at:%Y-%m-%d %H:%M} UTC. Nothing changed.")
    moved = next((h for h in reversed(trial.history) if h.from_state != h.to_state), None)
    since = (f" ({moved.trigger.replace('_', ' ')} by {who(session, moved.actor)} on {moved.at:%Y-%m-%d %H:%M} UTC)"
             if moved else "")
    return (f":information_source: Nothing changed: {esc(trial.email)}'s trial is *{trial.state.replace('_', ' ')}*"
            f"{since}, so *{label_of(action)}* no longer applies.")


def no_trial_text(trial_id: str) -> str:
    return f":warning: There is no trial `{esc(trial_id)}` (any more)."


def refused_text(exc: NotAllowed) -> str:
    return f":no_entry: {esc(exc)}. Nothing was changed."


def log_refusal(actor: str, trigger: str, trial_id: str, exc: NotAllowed) -> None:
    log.warning("refused: %s may not %s trial %s: %s", actor, trigger, trial_id, exc, extra={"trial_id": trial_id})


def run_command(rt: App, *, key: str | None, trial_id: str, action: str, actor: str, detail: dict[str, Any],
                person_of: Callable[[Directory], Person | None], keep_key_on_invalid: bool = True) -> Outcome:
    """Run one person's command in one transaction, with its de-duplication key."""
    trigger = trigger_of(action)
    now = rt.clock.now()
    with rt.uow() as uow:
        session = uow.session
        if key is not None and not claim_request(session, key, now):
            log.info("duplicate Slack request %s (retry or replay): nothing to do", key, extra={"trial_id": trial_id})
            return Outcome("duplicate")
        person = person_of(Directory(session))
        try:
            with session.begin_nested():
                trial = get_trial(uow, trial_id, lock=True)
                if trigger in ONCE_ONLY and any(h.trigger == trigger for h in trial.history):
                    raise TransitionRefused(trigger, trial.state)
                handle(uow, rt.settings, now, Command(trial_id, trigger, actor, person, detail))
        except NotFound:
            outcome = Outcome("not_found", no_trial_text(trial_id))
        except NotAllowed as exc:
            log_refusal(actor, trigger, trial_id, exc)
            outcome = Outcome("refused", refused_text(exc))
        except TransitionRefused:
            trial = get_trial(uow, trial_id)
            outcome = Outcome("already", explain_refusal(session, trial, trigger, action), trial_state=trial.state)
        except InvalidSignup as exc:
            outcome = Outcome("invalid", exc.message, field=exc.field)
            if not keep_key_on_invalid:
                return outcome  # rolled back with the key: the person may correct and submit again
        else:
            outcome = Outcome("done", _done_text(trial, action), trial_state=trial.state)
        uow.commit()
        return outcome


def _done_text(trial: Trial, action: str) -> str:
    return (f":white_check_mark: *{label_of(action)}*: done for {esc(trial.email)}"
            f"{f' ({esc(trial.account_name)})' if trial.account_name else ''}. The trial is now "
            f"*{trial.state.replace('_', ' ')}*.")
