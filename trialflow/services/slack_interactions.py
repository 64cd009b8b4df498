"""Slack buttons and forms (``POST /slack/interactions``; the route has verified the signature).

- a button's ``action_id`` is ``trial:<action>`` and its value the trial id (``slack_blocks``);
  Qualify, Disqualify, Reassign and Extend open a form (``slack_modals``; ``views.open``,
  synchronously: the trigger id is only good for 3 seconds), the others run their step at once;
- a submitted form runs its step, or points at the field to correct.

Each step runs once, with the request's de-duplication key (``slack_steps.run_command``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from trialflow.domain import lifecycle as lc
from trialflow.errors import InvalidSignup, NotAllowed, NotFound, SlackCallFailed
from trialflow.services import fit as limits
from trialflow.services import slack_blocks as sb
from trialflow.services.directory import Directory
from trialflow.services.slack_modals import FIELD_BLOCK, MODAL_ACTIONS, build_modal, detail_from_view
from trialflow.services.slack_payloads import Interaction
from trialflow.services.slack_steps import (
    claim_request,
    esc,
    explain_refusal,
    label_of,
    log_refusal,
    no_trial_text,
    refused_text,
    run_command,
    trigger_of,
)
from trialflow.services.trials import NO_CE, authorize, get_trial, has_active
from trialflow.services.uow import App

log = logging.getLogger("trialflow.interactions")


class SlackWeb(Protocol):
    """The two calls made while the person waits (``trialflow.delivery.slack.slack_web``)."""

    def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        """Show a form; SlackCallFailed when Slack will not."""

    def respond(self, response_url: str, text: str) -> None:
        """An ephemeral message on a button's ``response_url``."""


@dataclass
class SlackReply:
    """What goes back: ``body`` is the HTTP answer (None: an empty 200, which closes a modal);
    ``notify`` is an ephemeral text also sent on ``response_url`` (Slack ignores the body of a
    block_actions answer, so the body alone would never be seen)."""
    body: dict[str, Any] | None = None
    notify: str | None = None
    response_url: str | None = None


def ephemeral(text: str, response_url: str | None = None) -> SlackReply:
    text = limits.clip(text, limits.SLACK_MESSAGE_TEXT)
    return SlackReply(body={"response_type": "ephemeral", "replace_original": False, "text": text},
                      notify=text, response_url=response_url)


def handle_interaction(rt: App, payload: Interaction, web: SlackWeb) -> SlackReply:
    if payload.type == "block_actions":
        return _on_block_action(rt, payload, web)
    if payload.type == "view_submission":
        return _on_view_submission(rt, payload)
    return SlackReply()  # view_closed, shortcuts, ...: acknowledged, nothing to do


def _on_block_action(rt: App, payload: Interaction, web: SlackWeb) -> SlackReply:
    if not payload.actions:
        return SlackReply()
    action = payload.actions[0]
    action_id = action.action_id or ""
    response_url = payload.response_url
    if not action_id.startswith("trial:"):
        return SlackReply()  # not one of ours (a select in a modal, another app's button)
    name = action_id.split(":", 1)[1]
    trial_id = action.value or ""
    user_id = payload.user_id
    if name not in sb.ACTIONS or not trial_id:
        return ephemeral(f":warning: This button (`{esc(action_id)}`) is not one trialflow knows.", response_url)
    key = f"action:{trial_id}:{action_id}:{action.action_ts or payload.trigger_id}"
    if name in MODAL_ACTIONS:
        return _open_modal(rt, web, name, trial_id, user_id, key, payload.trigger_id, response_url)
    outcome = run_command(rt, key=key, trial_id=trial_id, action=name, actor=user_id, detail={},
                          person_of=lambda people: people.by_slack_id(user_id))
    if outcome.status == "duplicate":
        return SlackReply()
    return ephemeral(outcome.text, response_url)


def _open_modal(rt: App, web: SlackWeb, name: str, trial_id: str, user_id: str, key: str, trigger_id: str | None,
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
            return ephemeral(no_trial_text(trial_id), response_url)
        except NotAllowed as exc:
            log_refusal(user_id, trigger, trial_id, exc)
            uow.commit()
            return ephemeral(refused_text(exc), response_url)
        if not trial.can(trigger):
            text = explain_refusal(session, trial, trigger, name)
            uow.commit()
            return ephemeral(text, response_url)
        if name == lc.QUALIFY and not trial.ce and not has_active(session, "ce"):
            log.warning("cannot qualify trial %s: %s", trial_id, NO_CE, extra={"trial_id": trial_id})
            uow.commit()
            return ephemeral(f":warning: Cannot qualify {esc(trial.email)}: {NO_CE}. Add one (role `ce`, active "
                             "`true`) and press Qualify again. Nothing was changed.", response_url)
        view = build_modal(session, name, trial, response_url, rt.settings.salesforce_configured)
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


def _on_view_submission(rt: App, payload: Interaction) -> SlackReply:
    view = payload.view
    callback = (view.callback_id if view else None) or ""
    if view is None or not callback.startswith("trial:"):
        return SlackReply()
    name = callback.split(":", 1)[1]
    trial_id, response_url = view.trial_id, view.response_url
    user_id = payload.user_id
    if name not in MODAL_ACTIONS or not trial_id:
        return _info_view("trialflow", ":warning: This form is not one trialflow knows.")
    try:
        detail = detail_from_view(name, view.values())
    except InvalidSignup as exc:
        return SlackReply(body={"response_action": "errors", "errors": {FIELD_BLOCK.get(exc.field, exc.field): exc.message}})
    key = f"view:{view.id or payload.trigger_id}"
    outcome = run_command(rt, key=key, trial_id=trial_id, action=name, actor=user_id, detail=detail,
                          person_of=lambda people: people.by_slack_id(user_id), keep_key_on_invalid=False)
    if outcome.status == "duplicate":
        return SlackReply()
    if outcome.status == "invalid":
        block = FIELD_BLOCK.get(outcome.field or "")
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
        "type": "modal", "title": {"type": "plain_text", "text": limits.shorten(title, limits.SLACK_VIEW_TITLE)},
        "close": {"type": "plain_text", "text": "Close"}, "blocks": [sb.section(text)]}})
