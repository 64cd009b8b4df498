"""GitHub webhooks under generated deliveries, signed with X-Hub-Signature-256 as GitHub signs them:
GitHub's documented payloads (fixtures/github/webhooks) carrying the "instance ready" signal on
the issues trialflow filed, broken in one to three places. The answer is never a 5xx."""
from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import FUZZ, World
from tests.fuzz.mutations import dumps, header_value, mutated, raw_bytes, text
from tests.support.signed import GITHUB_SECRET, fixture_json, github_signature, issue_comment, issue_labeled

LOGINS = ("cody-cloud", "ada-admin", "carol-ce", "octocat")


@st.composite
def deliveries(draw, world: World) -> tuple[str, object]:
    trial_id = draw(st.sampled_from(sorted(world.issues)))
    number, body = world.issues[trial_id]
    login = draw(st.one_of(st.sampled_from(LOGINS), text()))
    kind = draw(st.sampled_from(("labeled", "comment", "comment", "ping", "other")))
    if kind == "labeled":
        event, base = "issues", issue_labeled(number, body, "instance-ready", login)
    elif kind == "comment":
        line = draw(st.sampled_from(("/ready https://umbrella-corp.sourcegraph.com", "/ready", "/ready not-a-url",
                                     "Instance: https://github.com/x", "/ready https://[::1]/")))
        event, base = "issue_comment", issue_comment(number, body, line, login)
    elif kind == "ping":
        event, base = "ping", fixture_json("github/webhooks/ping.json")
    else:
        event = "issues"
        base = fixture_json(draw(st.sampled_from(("github/webhooks/issues.opened.json", "github/webhooks/issues.closed.json"))))
    event = draw(st.one_of(st.just(event), st.just(event), st.just(event), text()))
    if draw(st.integers(0, 9)) == 0:
        return event, base
    return event, draw(mutated(base))


@FUZZ
@given(data=st.data())
def test_signed_github_deliveries_of_any_shape_are_answered_without_a_server_error(world, data):
    event, payload = data.draw(deliveries(world))
    body = data.draw(st.one_of(st.just(dumps(payload)), st.just(dumps(payload)), raw_bytes))
    headers: dict[str, str | bytes] = {"content-type": "application/json", "x-github-event": header_value(event),
                                       "x-github-delivery": str(uuid.uuid4()),
                                       "x-hub-signature-256": github_signature(GITHUB_SECRET, body)}
    mischief = data.draw(st.sampled_from(("none",) * 6 + ("delivery", "signature", "drop")))
    if mischief == "delivery":
        headers["x-github-delivery"] = header_value(data.draw(text()))
    elif mischief == "signature":
        headers["x-hub-signature-256"] = header_value(data.draw(text()))
    elif mischief == "drop":
        del headers[data.draw(st.sampled_from(sorted(headers)))]
    world.send("POST", "/github/webhooks", content=body, headers=headers)
