"""Requests of the wrong shape, each of which answered 500 before issue 10 (unless its test says
otherwise): now a 4xx with a sentence, nothing changed, no traceback logged. Signed ones are
signed exactly as Slack, GitHub or an instance signs, so it is the shape alone that is wrong.

``world.send`` (tests/support/world.py) checks what every answer must: below 500, no traceback or
error in the logs, and a 4xx that is JSON ``{"error": ...}`` and left every table as it was.
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import EVENTS_TOKEN
from tests.fuzz.mutations import form_body
from tests.support.signed import (
    ACTIVITY_SECRET,
    activity_signature,
    block_action,
    fixture_json,
    github_headers,
    interaction_body,
    slack_headers,
    view_submission,
)
from tests.support.world import World


def post_interaction(world: World, payload: dict):
    body = interaction_body(payload)
    return world.send("POST", "/slack/interactions", content=body, headers=slack_headers(body, world.now))


def post_webhook(world: World, event: str, payload: dict | bytes):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return world.send("POST", "/github/webhooks", content=body, headers=github_headers(body, event))


def button(world: World, action: str = "qualify", **changes) -> dict:
    payload = block_action(action, world.trials["triage"], "U0SDR0001", response_url=world.slack.response_url())
    payload.update(changes)
    return payload


def form(world: World, **metadata) -> dict:
    view = {"callback_id": "trial:qualify", "blocks": [],
            "private_metadata": json.dumps({"trial_id": world.trials["triage"], **metadata})}
    return view_submission(view, "U0SDR0001", {"opportunity_id": "006X"})


def refused(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    for word in words:
        assert word in response.json()["error"], response.json()


# --- the examples in the issue -----------------------------------------------------------------

def test_a_block_action_whose_actions_is_a_list_of_lists_is_a_400(world):
    refused(post_interaction(world, button(world, actions=[[{"action_id": "trial:qualify"}]])), 400, "actions.0")


def test_a_block_action_whose_actions_is_an_object_is_a_400(world):
    refused(post_interaction(world, button(world, actions={"action_id": "trial:qualify"})), 400, "actions")


def test_a_view_submission_whose_view_is_a_list_is_a_400(world):
    payload = form(world)
    payload["view"] = [payload["view"]]
    refused(post_interaction(world, payload), 400, "view")


def test_an_issues_event_whose_issue_is_a_list_is_a_400(world):
    payload = fixture_json("github/webhooks/issues.labeled.json")
    payload["issue"] = [payload["issue"]]
    refused(post_webhook(world, "issues", payload), 400, "issue")


def post_activity(world: World, report: dict, timestamp: bytes | None = None):
    body = json.dumps(report).encode()
    signed = str(int(world.now.timestamp()))
    return world.send("POST", "/api/instances/initech.sourcegraph.com/activity", raw_headers=True, content=body, headers={
        "content-type": "application/json", "x-trialflow-timestamp": timestamp or signed.encode(),
        "x-trialflow-signature": activity_signature(ACTIVITY_SECRET, signed, "initech.sourcegraph.com", body)})


def test_an_activity_report_at_a_time_before_year_one_in_utc_is_a_422(world):
    refused(post_activity(world, {"active_users": 1, "at": "0001-01-01T00:00:00+01:00"}), 422,
            "at must be an ISO-8601 time")


def test_an_activity_timestamp_of_non_ascii_digits_is_a_401(world):
    # "²³¹".isdigit() is True, and int("²³¹") raises.
    refused(post_activity(world, {"active_users": 1}, timestamp="²³¹".encode("latin-1")), 401, "X-Trialflow-Timestamp")


def test_a_trials_offset_past_a_64_bit_integer_is_a_422(world):
    refused(world.send("GET", "/api/trials?offset=9223372036854775808"), 422, "offset")


def test_a_response_url_that_is_not_a_url_is_a_400_at_once_and_nothing_is_posted(world):
    # (Before: 200, then slack_sdk raised in the background task.)
    response = post_interaction(world, button(world, "terminate", response_url="not a url"))
    refused(response, 400, "response_url")
    assert world.slack.responses() == []


# --- more that the fuzz suites found -----------------------------------------------------------

def test_a_button_whose_action_id_holds_a_lone_surrogate_is_a_400(world):
    # JSON may escape one (\ud800); it cannot be encoded back into the answer or stored.
    refused(post_interaction(world, button(world, actions=[{"action_id": "trial:\ud800", "value": "x"}])), 400,
            "surrogate")


def test_a_form_whose_private_metadata_holds_a_lone_surrogate_is_a_400(world):
    payload = form(world)
    payload["view"]["private_metadata"] = json.dumps({"trial_id": "\ud800"})
    refused(post_interaction(world, payload), 400, "private_metadata")


def test_a_form_whose_metadata_response_url_is_not_a_url_is_a_400(world):
    # (Before: 200, then slack_sdk refused the URL in the background task.)
    refused(post_interaction(world, form(world, response_url="javascript:alert(1)")), 400, "private_metadata")


@pytest.mark.parametrize("path", ["/slack/interactions", "/slack/commands"])
def test_a_slack_signature_header_with_non_ascii_characters_is_a_401(world, path):
    body = form_body([("payload", "{}")])
    headers = {**slack_headers(body, world.now), "x-slack-signature": "v0=é".encode("latin-1")}
    refused(world.send("POST", path, content=body, headers=headers), 401, "signature")


@pytest.mark.parametrize("path", ["/slack/interactions", "/slack/commands"])
def test_a_signed_slack_form_whose_escapes_are_not_utf8_is_a_400(world, path):
    # (Before: read as U+FFFD and answered as if Slack had sent it.)
    body = b"payload=%7B%7D&text=caf%E9"
    refused(world.send("POST", path, content=body, headers=slack_headers(body, world.now)), 400, "UTF-8")


def test_a_signed_interaction_nested_deeper_than_python_recurses_is_a_400(world):
    body = form_body([("payload", "[" * 20_000 + "]" * 20_000)])
    refused(world.send("POST", "/slack/interactions", content=body, headers=slack_headers(body, world.now)), 400,
            "not valid JSON")


def test_a_slack_user_id_holding_nul_is_a_400(world):
    # (Before: a 500 on PostgreSQL, which refuses NUL in text.)
    payload = button(world)
    payload["user"]["id"] = "U0SDR\x000001"
    refused(post_interaction(world, payload), 400, "NUL")


def test_a_slash_command_from_a_user_id_holding_nul_is_a_400(world):
    # (Before: a 500 on PostgreSQL.)
    fields = [("command", "/trial"), ("text", "queue"), ("user_id", "U0SDR\x000001"), ("trigger_id", "1.2.3")]
    body = form_body(fields)
    refused(world.send("POST", "/slack/commands", content=body, headers=slack_headers(body, world.now)), 400, "NUL")


def test_a_github_comment_holding_a_lone_surrogate_is_a_400(world):
    payload = fixture_json("github/webhooks/issue_comment.created.json")
    payload["comment"]["body"] = "/ready https://\ud800.example.com"
    refused(post_webhook(world, "issue_comment", payload), 400, "surrogate")


def test_a_github_ping_whose_zen_is_nan_is_a_400(world):
    # Python's json reads NaN, and the answer echoed it back: JSON cannot carry it.
    body = json.dumps(fixture_json("github/webhooks/ping.json")).replace('"zen": ', '"zen": NaN, "_": ').encode()
    refused(post_webhook(world, "ping", body), 400, "not valid JSON")


def test_a_marketing_event_at_a_time_before_year_one_in_utc_is_a_422(world):
    response = world.send("POST", "/api/events", json={"email": "bob@acme-corp.com", "kind": "page_view",
                                                       "at": "0001-01-01T00:00:00+01:00"},
                          headers={"authorization": f"Bearer {EVENTS_TOKEN}"})
    refused(response, 422, "at must be an ISO-8601 time")


def test_a_trial_id_holding_nul_is_a_404(world):
    # (Before: a 500 on PostgreSQL.)
    refused(world.send("GET", "/api/trials/tr_%00"), 404, "trial ids look like")


def test_a_signup_whose_name_holds_a_lone_surrogate_is_a_422_naming_the_field(world):
    # (Before: the failsafe's 202, and support was emailed about bad input.)
    response = world.send("POST", "/api/signups", content=b'{"email": "kim@globex.com", "name": "\\ud800"}',
                          headers={"content-type": "application/json"})
    refused(response, 422, "surrogate")
    assert response.json()["field"] == "name"


def test_an_unknown_route_and_a_wrong_method_answer_in_json_with_allow(world):
    # (Before: FastAPI's {"detail": ...}, and Allow named only POST for /api/events.)
    refused(world.send("GET", "/api/nothing-here"), 404, "nothing at this address")
    response = world.send("DELETE", "/api/events")
    refused(response, 405, "method")
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST"}
