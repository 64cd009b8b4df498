"""Block Kit for the messages trialflow posts. Buttons carry the trial id as their value.

Every button's ``action_id`` is ``trial:<action>``; ``trialflow.api.slack`` maps it to a command.
Texts are fitted to Slack's limits where they are built (``mrkdwn``, ``services.fit``); the
blocks here clip whatever reaches them anyway, never inside an escape sequence or a mention.
"""
from __future__ import annotations

from typing import Any

from trialflow.domain import lifecycle as lc
from trialflow.services import fit as limits
from trialflow.services.fit import Field

ACTIONS = {
    lc.QUALIFY: ("Qualify", "primary"),
    lc.DISQUALIFY: ("Disqualify", "danger"),
    lc.CONVERT_TO_OPPORTUNITY: ("Converted to Opp", None),
    lc.REASSIGN: ("Reassign AE/CE", None),
    "user_added": ("User added", "primary"),
    lc.HAND_OFF: ("Handed off", "primary"),
    lc.KEEP: ("Keep", "primary"),
    lc.EXTEND: ("Extend", None),
    lc.CONVERT: ("Convert", "primary"),
    lc.TERMINATE: ("Terminate", "danger"),
    lc.REQUEST_FEEDBACK: ("Request feedback email", None),
}


def escape(text: object) -> str:
    """Slack mrkdwn: &, < and > in people's data must not become links or mentions."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mrkdwn(template: str, /, **fields: Field) -> str:
    """A section's text: ``Data`` fields (people's data) escaped, and shortened if the whole would
    pass Slack's 3,000 characters; ``str`` fields (mentions, links, our words) kept whole."""
    return limits.fit(limits.SLACK_SECTION_TEXT, template, escape, **fields)


def mailto(email: str) -> str:
    """An email as a Slack link; a ``|`` (legal in an address) would end the link early, so such an
    address is shown as plain text."""
    shown = escape(email)
    return shown if "|" in email else f"<mailto:{shown}|{shown}>"


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": limits.clip(text, limits.SLACK_SECTION_TEXT)}}


def context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": limits.clip(text, limits.SLACK_CONTEXT_TEXT)}]}


def buttons(trial_id: str, *actions: str) -> dict[str, Any]:
    elements = []
    for action in actions:
        label, style = ACTIONS[action]
        button = {"type": "button", "action_id": f"trial:{action}", "value": trial_id,
                  "text": {"type": "plain_text", "text": label}}
        if style:
            button["style"] = style
        elements.append(button)
    return {"type": "actions", "block_id": f"trial:{trial_id}", "elements": elements}


def message(text: str, *blocks: dict[str, Any]) -> dict[str, Any]:
    first = section(text)
    return {"text": first["text"]["text"], "blocks": [first, *blocks][:limits.SLACK_MESSAGE_BLOCKS]}
