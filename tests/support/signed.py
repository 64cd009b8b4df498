"""Requests as Slack, GitHub and trial instances send them: the shared fixtures' payloads, changed
only where a test needs to (action id, value, user id, labels, body...), and signed the way each
sender signs.

    payload = block_action("qualify", trial_id, user_id="U0SDR0001")
    response = post_interaction(client, payload, clock)          # signed with SLACK_SECRET at the clock's time

Also ``InteractiveFakeSlack``: ``tests.support.fake_slack.FakeSlack`` plus what interactivity
needs (``views.open`` and ``response_url`` posts, recorded).
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.views import View

from tests.support.fake_slack import FakeSlack, _json_arg, _refused_content, add_test_staff

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
SLACK_SECRET = "tests-slack-signing-secret-0a1b2c3d"
GITHUB_SECRET = "tests-github-webhook-secret-4e5f6a7b"
ACTIVITY_SECRET = "tests-activity-secret-8c9d0e1f"
FIXTURE_REPO = "Codertocat/Hello-World"   # the repository in fixtures/github/webhooks/issues.*.json

_action_ts = itertools.count(1)


def fixture_json(relative: str) -> dict[str, Any]:
    return json.loads((FIXTURES / relative).read_text())


def signing_settings(**extra) -> dict[str, Any]:
    return {"slack_signing_secret": SLACK_SECRET, "github_webhook_secret": GITHUB_SECRET,
            "activity_secret": ACTIVITY_SECRET, **extra}


# --- Slack -----------------------------------------------------------------------------------------

def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    return "v0=" + hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()


def slack_headers(body: bytes, when: datetime | int, secret: str = SLACK_SECRET, **extra: str) -> dict[str, str]:
    timestamp = str(int(when if isinstance(when, int) else when.timestamp()))
    return {"content-type": "application/x-www-form-urlencoded", "x-slack-request-timestamp": timestamp,
            "x-slack-signature": slack_signature(secret, timestamp, body), **extra}


def interaction_body(payload: dict) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def block_action(action: str, trial_id: str, user_id: str, *, response_url: str | None = None,
                 action_ts: str | None = None, trigger_id: str | None = None) -> dict:
    """fixtures/slack/block_actions.json, pressing trialflow's ``trial:<action>`` button."""
    payload = fixture_json("slack/block_actions.json")
    button = payload["actions"][0]
    button["action_id"] = f"trial:{action}"
    button["value"] = trial_id
    button["action_ts"] = action_ts or f"1767600000.{next(_action_ts):06d}"
    payload["user"]["id"] = user_id
    if response_url:
        payload["response_url"] = response_url
    if trigger_id:
        payload["trigger_id"] = trigger_id
    return payload


def view_submission(view: dict, user_id: str, values: dict[str, Any], view_id: str | None = None) -> dict:
    """fixtures/slack/view_submission.json, submitting the modal trialflow opened (``view``) with
    ``values``: {block_id: text} for text inputs, {block_id: ("select", value)} for selects."""
    payload = fixture_json("slack/view_submission.json")
    payload["user"]["id"] = user_id
    submitted = payload["view"]
    submitted.update(id=view_id or f"V{uuid.uuid4().hex[:10].upper()}", callback_id=view["callback_id"],
                     private_metadata=view["private_metadata"], blocks=copy.deepcopy(view["blocks"]))
    state: dict[str, Any] = {}
    for block_id, value in values.items():
        if isinstance(value, tuple) and value[0] == "select":
            state[block_id] = {"value": {"type": "static_select", "selected_option": {
                "text": {"type": "plain_text", "text": str(value[1])}, "value": str(value[1])}}}
        else:
            state[block_id] = {"value": {"type": "plain_text_input", "value": value}}
    submitted["state"] = {"values": state}
    return payload


def post_interaction(client, payload: dict, when: datetime, secret: str = SLACK_SECRET, **headers: str):
    body = interaction_body(payload)
    return client.post("/slack/interactions", content=body, headers=slack_headers(body, when, secret, **headers))


def slash_command(text: str, user_id: str, *, trigger_id: str | None = None,
                  response_url: str | None = None) -> bytes:
    """fixtures/slack/slash_command.txt as ``/trial <text>`` from ``user_id``."""
    fields = dict(parse_qsl((FIXTURES / "slack" / "slash_command.txt").read_text(), keep_blank_values=True))
    fields.update(command="/trial", text=text, user_id=user_id,
                  trigger_id=trigger_id or f"{uuid.uuid4().int % 10**12}.47445629121.{uuid.uuid4().hex}")
    if response_url:
        fields["response_url"] = response_url
    return urlencode(fields).encode()


def post_command(client, body: bytes, when: datetime, secret: str = SLACK_SECRET):
    return client.post("/slack/commands", content=body, headers=slack_headers(body, when, secret))


