"""Instances report usage over HTTP (HMAC-signed); "inactive at day 15" is decided from it."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import LOOPBACK_CLIENT, make_settings
from tests.support.signed import activity_signature, post_activity, signing_settings
from trialflow.api.app import create_app
from trialflow.db import tables
from trialflow.runtime import Runtime
from trialflow.services.sweep import sweep

USE = {"active_users": 3, "searches": 41, "code_intel_actions": 7, "repositories": 12}
IDLE = {"active_users": 0, "searches": 0, "code_intel_actions": 0, "repositories": 12}


@pytest.fixture
def settings(db_url, config_dir):
    return make_settings(db_url, config_dir, **signing_settings())


def claim(client, email: str) -> dict:
    body = client.post("/api/signups", json={"email": email}).json()
    assert body["state"] == "active", body
    return {"trial_id": body["trial_id"], "host": body["redirect_url"].split("//")[1].split("/")[0]}


def last_activity(runtime, trial_id: str):
    with runtime.session_factory() as s:
        return s.scalar(select(tables.trials.c.last_activity_at).where(tables.trials.c.id == trial_id))


def reports(runtime) -> int:
    with runtime.session_factory() as s:
        return s.scalar(select(func.count()).select_from(tables.instance_activity))


def test_a_signed_report_with_use_is_recorded_and_moves_the_trials_last_activity(client, runtime, clock):
    bob = claim(client, "bob@acme-corp.com")
    clock.advance(days=3)
    response = post_activity(client, bob["host"], USE, clock.now())
    assert response.status_code == 201
    assert response.json()["trial_id"] == bob["trial_id"] and response.json()["active"] is True
    assert last_activity(runtime, bob["trial_id"]) == clock.now().replace(microsecond=0)


def test_a_report_of_no_use_is_kept_but_is_not_activity(client, runtime, clock):
    bob = claim(client, "bob@acme-corp.com")
    response = post_activity(client, bob["host"], IDLE, clock.now())
    assert response.status_code == 201 and response.json()["active"] is False
    assert reports(runtime) == 1
    assert last_activity(runtime, bob["trial_id"]) is None


def grade(runtime, trial_id: str):
    with runtime.session_factory() as s:
        return s.scalar(select(tables.trials.c.pql_grade).where(tables.trials.c.id == trial_id))


def test_a_report_grades_the_trial_at_once_without_waiting_for_the_sweep(client, runtime, clock):
    bob = claim(client, "bob@acme-corp.com")
    gina = claim(client, "gina@globex.com")
    post_activity(client, bob["host"], USE, clock.now())        # 3 users, 41 searches: grade B
    post_activity(client, gina["host"], IDLE, clock.now())      # nothing used: grade D
    assert (grade(runtime, bob["trial_id"]), grade(runtime, gina["trial_id"])) == ("B", "D")


def test_a_late_report_never_moves_activity_back(client, runtime, clock):
    bob = claim(client, "bob@acme-corp.com")
    clock.advance(days=5)
    post_activity(client, bob["host"], USE, clock.now())
    latest = last_activity(runtime, bob["trial_id"])
    earlier = {**USE, "at": (clock.now() - timedelta(days=2)).isoformat()}
    assert post_activity(client, bob["host"], earlier, clock.now()).status_code == 201
    assert last_activity(runtime, bob["trial_id"]) == latest


def test_unsigned_forged_stale_or_future_reports_are_refused(client, runtime, clock):
    bob = claim(client, "bob@acme-corp.com")
    body = json.dumps(USE).encode()
    url = f"/api/instances/{bob['host']}/activity"
    assert client.post(url, content=body).status_code == 401
    assert post_activity(client, bob["host"], USE, clock.now(), secret="not-the-secret").status_code == 401
    assert post_activity(client, bob["host"], USE, clock.now() - timedelta(minutes=5, seconds=1)).status_code == 401
    assert post_activity(client, bob["host"], USE, clock.now() + timedelta(minutes=5, seconds=1)).status_code == 401
    ts = str(int(clock.now().timestamp()))
    signed = {"x-trialflow-timestamp": ts, "x-trialflow-signature": activity_signature("tests-activity-secret-8c9d0e1f", ts, bob["host"], body)}
    tampered = body.replace(b'"active_users": 3', b'"active_users": 9')
    assert client.post(url, content=tampered, headers=signed).status_code == 401
    assert client.post(url, content=body, headers={**signed, "x-trialflow-timestamp": "soon"}).status_code == 401
    assert reports(runtime) == 0 and last_activity(runtime, bob["trial_id"]) is None


def test_a_replayed_report_is_a_no_op_and_after_five_minutes_is_refused(client, runtime, clock):
    bob = claim(client, "bob@acme-corp.com")
    body = json.dumps(USE).encode()
    ts = str(int(clock.now().timestamp()))
    headers = {"x-trialflow-timestamp": ts, "x-trialflow-signature": activity_signature("tests-activity-secret-8c9d0e1f", ts, bob["host"], body)}
    url = f"/api/instances/{bob['host']}/activity"
    assert client.post(url, content=body, headers=headers).status_code == 201
    replay = client.post(url, content=body, headers=headers)
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    clock.advance(minutes=5, seconds=1)
    assert client.post(url, content=body, headers=headers).status_code == 401
    assert reports(runtime) == 1


def test_a_report_signed_for_one_host_is_refused_for_another(client, runtime, clock):
    bob = claim(client, "bob@acme-corp.com")
    gina = claim(client, "gina@globex.com")
    replayed = post_activity(client, gina["host"], USE, clock.now(), signed_for=bob["host"])
    assert replayed.status_code == 401 and "host" in replayed.json()["error"]
    assert reports(runtime) == 0 and last_activity(runtime, gina["trial_id"]) is None
    # The host is signed lower-cased, as it appears in the path: a capitalised path is the same host.
    assert post_activity(client, gina["host"].upper(), USE, clock.now()).status_code == 201


def test_an_unknown_host_is_404_and_a_listed_instance_without_a_trial_is_recorded(client, runtime, clock):
    assert post_activity(client, "nowhere.sourcegraph.com", USE, clock.now()).status_code == 404
    listed = post_activity(client, "initech.sourcegraph.com", USE, clock.now())   # live in instances.csv
    assert listed.status_code == 201 and listed.json()["trial_id"] is None


def test_a_bad_report_is_422_with_the_field(client, clock):
    bob = claim(client, "bob@acme-corp.com")
    for report, field in (({**USE, "searches": -1}, "searches"), ({**USE, "searches": "many"}, "searches"),
                          ({**USE, "mood": "happy"}, "mood"), ({**USE, "at": "tomorrow"}, "at"),
                          ({**USE, "at": (clock.now() + timedelta(hours=1)).isoformat()}, "at")):
        response = post_activity(client, bob["host"], report, clock.now())
        assert response.status_code == 422 and response.json()["field"] == field, report


def test_without_an_activity_secret_reports_are_refused_with_a_clear_message(db_url, config_dir, clock):
    rt = Runtime(make_settings(db_url, config_dir), clock=clock)
    with TestClient(create_app(rt), client=LOOPBACK_CLIENT) as client:
        response = post_activity(client, "pool-a.sourcegraph.com", USE, clock.now())
    rt.close()
    assert response.status_code == 503 and "TRIALFLOW_ACTIVITY_SECRET" in response.json()["error"]


def test_day_15_extends_the_trial_that_reported_use_and_terminates_the_one_that_did_not(client, runtime, clock):
    used = claim(client, "bob@acme-corp.com")
    idle = claim(client, "gina@globex.com")
    clock.advance(days=2)
    post_activity(client, used["host"], USE, clock.now())
    post_activity(client, idle["host"], IDLE, clock.now())
    clock.advance(days=13, hours=1)
    report = sweep(runtime)
    states = {t: client.get(f"/api/trials/{t}").json()["state"] for t in (used["trial_id"], idle["trial_id"])}
    assert states == {used["trial_id"]: "extended", idle["trial_id"]: "terminated"}
    # the idle one also got its day-12 heads-up and its onboarding tip; both, the prospect's notice; the used
    # one, its first check-in (the report on day 2 was its first use)
    assert report.trials_touched == 7


def test_a_report_sent_in_the_same_second_as_the_trial_started_counts_as_activity(client, runtime, clock):
    clock.set(clock.now().replace(microsecond=600_000))  # the trial starts mid-second (claimed at signup)
    bob = claim(client, "bob@acme-corp.com")
    # Signed with the same second, so the report is timed 600 ms before the start: it still counts.
    assert post_activity(client, bob["host"], USE, clock.now()).status_code == 201
    with runtime.session_factory() as s:
        started, grade = s.execute(select(tables.trials.c.started_at, tables.trials.c.pql_grade)
                                   .where(tables.trials.c.id == bob["trial_id"])).one()
    assert last_activity(runtime, bob["trial_id"]) < started and grade == "B"
    clock.advance(days=15, hours=1)
    sweep(runtime)
    assert client.get(f"/api/trials/{bob['trial_id']}").json()["state"] == "extended"
