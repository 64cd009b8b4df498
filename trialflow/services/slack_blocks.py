"""Block Kit for the messages trialflow posts. Buttons carry the trial id as their value.

Every button's ``action_id`` is ``trial:<action>``; ``trialflow.api.slack`` maps it to a command.
"""
from __future__ import annotations

from typing import Any

from trialflow.domain import lifecycle as lc

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


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


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
    return {"text": text, "blocks": [section(text), *blocks]}
