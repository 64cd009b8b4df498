"""People acting from Slack and GitHub, translated into trial commands.

Slack (``POST /slack/interactions``, ``POST /slack/commands``; the route has verified the signature):
- a button's ``action_id`` is ``trial:<action>`` and its value the trial id (``slack_blocks``);
  Qualify, Disqualify, Reassign and Extend open a modal (``views.open``, synchronously: the
  trigger id is only good for 3 seconds), the others run their command at once;
- a modal's ``callback_id`` is ``trial:<action>`` and its ``private_metadata`` carries the trial id
  (and the button's ``response_url``, to confirm in the channel once the modal is submitted);
- ``/trial status|mine|queue|domain|help``.
GitHub (``POST /github/webhooks``; signature verified): the cloud team's "instance ready" signal.

Each command runs in one short transaction that also records the request's de-duplication key
(``slack_requests`` / ``github_deliveries``), so a Slack retry or a redelivered webhook changes
nothing the second time; a second click on a button is refused by the lifecycle itself (or, for
steps that do not change the state, by ``ONCE_ONLY``) and answered politely with who did it.
Who may act is decided by ``trials.authorize`` from staff.csv; a refusal is logged with the trial
id and explained to the person, and nothing changes. Slow work (messages, issues, email) is
already in the outbox when the answer goes back.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

from sqlalchemy import func, or_, select

from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.domain import lifecycle as lc
from trialflow.domain.normalize import normalize_domain, normalize_email
from trialflow.domain.trial import SYSTEM, Trial
from trialflow.errors import InvalidSignup, NotAllowed, NotFound, TransitionRefused
from trialflow.services import outbox, policies
from trialflow.services import slack_blocks as sb
from trialflow.services.directory import Directory, Person
from trialflow.services.trials import CLOUD_ROLES, NO_CE, Command, authorize, get_trial, handle, has_active

log = logging.getLogger("trialflow.interactions")

# Button name (``trial:<name>``) → lifecycle trigger, where they differ.
TRIGGER_OF = {"user_added": "confirm_user_added"}
MODAL_ACTIONS = ("qualify", "disqualify", "reassign", "extend")
# Steps that leave the state as it is but make sense only once: a second press is "already done".
ONCE_ONLY = frozenset({"keep", "request_feedback", "convert_to_opportunity"})

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
SLACK_CALL_TIMEOUT = 2.5   # seconds: views.open must land inside the trigger's 3 s


def trigger_of(action: str) -> str:
    return TRIGGER_OF.get(action, action)


def label_of(action: str) -> str:
    return sb.ACTIONS[action][0] if action in sb.ACTIONS else action.replace("_", " ")


esc = sb.escape


# --- talking back to Slack -------------------------------------------------------------------

class SlackCallFailed(Exception):
    pass


class SlackWeb(Protocol):
    def open_view(self, trigger_id: str, view: dict) -> None: ...
    def respond(self, response_url: str, text: str) -> None: ...


class LiveSlackWeb:
    """The real slack_sdk clients (``settings.slack_api_url`` lets tests point them at a local server)."""

    def __init__(self, settings):
        from slack_sdk import WebClient
        self._client = WebClient(token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url,
                                 timeout=SLACK_CALL_TIMEOUT)

    def open_view(self, trigger_id: str, view: dict) -> None:
        from slack_sdk.errors import SlackApiError, SlackClientError
        try:
            self._client.views_open(trigger_id=trigger_id, view=view)
        except SlackApiError as exc:
            raise SlackCallFailed(exc.response.get("error", "error")) from None
        except (SlackClientError, OSError) as exc:
            raise SlackCallFailed(type(exc).__name__) from None

    def respond(self, response_url: str, text: str) -> None:
        from slack_sdk.webhook import WebhookClient
        try:
            result = WebhookClient(response_url, timeout=5).send(text=text, response_type="ephemeral",
                                                                replace_original=False)
            if result.status_code >= 400:
                log.warning("Slack response_url answered %s", result.status_code)
        except OSError as exc:
            log.warning("could not answer on the Slack response_url: %s", type(exc).__name__)


class DryRunSlackWeb:
    """No bot token: say what would have been shown."""

    def open_view(self, trigger_id: str, view: dict) -> None:
        log.info("dry-run views.open: %s (%s)", view.get("callback_id"), view.get("title", {}).get("text"))

    def respond(self, response_url: str, text: str) -> None:
        log.info("dry-run ephemeral answer: %s", text[:200])


def slack_web(settings) -> SlackWeb:
    return LiveSlackWeb(settings) if settings.slack_bot_token is not None else DryRunSlackWeb()


@dataclass
class SlackReply:
    """What goes back: ``body`` is the HTTP answer (None: an empty 200, which closes a modal);
    ``notify`` is an ephemeral text also sent on ``response_url`` (Slack ignores the body of a
    block_actions answer, so the body alone would never be seen)."""
    body: dict | None = None
    notify: str | None = None
    response_url: str | None = None


def ephemeral(text: str, response_url: str | None = None) -> SlackReply:
    return SlackReply(body={"response_type": "ephemeral", "replace_original": False, "text": text},
                      notify=text, response_url=response_url)


# --- one command, one transaction, with the request's de-duplication key -----------------------

@dataclass
class Outcome:
    status: str          # done | duplicate | refused | already | invalid | not_found
    text: str = ""
    field: str | None = None
    trial_state: str | None = None


def claim_request(session, key: str, now: datetime) -> bool:
    """Record a Slack request's key; False when it was already processed (a retry or a replay).

    On PostgreSQL a concurrent insert of the same key waits for the first transaction, then
    finds the row: the retry is answered as a duplicate only once the first one has finished.
    """
    return insert_ignore(session, tables.slack_requests, {"key": key[:200], "received_at": now})


def who(session, actor: str) -> str:
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


def explain_refusal(session, trial: Trial, trigger: str, action: str) -> str:
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


def run_command(rt, *, key: str | None, trial_id: str, action: str, actor: str, detail: dict[str, Any],
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
            outcome = Outcome("not_found", f":warning: There is no trial `{esc(trial_id)}` (any more).")
        except NotAllowed as exc:
            log.warning("refused: %s may not %s trial %s: %s", actor, trigger, trial_id, exc, extra={"trial_id": trial_id})
            outcome = Outcome("refused", f":no_entry: {esc(exc)}. Nothing was changed.")
        except TransitionRefused:
            trial = get_trial(uow, trial_id)
            outcome = Outcome("already", explain_refusal(session, trial, trigger, action), trial_state=trial.state)
        except InvalidSignup as exc:
            outcome = Outcome("invalid", exc.message, field=exc.field)
            if not keep_key_on_invalid:
                return outcome  # rolled back with the key: the person may correct and submit again
        else:
            outcome = Outcome("done", _done_text(session, trial, action), trial_state=trial.state)
        uow.commit()
        return outcome


def _done_text(session, trial: Trial, action: str) -> str:
    return (f":white_check_mark: *{label_of(action)}*: done for {esc(trial.email)}"
            f"{f' ({esc(trial.account_name)})' if trial.account_name else ''}. The trial is now "
            f"*{trial.state.replace('_', ' ')}*.")


# --- interactions: buttons and modals ------------------------------------------------------------

def handle_interaction(rt, payload: dict, web: SlackWeb) -> SlackReply:
    kind = payload.get("type")
    if kind == "block_actions":
        return _on_block_action(rt, payload, web)
    if kind == "view_submission":
        return _on_view_submission(rt, payload)
    return SlackReply()  # view_closed, shortcuts, ...: acknowledged, nothing to do


def _slack_user(payload: dict) -> str:
    return str((payload.get("user") or {}).get("id") or "")


def _on_block_action(rt, payload: dict, web: SlackWeb) -> SlackReply:
    actions = payload.get("actions") or []
    action = actions[0] if actions else {}
    action_id = str(action.get("action_id") or "")
    response_url = payload.get("response_url")
    if not action_id.startswith("trial:"):
        return SlackReply()  # not one of ours (a select in a modal, another app's button)
    name = action_id.split(":", 1)[1]
    trial_id = str(action.get("value") or "")
    user_id = _slack_user(payload)
    if name not in sb.ACTIONS or not trial_id:
        return ephemeral(f":warning: This button (`{esc(action_id)}`) is not one trialflow knows.", response_url)
    key = f"action:{trial_id}:{action_id}:{action.get('action_ts') or payload.get('trigger_id')}"
    if name in MODAL_ACTIONS:
        return _open_modal(rt, web, name, trial_id, user_id, key, payload.get("trigger_id"), response_url)
    outcome = run_command(rt, key=key, trial_id=trial_id, action=name, actor=user_id, detail={},
                          person_of=lambda people: people.by_slack_id(user_id))
    if outcome.status == "duplicate":
        return SlackReply()
    return ephemeral(outcome.text, response_url)


def _open_modal(rt, web: SlackWeb, name: str, trial_id: str, user_id: str, key: str, trigger_id: str | None,
                response_url: str | None) -> SlackReply:
    """Check who and when *before* showing a form, so nobody fills in a modal that will be refused."""
    trigger = trigger_of(name)
    with rt.uow() as uow:
        session = uow.session
        if not claim_request(session, key, rt.clock.now()):
            return SlackReply()
        person = Directory(session).by_slack_id(user_id)
        try:
            trial = get_trial(uow, trial_id)
            authorize(trial, trigger, person, user_id)
        except NotFound:
            uow.commit()
            return ephemeral(f":warning: There is no trial `{esc(trial_id)}` (any more).", response_url)
        except NotAllowed as exc:
            log.warning("refused: %s may not %s trial %s: %s", user_id, trigger, trial_id, exc, extra={"trial_id": trial_id})
            uow.commit()
            return ephemeral(f":no_entry: {esc(exc)}. Nothing was changed.", response_url)
        if not trial.can(trigger):
            text = explain_refusal(session, trial, trigger, name)
            uow.commit()
            return ephemeral(text, response_url)
        if name == "qualify" and not trial.ce and not has_active(session, "ce"):
            log.warning("cannot qualify trial %s: %s", trial_id, NO_CE, extra={"trial_id": trial_id})
            uow.commit()
            return ephemeral(f":warning: Cannot qualify {esc(trial.email)}: {NO_CE}. Add one (role `ce`, active "
                             "`true`) and press Qualify again. Nothing was changed.", response_url)
        view = build_modal(session, name, trial, response_url)
        uow.commit()
    if not trigger_id:
        return ephemeral(":warning: Slack sent no trigger id, so the form cannot be opened. Please try again.", response_url)
    try:
        web.open_view(trigger_id, view)
    except SlackCallFailed as exc:
        log.warning("views.open for %s on %s failed: %s", name, trial_id, exc, extra={"trial_id": trial_id})
        return ephemeral(f":warning: Slack would not open the *{label_of(name)}* form ({esc(exc)}). Please press the button again.",
                         response_url)
    return SlackReply()


def _option(text: str, value: str) -> dict:
    return {"text": {"type": "plain_text", "text": text[:75]}, "value": value}


def _input(block_id: str, label: str, element: dict, optional: bool = False, hint: str | None = None) -> dict:
    block = {"type": "input", "block_id": block_id, "optional": optional,
             "label": {"type": "plain_text", "text": label}, "element": {"action_id": "value", **element}}
    if hint:
        block["hint"] = {"type": "plain_text", "text": hint}
    return block


def _select(options: list[dict], initial: str | None = None, placeholder: str = "Choose") -> dict:
    element = {"type": "static_select", "options": options, "placeholder": {"type": "plain_text", "text": placeholder}}
    chosen = next((o for o in options if o["value"] == initial), None)
    if chosen:
        element["initial_option"] = chosen
    return element


def build_modal(session, name: str, trial: Trial, response_url: str | None) -> dict:
    """The form behind a button. ``callback_id`` says which step; ``private_metadata`` which trial."""
    lead = f"*{esc(trial.name or trial.email)}* {esc(trial.email)} · {esc(trial.account_name or trial.domain)}"
    score = f"MQL {trial.mql_points or 0} pts · PQL grade {trial.pql_grade or '-'}"
    blocks: list[dict] = [sb.section(lead), sb.context(score)]
    if name == "qualify":
        title, submit = "Qualify lead", "Qualify"
        blocks.append(_input("opportunity_id", "Salesforce opportunity id", {"type": "plain_text_input", "max_length": 64},
                             optional=True, hint="Converting to Opp is part of qualifying; leave empty if it is not created yet."))
        blocks.append(sb.context("Qualifying assigns an AE and a CE by round robin, creates the account channel, "
                                 "raises the instance request with the CE's email, and sends the welcome email."))
    elif name == "disqualify":
        title, submit = "Disqualify lead", "Disqualify"
        blocks.append(_input("reason", "Reason (qualification criteria)",
                             _select([_option(text, value) for value, text in DISQUALIFICATION_REASONS.items()])))
        blocks.append(_input("note", "Note", {"type": "plain_text_input", "multiline": True, "max_length": 500}, optional=True))
        blocks.append(sb.context("The lead gets an email recommending a self-hosted Sourcegraph instance."))
    elif name == "reassign":
        title, submit = "Reassign AE / CE", "Reassign"
        people = Directory(session)
        for role in ("ae", "ce"):
            staff = session.execute(select(tables.staff.c.email, tables.staff.c.name).where(
                tables.staff.c.role == role, tables.staff.c.active.is_(True)).order_by(tables.staff.c.name)).all()
            options = [_option(f"{n} ({e})", e) for e, n in staff][:99] + [_option("Next in the round robin", "next")]
            current = getattr(trial, role)
            person = people.by_email(current)
            blocks.append(_input(role, role.upper(), _select(options, current), optional=True,
                                 hint=f"Now: {person.name if person else current or 'nobody'}"))
    elif name == "extend":
        title, submit = "Extend trial", "Extend"
        end = _trial_end(trial)
        blocks.append(_input("days", "Extend by", _select([_option(f"{d} days", str(d)) for d in EXTENSION_CHOICES],
                                                          str(policies.EXTENSION_DAYS)),
                             hint=f"Today it ends on {end:%Y-%m-%d}. More than {policies.EXTENSION_DAYS} extra days "
                                  "also raises a license change request." if end else None))
        blocks.append(_input("reason", "Why", {"type": "plain_text_input", "max_length": 300}, optional=True))
    else:
        raise ValueError(f"no modal for {name}")
    metadata = json.dumps({"trial_id": trial.id, "response_url": response_url})
    return {"type": "modal", "callback_id": f"trial:{name}", "private_metadata": metadata,
            "title": {"type": "plain_text", "text": title}, "submit": {"type": "plain_text", "text": submit},
            "close": {"type": "plain_text", "text": "Cancel"}, "blocks": blocks}


def _trial_end(trial: Trial) -> datetime | None:
    from trialflow.services.trials import current_end
    return current_end(trial) if trial.started_at else None


def _value(values: dict, block_id: str) -> str | None:
    element = (values.get(block_id) or {}).get("value") or {}
    if element.get("type") == "static_select":
        return (element.get("selected_option") or {}).get("value")
    value = element.get("value")
    return value.strip() if isinstance(value, str) and value.strip() else None


def detail_from_view(name: str, values: dict) -> dict[str, Any]:
    if name == "qualify":
        return {"opportunity_id": _value(values, "opportunity_id") or ""}
    if name == "disqualify":
        reason = _value(values, "reason")
        note = _value(values, "note")
        if reason not in DISQUALIFICATION_REASONS:
            raise InvalidSignup("Choose the qualification criterion the lead does not meet.", "reason")
        if reason == "other" and not note:
            raise InvalidSignup("Say why in the note.", "note")
        text = DISQUALIFICATION_REASONS[reason] if reason != "other" else "Other"
        return {"reason": f"{text}: {note}" if note else text}
    if name == "reassign":
        return {role: _value(values, role) for role in ("ae", "ce") if _value(values, role)}
    if name == "extend":
        detail = {"days": _value(values, "days") or str(policies.EXTENSION_DAYS)}
        reason = _value(values, "reason")
        if reason:
            detail["reason"] = reason
        return detail
    raise InvalidSignup(f"unknown form {name}", "callback_id")


_FIELD_BLOCK = {"opportunity_id": "opportunity_id", "reason": "reason", "note": "note", "ae": "ae", "ce": "ce",
                "days": "days"}


def _on_view_submission(rt, payload: dict) -> SlackReply:
    view = payload.get("view") or {}
    callback = str(view.get("callback_id") or "")
    if not callback.startswith("trial:"):
        return SlackReply()
    name = callback.split(":", 1)[1]
    raw = view.get("private_metadata") or ""
    try:
        metadata = json.loads(raw) if raw.startswith("{") else {"trial_id": raw}
    except ValueError:
        metadata = {}
    trial_id = str(metadata.get("trial_id") or "")
    response_url = metadata.get("response_url")
    user_id = _slack_user(payload)
    if name not in MODAL_ACTIONS or not trial_id:
        return _info_view("trialflow", ":warning: This form is not one trialflow knows.")
    try:
        detail = detail_from_view(name, (view.get("state") or {}).get("values") or {})
    except InvalidSignup as exc:
        return SlackReply(body={"response_action": "errors", "errors": {_FIELD_BLOCK.get(exc.field, exc.field): exc.message}})
    key = f"view:{view.get('id') or payload.get('trigger_id')}"
    outcome = run_command(rt, key=key, trial_id=trial_id, action=name, actor=user_id, detail=detail,
                          person_of=lambda people: people.by_slack_id(user_id), keep_key_on_invalid=False)
    if outcome.status == "duplicate":
        return SlackReply()
    if outcome.status == "invalid":
        block = _FIELD_BLOCK.get(outcome.field or "")
        if block:
            return SlackReply(body={"response_action": "errors", "errors": {block: outcome.text}})
        reply = _info_view(label_of(name), f":warning: {esc(outcome.text)}")
        reply.notify, reply.response_url = f":warning: {esc(outcome.text)}. Nothing was changed.", response_url
        return reply
    if outcome.status != "done":
        return _info_view(label_of(name), outcome.text)
    return SlackReply(body=None, notify=outcome.text, response_url=response_url)


def _info_view(title: str, text: str) -> SlackReply:
    """Replace the modal with an explanation (a refusal is not a field error)."""
    return SlackReply(body={"response_action": "update", "view": {
        "type": "modal", "title": {"type": "plain_text", "text": title[:24]},
        "close": {"type": "plain_text", "text": "Close"}, "blocks": [sb.section(text)]}})


# --- /trial ---------------------------------------------------------------------------------------

HELP = """*/trial* — cloud trials from Slack (answers are only visible to you)
• `/trial status <email|domain>` — where a trial is, who owns it, what is next
• `/trial mine` — open trials where you are the SDR, AE or CE
• `/trial queue` — the triage queue, highest lead score first
• `/trial domain <trial id|email> <new-subdomain>` — request a vanity domain (GitHub issue with the checklist; the AE is told)
• `/trial help` — this"""

QUEUE_LIMIT = 20
LIST_LIMIT = 20


def handle_slash_command(rt, form: dict[str, str]) -> dict:
    user_id = form.get("user_id", "")
    words = (form.get("text") or "").split()
    sub = words[0].lower() if words else "help"
    args = words[1:]
    with rt.session_factory() as session:
        person = Directory(session).by_slack_id(user_id)
        if person is None or not person.active:
            log.warning("refused: /trial %s from %s, who is not active staff", sub, user_id)
            return _answer(":no_entry: `/trial` is for the trials team: your Slack user is not an active member "
                           "of staff.csv. Ask an admin to add you.")
        if sub == "help":
            return _answer(HELP)
        if sub == "status":
            if len(args) != 1:
                return _answer("Usage: `/trial status <email|domain>`, like `/trial status bob@acme-corp.com`.")
            return _answer(_status(session, args[0]))
        if sub == "mine":
            return _answer(_mine(session, person))
        if sub == "queue":
            return _answer(_queue(session))
    if sub == "domain":
        if len(args) != 2:
            return _answer("Usage: `/trial domain <trial id|email> <new-subdomain>`, like `/trial domain bob@acme-corp.com acme-corp`.")
        return _answer(_domain_change(rt, form, user_id, args[0], args[1]))
    return _answer(f"I do not know `/trial {esc(sub)}`.\n{HELP}")


def _answer(text: str) -> dict:
    return {"response_type": "ephemeral", "text": text}


def _deadline_text(session, trial: Trial) -> str:
    deadlines = policies.deadlines(session, trial.id)
    if not deadlines:
        return ""
    kind, due = next(iter(deadlines.items()))
    return f" · next: {kind.replace('_', ' ')} on {due[:10]}"


def _trial_line(session, trial: Trial) -> str:
    people = Directory(session)
    bits = [f"*{esc(trial.email)}* (`{trial.id}`) — *{trial.state.replace('_', ' ')}*",
            f"{esc(trial.account_name or trial.domain)}"]
    if trial.instance_url:
        bits.append(trial.instance_url)
    line = " · ".join(bits)
    owners = f"SDR {people.mention(trial.sdr)} · AE {people.mention(trial.ae)} · CE {people.mention(trial.ce)}"
    score = f"MQL {trial.mql_points or 0} pts · PQL {trial.pql_grade or '-'}"
    activity = f" · last activity {trial.last_activity_at:%Y-%m-%d}" if trial.last_activity_at else ""
    return f"{line}\n      {owners} · {score}{activity}{_deadline_text(session, trial)}"


def _status(session, query: str) -> str:
    query = query.strip().strip("<>")
    if query.startswith("mailto:"):
        query = query.split("|", 1)[0][len("mailto:"):]
    try:
        if "@" in query:
            address = normalize_email(query).address
            trials = session.scalars(select(Trial).where(tables.trials.c.email == address)).all()
        else:
            domain = normalize_domain(query.split("|", 1)[-1])
            trials = session.scalars(select(Trial).where(tables.trials.c.domain == domain)
                                     .order_by(tables.trials.c.created_at.desc()).limit(LIST_LIMIT)).all()
    except InvalidSignup as exc:
        return f":warning: {esc(exc.message)}"
    if not trials:
        return f"No trial for `{esc(query)}`."
    return "\n".join(_trial_line(session, t) for t in trials)


def _mine(session, person: Person) -> str:
    t = tables.trials
    mine = or_(t.c.sdr == person.email, t.c.ae == person.email, t.c.ce == person.email)
    open_states = [s for s in lc.STATES if s not in lc.FINAL_STATES]
    trials = session.scalars(select(Trial).where(mine, t.c.state.in_(open_states))
                             .order_by(t.c.created_at.desc()).limit(LIST_LIMIT)).all()
    if not trials:
        return f"No open trials where you ({esc(person.name)}) are the SDR, AE or CE."
    total = session.scalar(select(func.count()).select_from(t).where(mine, t.c.state.in_(open_states)))
    head = f"*Your open trials* ({total}{f', newest {LIST_LIMIT} shown' if total > LIST_LIMIT else ''}):"
    return "\n".join([head, *(_trial_line(session, trial) for trial in trials)])


def triage_queue(session, limit: int = QUEUE_LIMIT) -> list[Trial]:
    """Triage, highest lead score first: MQL points, then PQL grade (A best, ungraded last), then oldest."""
    t = tables.trials
    return list(session.scalars(select(Trial).where(t.c.state == lc.TRIAGE)
                                .order_by(t.c.mql_points.desc(), func.coalesce(t.c.pql_grade, "Z"), t.c.created_at, t.c.id)
                                .limit(limit)))


def _queue(session) -> str:
    trials = triage_queue(session)
    waiting = session.scalar(select(func.count()).select_from(tables.trials)
                             .where(tables.trials.c.state == lc.WAITING_FOR_CAPACITY))
    total = session.scalar(select(func.count()).select_from(tables.trials).where(tables.trials.c.state == lc.TRIAGE))
    if not trials:
        text = "The triage queue is empty."
    else:
        lines = [f"*Triage queue* ({total}, highest lead score first):"]
        for n, trial in enumerate(trials, 1):
            mql = trial.mql_points or 0
            lines.append(f"{n}. MQL {mql}{' (MQL)' if mql >= 15 else ''} · PQL {trial.pql_grade or '-'} · "
                         f"*{esc(trial.name or trial.email)}* {esc(trial.email)} ({esc(trial.company or trial.domain)}) · "
                         f"since {trial.created_at:%Y-%m-%d} · `{trial.id}`")
        text = "\n".join(lines)
    if waiting:
        text += f"\n{waiting} qualified trial(s) wait for capacity; they proceed by themselves."
    return text


def _domain_change(rt, form: dict[str, str], user_id: str, target: str, subdomain: str) -> str:
    with rt.session_factory() as session:
        if target.startswith("tr_"):
            trial_id = target
        else:
            try:
                address = normalize_email(target.strip("<>").removeprefix("mailto:").split("|", 1)[0]).address
            except InvalidSignup as exc:
                return f":warning: {esc(exc.message)}"
            trial_id = session.scalar(select(tables.trials.c.id).where(tables.trials.c.email == address))
            if trial_id is None:
                return f"No trial for `{esc(address)}`."
    outcome = run_command(rt, key=f"command:{form.get('trigger_id') or ''}:{trial_id}" if form.get("trigger_id") else None,
                          trial_id=trial_id, action="request_domain_change", actor=user_id,
                          detail={"subdomain": subdomain}, person_of=lambda people: people.by_slack_id(user_id),
                          keep_key_on_invalid=False)
    if outcome.status == "duplicate":
        return "That request was already handled."
    if outcome.status == "invalid":
        return f":warning: {esc(outcome.text)}"
    if outcome.status == "done":
        return (f":white_check_mark: Domain change to `{esc(subdomain.lower())}` requested: the cloud team gets a GitHub "
                "issue with the checklist (SSO, permission syncing, webhooks, hard-coded links), and the AE is told.")
    return outcome.text


# --- GitHub: the cloud team's "instance ready" signal -------------------------------------------
#
# Everything in an instance-request issue's body that trialflow did not write is the lead's (name,
# company), so nothing in the body is trusted: the trial is the one whose issue trialflow recorded
# filing (the delivered github.issue effect's number), and the instance URL comes only from a
# comment written by an authorised cloud/admin member (``/ready <url>`` or an ``Instance: <url>``
# line). No URL: nothing is guessed; the issue is asked for one.

READY_LABEL = "instance-ready"
_MARKER = re.compile(r"<!--\s*trialflow:(tr_[0-9a-f]+):instance-request\s*-->")
_READY_COMMAND = re.compile(r"^[ \t]*/ready\b[ \t]*(\S+)?", re.MULTILINE)
_INSTANCE_LINE = re.compile(r"^[ \t>*_-]*instance[*_]*[ \t]*:[ \t]*<?(\S+?)>?[ \t]*$", re.IGNORECASE | re.MULTILINE)
_NOT_INSTANCES = ("github.com", "githubusercontent.com", "github.io", "githubassets.com", "ghe.com")


@dataclass
class ReadySignal:
    trial_id: str
    login: str                  # who labelled the issue or wrote the /ready comment
    issue_number: int | None
    repo: str | None
    comment_body: str | None    # the /ready comment itself (written by ``login``)


def ready_signal(event: str, payload: dict) -> ReadySignal | str:
    """The signal in a delivery, or why the delivery is not one."""
    issue = payload.get("issue") or {}
    body = issue.get("body") or ""
    login = str((payload.get("sender") or {}).get("login") or "")
    repo = (payload.get("repository") or {}).get("full_name")
    comment_body = None
    if event == "issues" and payload.get("action") == "labeled":
        if ((payload.get("label") or {}).get("name") or "").lower() != READY_LABEL:
            return f"label {((payload.get('label') or {}).get('name'))!r} is not {READY_LABEL!r}"
    elif event == "issue_comment" and payload.get("action") == "created":
        comment = payload.get("comment") or {}
        comment_body = comment.get("body") or ""
        if not _READY_COMMAND.search(comment_body):
            return "the comment is not a /ready command"
        login = str((comment.get("user") or {}).get("login") or "")
    else:
        return f"{event}.{payload.get('action')} is not an instance-ready signal"
    # trialflow appends its marker at the very end; an earlier one is someone's text (a name).
    markers = _MARKER.findall(body)
    if not markers:
        return "the issue is not a trialflow instance request"
    number = issue.get("number")
    return ReadySignal(markers[-1], login, number if isinstance(number, int) else None, repo, comment_body)


def url_in_comment(text: str) -> str | None:
    """The instance URL a comment gives: ``/ready <url>``, else an ``Instance: <url>`` line."""
    command = _READY_COMMAND.search(text)
    if command and command.group(1):
        return command.group(1)
    line = _INSTANCE_LINE.search(text)
    return line.group(1) if line else None


def instance_host(url: str) -> str:
    """The host of an instance URL; InvalidSignup unless it is https on a valid, non-GitHub host name."""
    text = url.strip().strip("<>")
    wrong = InvalidSignup(f"`{text[:200]}` is not an instance URL: give it as https://<instance host>", "host")
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise wrong from None
    if parts.scheme.lower() != "https" or not parts.hostname or "@" in parts.netloc or port is not None:
        raise wrong
    try:
        host = normalize_domain(parts.hostname)
    except InvalidSignup:
        raise wrong from None
    if any(host == h or host.endswith("." + h) for h in _NOT_INSTANCES):
        raise InvalidSignup(f"`{host}` is a GitHub address, not the instance", "host")
    return host


def fetch_issue_comments(settings, repo: str, number: int) -> list[tuple[str, str]]:
    """The issue's comments as (author login, body), oldest first, read with PyGithub."""
    from github import Auth, Github, GithubException
    try:
        client = Github(auth=Auth.Token(settings.github_token.get_secret_value()), base_url=settings.github_api_url,
                        timeout=5, retry=None, lazy=True)
        issue = client.get_repo(repo).get_issue(number)
        return [((c.user.login if c.user else "") or "", c.body or "") for c in issue.get_comments()]
    except (GithubException, OSError) as exc:
        log.warning("could not read the comments of %s#%s: %s", repo, number, type(exc).__name__)
        return []


