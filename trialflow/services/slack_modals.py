"""The forms behind the Qualify, Disqualify, Reassign and Extend buttons (Block Kit modals), both ways:
``build_modal`` draws one, ``detail_from_view`` reads a submitted one into the command's detail.

A modal's ``callback_id`` is ``trial:<action>`` and its ``private_metadata`` carries the trial id
and the button's ``response_url`` (to confirm in the channel once the modal is submitted).
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import Trial
from trialflow.errors import InvalidSignup
from trialflow.services import fit as limits
from trialflow.services import slack_blocks as sb
from trialflow.services.directory import Directory
from trialflow.services.fit import Data
from trialflow.services.slack_payloads import StateValue
from trialflow.services.timers import EXTENSION_DAYS
from trialflow.services.trials import current_end

# The buttons that open a form instead of running their step at once.
MODAL_ACTIONS = (lc.QUALIFY, lc.DISQUALIFY, lc.REASSIGN, lc.EXTEND)

# The seed asks SDRs to disqualify "against the qualification criteria"; these are the reasons
# the Disqualify modal offers (value → what the history and the alert say).
DISQUALIFICATION_REASONS = {
    "not_a_company": "Not a company: personal, student or hobby project",
    "too_small": "Too small for a managed cloud instance",
    "needs_self_hosted": "Needs self-hosting (code on-premises, air-gapped, compliance)",
    "competitor": "Competitor, partner or researcher",
    "spam": "Spam or fake details",
    "existing_customer": "Existing customer: route to the account team",
    "other": "Other (see note)",
}
EXTENSION_CHOICES = (7, 15, 30, 45, 60, 90)
# What the forms let a person type (Slack enforces ``max_length`` in the form; the submission is checked again).
NOTE_MAX = 500
REASON_MAX = 300
OPPORTUNITY_MAX = 64
# An InvalidSignup's field → the block whose input Slack marks as wrong.
FIELD_BLOCK = {"opportunity_id": "opportunity_id", "reason": "reason", "note": "note", "ae": "ae", "ce": "ce",
               "days": "days"}

esc = sb.escape


def _option(text: str, value: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": limits.shorten(text, limits.SLACK_OPTION_TEXT)}, "value": value}


def _input(block_id: str, label: str, element: dict[str, Any], optional: bool = False, hint: str | None = None) -> dict[str, Any]:
    block = {"type": "input", "block_id": block_id, "optional": optional,
             "label": {"type": "plain_text", "text": label}, "element": {"action_id": "value", **element}}
    if hint:
        block["hint"] = {"type": "plain_text", "text": hint}
    return block


def _select(options: list[dict[str, Any]], initial: str | None = None, placeholder: str = "Choose") -> dict[str, Any]:
    element = {"type": "static_select", "options": options, "placeholder": {"type": "plain_text", "text": placeholder}}
    chosen = next((o for o in options if o["value"] == initial), None)
    if chosen:
        element["initial_option"] = chosen
    return element


def build_modal(session: Session, name: str, trial: Trial, response_url: str | None,
                salesforce: bool = False) -> dict[str, Any]:
    """The form behind a button. ``callback_id`` says which step; ``private_metadata`` which trial.
    ``salesforce``: the Opportunity is Salesforce's to create, so nobody types its id."""
    lead = sb.mrkdwn("*{name}* {email} · {account}", name=Data(trial.name or trial.email), email=esc(trial.email),
                     account=Data(trial.account_name or trial.domain, keep_end=True))
    score = f"MQL {trial.mql_points or 0} pts · PQL grade {trial.pql_grade or '-'}"
    blocks: list[dict[str, Any]] = [sb.section(lead), sb.context(score)]
    if name == lc.QUALIFY:
        title, submit = "Qualify lead", "Qualify"
        if salesforce:
            blocks.append(sb.context("Converting to Opp is part of qualifying: trialflow creates the Opportunity in "
                                     "Salesforce and posts its link in the account channel."))
        else:
            blocks.append(_input("opportunity_id", "Salesforce opportunity id",
                                 {"type": "plain_text_input", "max_length": OPPORTUNITY_MAX}, optional=True,
                                 hint="Converting to Opp is part of qualifying; leave empty if it is not created yet."))
        blocks.append(sb.context("Qualifying assigns an AE and a CE by round robin, creates the account channel, "
                                 "raises the instance request with the CE's email, and sends the welcome email."))
    elif name == lc.DISQUALIFY:
        title, submit = "Disqualify lead", "Disqualify"
        blocks.append(_input("reason", "Reason (qualification criteria)",
                             _select([_option(text, value) for value, text in DISQUALIFICATION_REASONS.items()])))
        blocks.append(_input("note", "Note", {"type": "plain_text_input", "multiline": True, "max_length": NOTE_MAX},
                             optional=True))
        blocks.append(sb.context("The lead gets an email recommending a self-hosted Sourcegraph instance."))
    elif name == lc.REASSIGN:
        title, submit = "Reassign AE / CE", "Reassign"
        people = Directory(session)
        for role in ("ae", "ce"):
            staff = session.execute(select(tables.staff.c.email, tables.staff.c.name).where(
                tables.staff.c.role == role, tables.staff.c.active.is_(True)).order_by(tables.staff.c.name)).all()
            # An option's value is at most 150 characters: a longer address cannot be offered.
            options = [_option(f"{n} ({e})", e) for e, n in staff if len(e) <= limits.SLACK_OPTION_VALUE][:99]
            options.append(_option("Next in the round robin", "next"))
            current = getattr(trial, role)
            person = people.by_email(current)
            now = limits.shorten(f"Now: {person.name if person else current or 'nobody'}", limits.SLACK_INPUT_HINT)
            blocks.append(_input(role, role.upper(), _select(options, current), optional=True, hint=now))
    elif name == lc.EXTEND:
        title, submit = "Extend trial", "Extend"
        end = _trial_end(trial)
        blocks.append(_input("days", "Extend by", _select([_option(f"{d} days", str(d)) for d in EXTENSION_CHOICES],
                                                          str(EXTENSION_DAYS)),
                             hint=f"Today it ends on {end:%Y-%m-%d}. More than {EXTENSION_DAYS} extra days "
                                  "also raises a license change request." if end else None))
        blocks.append(_input("reason", "Why", {"type": "plain_text_input", "max_length": REASON_MAX}, optional=True))
    else:
        raise ValueError(f"no modal for {name}")
    metadata = json.dumps({"trial_id": trial.id, "response_url": response_url})
    if len(metadata) > limits.SLACK_PRIVATE_METADATA:  # the form still works; only its confirmation goes unsent
        metadata = json.dumps({"trial_id": trial.id, "response_url": None})
    return {"type": "modal", "callback_id": f"trial:{name}", "private_metadata": metadata,
            "title": {"type": "plain_text", "text": title}, "submit": {"type": "plain_text", "text": submit},
            "close": {"type": "plain_text", "text": "Cancel"}, "blocks": blocks}


