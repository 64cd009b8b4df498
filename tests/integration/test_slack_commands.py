"""The /trial slash command over HTTP, signed like Slack signs it (the body is Slack's documented
slash-command request, fixtures/slack/slash_command.txt, with the command's fields changed)."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.conftest import LOOPBACK_CLIENT, make_settings
from tests.support.signed import FIXTURES, post_command, signing_settings, slash_command
from trialflow.api.app import create_app
from trialflow.clock import ManualClock
from trialflow.db import tables
from trialflow.runtime import Runtime
from trialflow.services.directory import Directory
from trialflow.services.trials import Command, run


@pytest.fixture
def settings(db_url, config_dir):
    return make_settings(db_url, config_dir, **signing_settings())


def signup(client, email: str, **extra) -> str:
    response = client.post("/api/signups", json={"email": email, **extra})
    assert response.status_code == 201, response.text
    return response.json()["trial_id"]


def trial_command(client, clock, text: str, user: str = "U0SDR0001", **kw) -> dict:
    response = post_command(client, slash_command(text, user, **kw), clock.now())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["response_type"] == "ephemeral"
    return answer


def set_score(runtime, trial_id: str, mql: int, grade: str | None) -> None:
    with runtime.session_factory() as s, s.begin():
        s.execute(update(tables.trials).where(tables.trials.c.id == trial_id).values(mql_points=mql, pql_grade=grade))


def test_slacks_documented_signed_request_is_verified_against_the_runtime_clock(db_url, config_dir):
    vector = next(v for v in json.loads((FIXTURES / "signatures.json").read_text()) if v["name"] == "slack_request_signing_v0")
    body = (FIXTURES / "slack" / "slash_command.txt").read_bytes()
    signed_at = datetime.fromtimestamp(int(vector["timestamp"]), UTC)
    headers = {"content-type": "application/x-www-form-urlencoded", "x-slack-request-timestamp": vector["timestamp"],
               "x-slack-signature": vector["expected_signature"]}
    clock = ManualClock(signed_at + timedelta(minutes=4))
    rt = Runtime(make_settings(db_url, config_dir, slack_signing_secret=vector["secret"]), clock=clock)
    with TestClient(create_app(rt), client=LOOPBACK_CLIENT) as client:
        accepted = client.post("/slack/commands", content=body, headers=headers)
        clock.advance(minutes=1, seconds=1)
        stale = client.post("/slack/commands", content=body, headers=headers)
        forged = client.post("/slack/commands", content=body.replace(b"roadrunner", b"coyote"),
                             headers={**headers, "x-slack-request-timestamp": str(int(clock.now().timestamp()))})
    rt.close()
    assert accepted.status_code == 200
    assert "not an active member of staff.csv" in accepted.json()["text"]   # U2CERLKJA is not our staff
    assert stale.status_code == 401
    assert forged.status_code == 401


def test_without_a_signing_secret_the_command_is_refused_with_a_clear_message(db_url, config_dir, clock):
    rt = Runtime(make_settings(db_url, config_dir), clock=clock)
    with TestClient(create_app(rt), client=LOOPBACK_CLIENT) as client:
        response = post_command(client, slash_command("help", "U0SDR0001"), clock.now())
    rt.close()
    assert response.status_code == 503 and "TRIALFLOW_SLACK_SIGNING_SECRET" in response.json()["error"]


def test_help_lists_the_subcommands_and_an_unknown_one_gets_help_too(client, clock):
    for text in ("help", "", "frobnicate"):
        answer = trial_command(client, clock, text)["text"]
        for sub in ("status", "mine", "queue", "domain"):
            assert f"/trial {sub}" in answer
    assert "I do not know `/trial frobnicate`" in trial_command(client, clock, "frobnicate")["text"]


def test_someone_who_is_not_staff_gets_no_trial_data(client, clock):
    signup(client, "bob@acme-corp.com")
    answer = trial_command(client, clock, "status acme-corp.com", user="U0STRANGER")["text"]
    assert "bob@acme-corp.com" not in answer and "staff.csv" in answer


def test_status_finds_a_trial_by_email_or_by_domain(client, clock):
    trial_id = signup(client, "bob@acme-corp.com", name="Bob")
    signup(client, "alice@acme-corp.com")
    by_email = trial_command(client, clock, "status Bob@Acme-Corp.com")["text"]
    assert trial_id in by_email and "*active*" in by_email and "https://pool-a.sourcegraph.com" in by_email
    assert "<@U0CE00001>" in by_email, "the CE is mentioned"
    assert "next: termination heads up on" in by_email
    by_domain = trial_command(client, clock, "status acme-corp.com")["text"]
    assert "bob@acme-corp.com" in by_domain and "alice@acme-corp.com" in by_domain
    # Slack turns a typed email into a mailto link before it reaches us.
    assert trial_id in trial_command(client, clock, "status <mailto:bob@acme-corp.com|bob@acme-corp.com>")["text"]
    assert "No trial for `nobody@acme-corp.com`" in trial_command(client, clock, "status nobody@acme-corp.com")["text"]
    assert "Usage" in trial_command(client, clock, "status")["text"]


def test_mine_lists_the_open_trials_where_the_caller_is_sdr_ae_or_ce(client, runtime, clock):
    bob = signup(client, "bob@acme-corp.com")          # Nina SDR, Alice AE, Carol CE
    tom = signup(client, "tom@tinytown.dev")
    run(runtime, Command(tom, "disqualify", "U0SDR0001", _person(runtime, "U0SDR0001"), {"reason": "student"}))
    carol = trial_command(client, clock, "mine", user="U0CE00001")["text"]
    assert bob in carol and tom not in carol
    ivy = trial_command(client, clock, "mine", user="U0SDR0001")["text"]
    assert tom not in ivy, "a finished trial is not open"
    assert "No open trials" in ivy


def _person(runtime, slack_id: str):
    with runtime.session_factory() as s:
        return Directory(s).by_slack_id(slack_id)


def test_the_queue_shows_triage_highest_lead_score_first(client, runtime, clock):
    low = signup(client, "lo@lowscore.dev")
    clock.advance(minutes=1)
    graded_b = signup(client, "b@gradeb.dev")
    clock.advance(minutes=1)
    graded_a = signup(client, "a@gradea.dev")
    clock.advance(minutes=1)
    top = signup(client, "top@bigdeal.dev")
    signup(client, "bob@acme-corp.com")                  # not in triage
    set_score(runtime, low, 0, None)
    set_score(runtime, graded_b, 10, "B")
    set_score(runtime, graded_a, 10, "A")
    set_score(runtime, top, 25, "D")
    answer = trial_command(client, clock, "queue")["text"]
    order = [tid for tid in sorted((top, graded_a, graded_b, low), key=answer.index)]
    assert order == [top, graded_a, graded_b, low]
    assert "MQL 25 (MQL)" in answer and "bob@acme-corp.com" not in answer
    assert "*Triage queue* (4," in answer


def test_a_domain_change_raises_the_issue_with_the_checklist_and_tells_the_ae(client, runtime, clock):
    trial_id = signup(client, "bob@acme-corp.com")
    answer = trial_command(client, clock, "domain bob@acme-corp.com Acme-Corp", user="U0CE00001")["text"]
    assert answer.startswith(":white_check_mark:") and "acme-corp" in answer
    with runtime.session_factory() as s:
        rows = {r.kind: r.payload for r in s.execute(select(tables.outbox.c.kind, tables.outbox.c.payload).where(
            tables.outbox.c.trial_id == trial_id, tables.outbox.c.key.like("%request_domain_change%")))}
    issue = rows["github.issue"]
    assert issue["issue_kind"] == "domain-change" and "pool-a.sourcegraph.com → acme-corp.sourcegraph.com" in issue["title"]
    for breaks in ("SSO", "permission syncing", "webhooks", "hard-coded link"):
        assert breaks in issue["body"]
    assert "<@U0AE00001>" in rows["slack.message"]["text"] and "buying signal" in rows["slack.message"]["text"]
    history = client.get(f"/api/trials/{trial_id}").json()["history"]
    assert history[-1]["trigger"] == "request_domain_change" and history[-1]["actor"] == "U0CE00001"


def test_a_domain_change_is_refused_politely_when_it_does_not_apply(client, clock):
    triage = signup(client, "sam@stark-industries.com")
    assert "no longer applies" in trial_command(client, clock, f"domain {triage} stark", user="U0ADMIN01")["text"]
    active = signup(client, "bob@acme-corp.com")
    assert "letters, digits and dashes" in trial_command(client, clock, f"domain {active} acme_corp!", user="U0CE00001")["text"]
    assert "the trial's CE or AE" in trial_command(client, clock, f"domain {active} acme", user="U0CE00002")["text"]
    assert "Usage" in trial_command(client, clock, "domain acme")["text"]
    assert client.get(f"/api/trials/{active}").json()["history"][-1]["trigger"] == "claim_pool_instance"


def test_the_same_domain_command_delivered_twice_acts_once(client, runtime, clock):
    trial_id = signup(client, "bob@acme-corp.com")
    body = slash_command("domain bob@acme-corp.com acme-corp", "U0CE00001", trigger_id="4242.4242.abcd")
    first = post_command(client, body, clock.now()).json()["text"]
    second = post_command(client, body, clock.now()).json()["text"]
    assert first.startswith(":white_check_mark:") and "already handled" in second
    history = client.get(f"/api/trials/{trial_id}").json()["history"]
    assert [h["trigger"] for h in history].count("request_domain_change") == 1