def handle_github_delivery(rt, delivery_id: str, event: str, payload: dict,
                           comments: Callable[[str, int], list[tuple[str, str]]] | None = None) -> dict:
    """One webhook delivery, processed once. Returns what the answer says."""
    signal = ready_signal(event, payload) if event != "ping" else "ping"
    # (author login, comment) that may give the URL, newest first; authors are checked later.
    sources: list[tuple[str, str]] = []
    if isinstance(signal, ReadySignal):
        expected_repo = rt.settings.github_repo
        if expected_repo and signal.repo and signal.repo.lower() != expected_repo.lower():
            signal = f"the issue is in {signal.repo}, not the cloud team's repository {expected_repo}"
        else:
            if signal.comment_body is not None:
                sources.append((signal.login, signal.comment_body))
            no_url_yet = signal.comment_body is None or url_in_comment(signal.comment_body) is None
            if no_url_yet and signal.issue_number and rt.settings.github_token is not None and signal.repo:
                fetch = comments or (lambda repo, number: fetch_issue_comments(rt.settings, repo, number))
                sources.extend(reversed(fetch(signal.repo, signal.issue_number)))
    now = rt.clock.now()
    with rt.uow() as uow:
        session = uow.session
        if not insert_ignore(session, tables.github_deliveries,
                             {"delivery_id": delivery_id[:64], "event": (event or "?")[:64], "received_at": now}):
            return {"status": "duplicate", "delivery": delivery_id}
        if signal == "ping":
            uow.commit()
            return {"status": "pong", "zen": payload.get("zen")}
        if not isinstance(signal, ReadySignal):
            uow.commit()
            return {"status": "ignored", "reason": signal}
        result = _mark_ready(rt, uow, signal, sources, delivery_id, now)
        uow.commit()
        return result


