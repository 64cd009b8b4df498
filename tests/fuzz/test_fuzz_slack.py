"""Slack's two endpoints under generated requests, signed with the signing secret as Slack signs
them: real payloads (fixtures/slack) pressing trialflow's buttons and submitting its forms on real
trials, broken in one to three places. Whatever the shape, the answer is never a 5xx."""
from __future__ import annotations

import json
from urllib.parse import parse_qsl

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import FUZZ, World
from tests.fuzz.mutations import NASTY_STRINGS, dumps, form_body, header_value, mutated, raw_bytes, text
from tests.support.config import STAFF
from tests.support.signed import FIXTURES, SLACK_SECRET, block_action, fixture_json, slack_signature, view_submission
from trialflow.services import slack_blocks as sb
from trialflow.services.slack_modals import MODAL_ACTIONS

SLACK_USERS = [line.split(",")[3] for line in STAFF.strip().splitlines()[1:]]
FORM_VALUES = {
    "qualify": {"opportunity_id": "006X000000ABCDE"},
    "disqualify": {"reason": ("select", "other"), "note": "Student project"},
    "reassign": {"ae": ("select", "andy.ae@example.com"), "ce": ("select", "next")},
    "extend": {"days": ("select", "30"), "reason": "Evaluating SSO"},
}


@st.composite
def slack_headers(draw, body: bytes, when: int) -> dict[str, bytes | str]:
    timestamp = str(when)
    headers: dict[str, bytes | str] = {"content-type": "application/x-www-form-urlencoded",
                                       "x-slack-request-timestamp": timestamp,
                                       "x-slack-signature": slack_signature(SLACK_SECRET, timestamp, body)}
    mischief = draw(st.sampled_from(("none",) * 6 + ("timestamp", "signature", "content-type", "retry", "drop")))
    if mischief == "timestamp":
        weird = header_value(draw(text()))
        headers["x-slack-request-timestamp"] = weird
        # Signed over the weird timestamp too, so it is the timestamp alone that is wrong.
        headers["x-slack-signature"] = slack_signature(SLACK_SECRET, weird.decode("latin-1"), body)
    elif mischief == "signature":
        headers["x-slack-signature"] = header_value(draw(text()))
    elif mischief == "content-type":
        headers["content-type"] = header_value(draw(st.sampled_from(("application/json", "text/plain", "", "multipart/form-data"))))
    elif mischief == "retry":
        headers["x-slack-retry-num"] = header_value(draw(text()))
        headers["x-slack-retry-reason"] = header_value(draw(text()))
    elif mischief == "drop":
        del headers[draw(st.sampled_from(sorted(headers)))]
    return headers


@st.composite
def interaction_payloads(draw, world: World) -> dict:
    trial_id = draw(st.one_of(st.sampled_from(sorted(world.trials.values())), text()))
    user = draw(st.one_of(st.sampled_from(SLACK_USERS), text()))
    kind = draw(st.sampled_from(("button", "button", "form", "form", "fixture")))
    if kind == "button":
        action = draw(st.one_of(st.sampled_from(sorted(sb.ACTIONS)), text()))
        base = block_action(action, trial_id if isinstance(trial_id, str) else "x", user,
                            response_url=world.slack.response_url())
    elif kind == "form":
        name = draw(st.sampled_from(MODAL_ACTIONS))
        view = {"callback_id": f"trial:{name}", "blocks": [],
                "private_metadata": json.dumps({"trial_id": trial_id, "response_url": world.slack.response_url()})}
        base = view_submission(view, user, FORM_VALUES[name])
    else:
        base = fixture_json(draw(st.sampled_from(("slack/block_actions.json", "slack/block_actions.message_blocks.json",
                                                   "slack/view_submission.json"))))
    if draw(st.integers(0, 9)) == 0:
        return base  # now and then unbroken, so the fuzz also walks the paths that work
    return draw(mutated(base))


@FUZZ
@given(data=st.data())
def test_signed_slack_interactions_of_any_shape_are_answered_without_a_server_error(world, data):
    payload = data.draw(interaction_payloads(world))
    shape = data.draw(st.sampled_from(("form",) * 8 + ("raw", "junk-payload")))
    if shape == "form":
        body = form_body([("payload", dumps(payload).decode())])
    elif shape == "raw":
        body = data.draw(raw_bytes)
    else:
        body = form_body([("payload", data.draw(text()))])
    when = int(world.now.timestamp())
    world.send("POST", "/slack/interactions", content=body, headers=data.draw(slack_headers(body, when)))


@st.composite
def command_fields(draw, world: World) -> list[tuple[str, str]]:
    fields = dict(parse_qsl((FIXTURES / "slack" / "slash_command.txt").read_text(), keep_blank_values=True))
    targets = [*world.trials.values(), "sam@stark-industries.com", "acme-corp.com", "bob@acme-corp.com",
               "<mailto:bob@acme-corp.com|bob@acme-corp.com>", *NASTY_STRINGS[:12]]
    sub = draw(st.sampled_from(("status", "mine", "queue", "domain", "help", "")))
    args = draw(st.lists(st.one_of(st.sampled_from(targets), text()), max_size=3))
    fields.update(command="/trial", text=" ".join([sub, *args]), user_id=draw(st.one_of(st.sampled_from(SLACK_USERS), text())),
                  response_url=world.slack.response_url())
    items = list(fields.items())
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(("replace", "delete", "extra", "repeat")))
        index = draw(st.integers(0, max(len(items) - 1, 0)))
        if how == "extra" or not items:
            items.append((draw(text()), draw(text())))
        elif how == "replace":
            items[index] = (items[index][0], draw(text()))
        elif how == "delete":
            del items[index]
        else:
            items.append((items[index][0], draw(text())))
    return items


@FUZZ
@given(data=st.data())
def test_signed_slash_commands_of_any_shape_are_answered_without_a_server_error(world, data):
    body = data.draw(st.one_of(command_fields(world).map(form_body), raw_bytes))
    when = int(world.now.timestamp())
    world.send("POST", "/slack/commands", content=body, headers=data.draw(slack_headers(body, when)))
