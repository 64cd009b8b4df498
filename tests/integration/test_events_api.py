"""POST /api/events: marketing actions scored into the trial's MQL points; PQL grades from activity."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conftest import EVENTS_AUTH, LOOPBACK_CLIENT
from trialflow import scoring
from trialflow.db import tables
from trialflow.domain.trial import Trial, new_trial_id


def post(client, **body):
    return client.post("/api/events", json=body, headers=EVENTS_AUTH)


def score_of(client, trial_id):
    return client.get(f"/api/trials/{trial_id}").json()["lead_score"]


def test_a_demo_request_for_a_trial_makes_it_an_mql(client):
    trial_id = client.post("/api/signups", json={"email": "lee@randomcorp.dev"}).json()["trial_id"]
    r = post(client, email="Lee@RandomCorp.dev", kind="demo_request")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["points"] == 15 and body["mql_points"] == 15 and body["mql"] is True
    assert body["trial_id"] == trial_id and body["email"] == "lee@randomcorp.dev"
    assert score_of(client, trial_id) == {"mql_points": 15, "pql_grade": None}


def test_points_add_up_across_actions_and_reach_mql_at_15(client):
    trial_id = client.post("/api/signups", json={"email": "ann@smallshop.dev"}).json()["trial_id"]
    totals = []
    for kind in ["page_view", "page_view", "pricing_page_view", "form_submission"]:
        totals.append((post(client, email="ann@smallshop.dev", kind=kind).json()["mql_points"],
                       score_of(client, trial_id)["mql_points"]))
    # 1, 1+1=2, 2+5=7, 7+10=17
    assert totals == [(1, 1), (2, 2), (7, 7), (17, 17)]
    summary = client.get("/api/events", params={"email": "ann@smallshop.dev"}, headers=EVENTS_AUTH).json()
    assert summary["mql_points"] == 17 and summary["mql"] is True
    assert [e["kind"] for e in summary["events"]] == ["page_view", "page_view", "pricing_page_view", "form_submission"]


def test_events_before_the_signup_are_kept_and_counted_when_the_trial_appears(client, runtime):
    early = runtime.clock.now() - timedelta(days=3)
    assert post(client, email="kim@laterco.dev", kind="pricing_inquiry", at=early.isoformat()).json()["trial_id"] is None
    assert post(client, email="kim@laterco.dev", kind="page_view").json()["mql_points"] == 16
    trial_id = client.post("/api/signups", json={"email": "kim@laterco.dev"}).json()["trial_id"]
    # 15 (pricing inquiry) + 1 (page view)
    assert score_of(client, trial_id)["mql_points"] == 16
    events = client.get("/api/events", params={"email": "kim@laterco.dev"}, headers=EVENTS_AUTH).json()["events"]
    assert [e["trial_id"] for e in events] == [trial_id, trial_id]


def test_an_event_stored_while_its_signup_was_in_flight_is_counted_by_the_next_sweep(client, runtime):
    trial_id = client.post("/api/signups", json={"email": "kim@laterco.dev"}).json()["trial_id"]
    with runtime.uow() as uow:  # what POST /api/events stores when it cannot see the uncommitted trial yet
        uow.session.execute(tables.marketing_events.insert().values(
            email="kim@laterco.dev", kind="demo_request", points=15, at=runtime.clock.now(), trial_id=None))
        uow.commit()
    assert score_of(client, trial_id)["mql_points"] == 0
    with runtime.uow() as uow:
        assert scoring.grade_trials(uow.session, runtime.clock.now()).mql_attached == 1
        uow.commit()
    assert score_of(client, trial_id)["mql_points"] == 15
    with runtime.uow() as uow:  # a second sweep must not count it again
        assert scoring.grade_trials(uow.session, runtime.clock.now()).mql_attached == 0
        uow.commit()
    assert score_of(client, trial_id)["mql_points"] == 15


def test_a_signup_counts_its_earlier_events_in_its_own_transaction(client, runtime):
    post(client, email="joe@hookco.dev", kind="demo_request")
    with runtime.uow() as uow:
        trial = Trial(new_trial_id(), "joe@hookco.dev", "hookco.dev", runtime.clock.now())
        uow.session.add(trial)
        assert scoring.attach_marketing_events(uow.session, trial) == 15
        trial.fire("send_to_triage", actor="system", at=runtime.clock.now())
        uow.commit()
    assert score_of(client, trial.id)["mql_points"] == 15


@pytest.mark.parametrize("body, status, message", [
    ({"kind": "demo_request"}, 422, "email is required"),
    ({"email": "bob@acme-corp.com"}, 422, "kind is required"),
    ({"email": "not-an-email", "kind": "demo_request"}, 422, "needs exactly one @"),
    ({"email": "bob@acme-corp.com", "kind": "webinar"}, 422, "'webinar' is not a scored marketing action; kinds (points) are: form_submission (10), demo_request (15)"),
    ({"email": "bob@acme-corp.com", "kind": "page_view", "at": "yesterday"}, 422, "at must be an ISO-8601 time"),
    ({"email": "bob@acme-corp.com", "kind": "page_view", "at": "2099-01-01T00:00:00Z"}, 422, "is in the future"),
    ({"email": "bob@acme-corp.com", "kind": "page_view", "points": 100}, 422, "Unknown field(s): points"),
    (["bob@acme-corp.com"], 422, "The body must be a JSON object"),
])
def test_bad_events_are_refused_with_a_readable_message(client, body, status, message):
    r = client.post("/api/events", json=body, headers=EVENTS_AUTH)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert client.get("/api/events", params={"email": "bob@acme-corp.com"}, headers=EVENTS_AUTH).json()["events"] == []


def test_a_body_that_is_not_json_is_refused_with_422(client):
    r = client.post("/api/events", content=b"email=bob", headers={**EVENTS_AUTH, "content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422
    assert r.json()["error"].startswith("The body must be JSON")


def test_an_event_time_without_offset_is_taken_as_utc(client, runtime):
    r = post(client, email="ann@smallshop.dev", kind="page_view", at="2026-01-02T08:30:00")
    assert r.json()["at"] == "2026-01-02T08:30:00+00:00"


def _activity(runtime, host, at, **counts):
    with runtime.uow() as uow:
        uow.session.execute(tables.instance_activity.insert().values(host=host, at=at, **counts))
        uow.commit()


def grade(runtime):
    with runtime.uow() as uow:
        report = scoring.grade_trials(uow.session, runtime.clock.now(), config_dir=runtime.settings.config_dir)
        uow.commit()
    return report


def test_the_pql_grade_follows_instance_activity_since_the_trial_started(client, runtime):
    signup = client.post("/api/signups", json={"email": "bob@acme-corp.com"}).json()
    trial_id, host = signup["trial_id"], signup["redirect_url"].split("/")[2]
    start = runtime.clock.now()
    _activity(runtime, host, start - timedelta(days=1), active_users=50, searches=5000)  # before the trial: not counted
    runtime.clock.advance(days=1)
    assert grade(runtime).changed == [(trial_id, None, "D")]
    _activity(runtime, host, runtime.clock.now(), active_users=1)
    assert grade(runtime).changed == [(trial_id, "D", "C")]
    runtime.clock.advance(days=1)
    _activity(runtime, host, runtime.clock.now(), active_users=2, searches=12, code_intel_actions=1, repositories=1)
    runtime.clock.advance(days=1)
    _activity(runtime, host, runtime.clock.now(), active_users=1, searches=8)
    # users: max(1, 2, 1) = 2; searches: 0 + 12 + 8 = 20; code intel: 1; repositories: max = 1 -> B
    assert grade(runtime).changed == [(trial_id, "C", "B")]
    assert score_of(client, trial_id)["pql_grade"] == "B"
    assert grade(runtime).changed == []


def test_a_trial_without_an_instance_has_no_pql_grade(client, runtime):
    trial_id = client.post("/api/signups", json={"email": "lee@randomcorp.dev"}).json()["trial_id"]
    assert grade(runtime).graded == 0
    assert score_of(client, trial_id)["pql_grade"] is None


def test_grade_minimums_are_read_from_pql_csv_in_the_config_dir(client, runtime):
    (runtime.settings.config_dir / "pql.csv").write_text(
        "grade,active_users,searches,code_intel_actions,repositories\nA,1,0,0,0\nB,1,0,0,0\nC,1,0,0,0\nD,0,0,0,0\n")
    signup = client.post("/api/signups", json={"email": "bob@acme-corp.com"}).json()
    _activity(runtime, signup["redirect_url"].split("/")[2], runtime.clock.now(), active_users=1)
    assert grade(runtime).changed == [(signup["trial_id"], None, "A")]


def test_events_need_the_marketing_sites_token(client):
    body = {"email": "lee@randomcorp.dev", "kind": "demo_request"}
    assert client.post("/api/events", json=body).status_code == 401
    assert client.post("/api/events", json=body, headers={"Authorization": "Bearer guess"}).status_code == 401
    assert client.get("/api/events", params={"email": "lee@randomcorp.dev"}).status_code == 401
    assert client.get("/api/events", params={"email": "lee@randomcorp.dev"}, headers=EVENTS_AUTH).json()["events"] == []


def test_without_a_configured_token_events_are_refused_with_a_clear_message(db_url, config_dir, clock):
    from fastapi.testclient import TestClient

    from tests.conftest import make_settings
    from trialflow.api.app import create_app
    from trialflow.runtime import Runtime
    rt = Runtime(make_settings(db_url, config_dir, events_token=None), clock=clock)
    with TestClient(create_app(rt), client=LOOPBACK_CLIENT) as open_client:
        r = open_client.post("/api/events", json={"email": "lee@randomcorp.dev", "kind": "demo_request"},
                             headers=EVENTS_AUTH)
    rt.close()
    assert r.status_code == 503 and "TRIALFLOW_EVENTS_TOKEN" in r.json()["error"]