def recorded_request_issues(session, trial_id: str) -> set[int]:
    """The numbers of the instance-request issues trialflow filed for this trial (delivered effects)."""
    o = tables.outbox
    rows = session.execute(select(o.c.payload, o.c.result).where(
        o.c.trial_id == trial_id, o.c.kind == "github.issue", o.c.status == "delivered"))
    ref = f"instance-request:{trial_id}"
    return {int(result["number"]) for payload, result in rows
            if (payload or {}).get("ref") == ref and isinstance(result, dict) and isinstance(result.get("number"), int)}


def _may_signal(person: Person | None) -> bool:
    return person is not None and person.active and person.role in CLOUD_ROLES


def _comment(uow, signal: ReadySignal, delivery_id: str, now: datetime, slot: str, body: str) -> None:
    outbox.enqueue(uow, key=f"github-{slot}:{delivery_id}", kind="github.comment", now=now, trial_id=signal.trial_id,
                   payload={"ref": f"instance-request:{signal.trial_id}", "body": body})


def _mark_ready(rt, uow, signal: ReadySignal, sources: list[tuple[str, str]], delivery_id: str, now: datetime) -> dict:
    session = uow.session
    people = Directory(session)
    person = people.by_github_login(signal.login) if signal.login else None
    try:
        with session.begin_nested():
            trial = get_trial(uow, signal.trial_id, lock=True)
            filed = recorded_request_issues(session, trial.id)
            if signal.issue_number not in filed:
                log.warning("ignored an instance-ready signal on %s#%s: trialflow filed %s for trial %s",
                            signal.repo, signal.issue_number, sorted(filed) or "no issue (yet)", trial.id,
                            extra={"trial_id": trial.id})
                return {"status": "ignored", "trial_id": trial.id,
                        "reason": f"issue #{signal.issue_number} is not the instance request trialflow filed for this trial"}
            authorize(trial, "mark_instance_ready", person, signal.login or "unknown")
            if not trial.can("mark_instance_ready"):
                raise TransitionRefused("mark_instance_ready", trial.state)
            url = next((u for author, text in sources
                        if _may_signal(person if author == signal.login else people.by_github_login(author))
                        for u in [url_in_comment(text)] if u), None)
            if url is None:
                _comment(uow, signal, delivery_id, now, "needs-url",
                         "trialflow did not mark this instance ready: it needs the instance's URL. Comment "
                         "`/ready https://<instance host>` (from a cloud-team login listed in staff.csv).")
                return {"status": "needs_url", "trial_id": trial.id,
                        "reason": "no instance URL: comment /ready <url>"}
            host = instance_host(url)
            handle(uow, rt.settings, now, Command(trial.id, "mark_instance_ready", signal.login or "unknown", person,
                                                  {"host": host}))
    except NotFound:
        return {"status": "ignored", "reason": f"no trial {signal.trial_id}"}
    except TransitionRefused as exc:
        return {"status": "ignored", "reason": f"the trial is {exc.state}: nothing to mark ready", "trial_id": signal.trial_id}
    except NotAllowed as exc:
        log.warning("refused: GitHub user %s may not mark trial %s ready: %s", signal.login, signal.trial_id, exc,
                    extra={"trial_id": signal.trial_id})
        _comment(uow, signal, delivery_id, now, "refused",
                 f"trialflow did not mark this instance ready: {exc}. The signal must come from a GitHub login listed "
                 f"in staff.csv with role `cloud` or `admin`, with the label `{READY_LABEL}` or a comment `/ready <url>`.")
        return {"status": "refused", "reason": str(exc), "trial_id": signal.trial_id}
    except InvalidSignup as exc:
        log.warning("refused an instance-ready signal from %s for trial %s: %s", signal.login, signal.trial_id,
                    exc.message, extra={"trial_id": signal.trial_id})
        _comment(uow, signal, delivery_id, now, "refused",
                 f"trialflow did not mark this instance ready: {exc.message}. Comment `/ready https://<instance host>`.")
        return {"status": "refused", "reason": exc.message, "trial_id": signal.trial_id}
    return {"status": "instance_ready", "trial_id": trial.id, "host": trial.instance_host}