class InteractiveFakeSlack(FakeSlack):
    """FakeSlack that also answers ``views.open`` (recording the view) and accepts posts to the
    response URLs it hands out (``response_url(n)``), as Slack's hooks do."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.views: list[dict[str, Any]] = []

    def response_url(self, n: int | str = 1) -> str:
        return f"{self.url}response/actions/T9TK3CUKW/{n}"

    def responses(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r.args for r in self.requests if r.method.startswith("response/")]

    def _answer(self, method, args, headers):
        if method.startswith("response/"):
            return 200, {}, {"ok": True}
        return super()._answer(method, args, headers)

    def _views_open(self, args):
        view = _json_arg(args.get("view"))
        if not args.get("trigger_id") or not isinstance(view, dict):
            return self._error(error="invalid_arguments")
        refused = _refused_view(view)
        if refused:
            return refused
        opened = {"id": f"V{next(self._ids):08d}", "hash": f"{next(self._ts)}.abc", **view}
        self.views.append(opened)
        return {"ok": True, "view": opened}


def _refused_view(view: dict[str, Any]) -> dict[str, Any] | None:
    """Slack's answer to a modal past Block Kit's limits (checked with slack_sdk's models)."""
    try:
        View(**view).to_dict()
    except (SlackObjectFormationError, TypeError) as exc:
        return {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": [f"[ERROR] {exc}"]}}
    return _refused_content({"blocks": view.get("blocks") or []})


def interactive_fake_slack() -> InteractiveFakeSlack:
    return add_test_staff(InteractiveFakeSlack())


# --- GitHub ----------------------------------------------------------------------------------------

def github_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(body: bytes, event: str, delivery: str | None = None, secret: str = GITHUB_SECRET) -> dict[str, str]:
    return {"content-type": "application/json", "x-github-event": event,
            "x-github-delivery": delivery or str(uuid.uuid4()), "x-hub-signature-256": github_signature(secret, body)}


# GitHub gives every comment an id of its own and moves an issue's updated_at with each change;
# trialflow tells a new event from a replayed one by them, so each payload made here gets its own.
_github_ids = itertools.count(3_000_000_000)


def _github_time() -> str:
    at = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=next(_github_ids) - 3_000_000_000)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def issue_labeled(issue_number: int, issue_body: str, label: str, login: str) -> dict:
    payload = fixture_json("github/webhooks/issues.labeled.json")
    payload["issue"].update(number=issue_number, body=issue_body, updated_at=_github_time())
    payload["label"]["name"] = label
    payload["issue"]["labels"].append(copy.deepcopy(payload["label"]))
    payload["sender"]["login"] = login
    return payload


def issue_comment(issue_number: int, issue_body: str, comment: str, login: str) -> dict:
    payload = fixture_json("github/webhooks/issue_comment.created.json")
    payload["issue"].update(number=issue_number, body=issue_body)
    payload["comment"].update(body=comment, id=next(_github_ids), created_at=_github_time())
    payload["comment"]["updated_at"] = payload["comment"]["created_at"]
    payload["comment"]["user"]["login"] = login
    payload["sender"]["login"] = login
    return payload


def issue_closed(issue_number: int, issue_body: str, login: str, repo: str = FIXTURE_REPO) -> dict:
    """fixtures/github/webhooks/issues.closed.json for our issue, closed by ``login`` in ``repo``
    (the fixture's own issue lives in another repository)."""
    payload = fixture_json("github/webhooks/issues.closed.json")
    # Each close is its own event: GitHub moves the issue's updated_at (what a replay's fingerprint reads).
    payload["issue"].update(number=issue_number, body=issue_body, updated_at=_github_time())
    payload["repository"]["full_name"] = repo
    payload["sender"]["login"] = login
    return payload


def comment_as(github, number: int, login: str, body: str) -> None:
    """A comment on a FakeGitHub issue, written by ``login`` (GitHub records the author; the fake
    authenticates every request as its bot, so the stored author is set to ``login``)."""
    from github import Auth, Github
    issue = Github(auth=Auth.Token(github.token), base_url=github.url).get_repo(github.repo).get_issue(number)
    created = issue.create_comment(body)
    with github.lock:
        [stored] = [c for c in github.comments if c["id"] == created.id]
        stored["user"] = {**stored["user"], "login": login, "type": "User"}


def post_webhook(client, event: str, payload: dict, delivery: str | None = None, secret: str = GITHUB_SECRET):
    body = json.dumps(payload).encode()
    return client.post("/github/webhooks", content=body, headers=github_headers(body, event, delivery, secret))


# --- instances -------------------------------------------------------------------------------------

def activity_signature(secret: str, timestamp: str, host: str, body: bytes) -> str:
    """HMAC-SHA256 of "<timestamp>.<host>.<body>", the host lower-cased as in the URL path."""
    message = f"{timestamp}.{host.lower()}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def post_activity(client, host: str, report: dict, when: datetime, secret: str = ACTIVITY_SECRET,
                  signed_for: str | None = None):
    """``signed_for``: sign for another host than the one posted to (a replayed report)."""
    body = json.dumps(report).encode()
    timestamp = str(int(when.timestamp()))
    return client.post(f"/api/instances/{host}/activity", content=body, headers={
        "content-type": "application/json", "x-trialflow-timestamp": timestamp,
        "x-trialflow-signature": activity_signature(secret, timestamp, signed_for or host, body)})
