"""trialflow's own endpoints under generated requests: signups, the trials list and detail, lead
scoring events, instance activity reports (signed like an instance signs them), the funnel and
dashboard. Valid requests broken in one to three places; the answer is never a 5xx."""
from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import EVENTS_TOKEN
from tests.fuzz.conftest import FUZZ
from tests.fuzz.mutations import BIG_INTS, dumps, header_value, mutated, quoted, raw_bytes, text
from tests.support.signed import ACTIVITY_SECRET, activity_signature

CONTENT_TYPES = ("application/json", "application/json", "application/json", "text/plain", "", "application/x-www-form-urlencoded")


def query(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{quoted(k)}={quoted(v)}" for k, v in params)


@FUZZ
@given(data=st.data())
def test_signups_of_any_shape_are_answered_without_a_server_error(world, data):
    base = {"email": "kim@globex.com", "name": "Kim", "company": "Globex", "source": "website"}
    body = data.draw(st.one_of(mutated(base).map(dumps), mutated(base).map(dumps), raw_bytes))
    content_type = header_value(data.draw(st.sampled_from(CONTENT_TYPES)))
    world.send("POST", "/api/signups", content=body, headers={"content-type": content_type})


@FUZZ
@given(data=st.data())
def test_reading_trials_with_any_query_is_answered_without_a_server_error(world, data):
    names = st.sampled_from(("state", "domain", "limit", "offset", "weeks", "email"))
    values = st.one_of(text(), st.sampled_from(BIG_INTS).map(str), st.sampled_from(("triage", "active", "acme-corp.com")))
    params = data.draw(st.lists(st.tuples(st.one_of(names, text()), values), max_size=3))
    path = data.draw(st.sampled_from(("/api/trials", "/api/trials", "/api/trials/{id}", "/api/funnel", "/dashboard",
                                      "/api/events", "/healthz", "/metrics")))
    if path == "/api/trials/{id}":
        path = "/api/trials/" + quoted(data.draw(st.one_of(st.sampled_from(sorted(world.trials.values())), text())))
    headers = {"authorization": f"Bearer {EVENTS_TOKEN}"} if path == "/api/events" else {}
    world.send("GET", f"{path}?{query(params)}", headers=headers)


@FUZZ
@given(data=st.data())
def test_marketing_events_of_any_shape_are_answered_without_a_server_error(world, data):
    base = {"email": "bob@acme-corp.com", "kind": "demo_request", "at": (world.now - timedelta(hours=1)).isoformat()}
    body = data.draw(st.one_of(mutated(base).map(dumps), mutated(base).map(dumps), raw_bytes))
    auth = data.draw(st.one_of(st.just(f"Bearer {EVENTS_TOKEN}"), st.just(f"Bearer {EVENTS_TOKEN}"), text()))
    world.send("POST", "/api/events", content=body, headers={"content-type": "application/json",
                                                             "authorization": header_value(auth)})


@FUZZ
@given(data=st.data())
def test_signed_activity_reports_of_any_shape_are_answered_without_a_server_error(world, data):
    host = data.draw(st.one_of(st.sampled_from(("initech.sourcegraph.com", "umbrella-corp.sourcegraph.com",
                                                 "INITECH.sourcegraph.com.", "unknown.example.com")), text()))
    base = {"active_users": 3, "searches": 12, "code_intel_actions": 4, "repositories": 20,
            "at": (world.now - timedelta(minutes=10)).isoformat()}
    body = data.draw(st.one_of(mutated(base).map(dumps), mutated(base).map(dumps), st.just(dumps(base)), raw_bytes))
    timestamp = str(int(world.now.timestamp()) + data.draw(st.sampled_from((0, 0, 0, -30, 299, -301, 10**12))))
    timestamp = data.draw(st.one_of(st.just(timestamp), st.just(timestamp), text()))
    signed_ts = header_value(timestamp).decode("latin-1")
    try:
        signature = activity_signature(ACTIVITY_SECRET, signed_ts, host, body)
    except UnicodeEncodeError:   # a host with a lone surrogate cannot be signed as text; send any signature
        signature = "sha256=00"
    signature = data.draw(st.one_of(st.just(signature), st.just(signature), st.just(signature), text()))
    world.send("POST", f"/api/instances/{quoted(host)}/activity", content=body, headers={
        "content-type": "application/json", "x-trialflow-timestamp": header_value(signed_ts),
        "x-trialflow-signature": header_value(signature)})