def _trial_end(trial: Trial) -> datetime | None:
    return current_end(trial) if trial.started_at else None


def _value(values: dict[str, dict[str, StateValue]], block_id: str) -> str | None:
    element = (values.get(block_id) or {}).get("value")
    if element is None:
        return None
    if element.type == "static_select":
        return element.selected_option.value if element.selected_option else None
    value = element.value
    return value.strip() if value and value.strip() else None


def detail_from_view(name: str, values: dict[str, dict[str, StateValue]]) -> dict[str, Any]:
    if name == lc.QUALIFY:
        opportunity = _value(values, "opportunity_id") or ""
        if len(opportunity) > OPPORTUNITY_MAX:
            raise InvalidSignup(f"An opportunity id has at most {OPPORTUNITY_MAX} characters.", "opportunity_id")
        return {"opportunity_id": opportunity}
    if name == lc.DISQUALIFY:
        reason = _value(values, "reason")
        note = _value(values, "note")
        if note and len(note) > NOTE_MAX:
            raise InvalidSignup(f"The note is too long ({NOTE_MAX} characters at most).", "note")
        if reason not in DISQUALIFICATION_REASONS:
            raise InvalidSignup("Choose the qualification criterion the lead does not meet.", "reason")
        if reason == "other" and not note:
            raise InvalidSignup("Say why in the note.", "note")
        text = DISQUALIFICATION_REASONS[reason] if reason != "other" else "Other"
        return {"reason": f"{text}: {note}" if note else text}
    if name == lc.REASSIGN:
        return {role: _value(values, role) for role in ("ae", "ce") if _value(values, role)}
    if name == lc.EXTEND:
        detail = {"days": _value(values, "days") or str(EXTENSION_DAYS)}
        reason = _value(values, "reason")
        if reason and len(reason) > REASON_MAX:
            raise InvalidSignup(f"The reason is too long ({REASON_MAX} characters at most).", "reason")
        if reason:
            detail["reason"] = reason
        return detail
    raise InvalidSignup(f"unknown form {name}", "callback_id")
