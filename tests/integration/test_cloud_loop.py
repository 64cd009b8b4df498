"""The cloud team's requests after they are filed: completed by a closed issue or a /done comment
(from the cloud team only, on the very issue trialflow opened), chased once a day past their SLA;
and the usage polls the sweep sends to live trials' instances."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.conftest import make_settings
from tests.support.signed import issue_closed, issue_comment, post_webhook, signing_settings
from trialflow.api.app import create_app
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.runtime import Runtime
from trialflow.services.directory import Directory
from trialflow.services.reference import load_reference_data
from trialflow.services.signups import SignupInput, submit_signup
from trialflow.services.sweep import sweep
from trialflow.services.trials import Command, run


@pytest.fixture
def settings(db_url, config_dir, github):
    return make_settings(db_url, config_dir, cloud_sla_hours=24, **signing_settings(), **github.settings())


def deliver(runtime) -> None:
    Deliverer(runtime, {"github": GitHubTransport(runtime.settings, seconds_between_writes=0),
                        "slack": DryRunTransport("slack"), "email": DryRunTransport("email")}).drain_all()


def terminated(client, runtime, github) -> tuple[str, dict]:
    """gina@globex.com's trial, terminated by an admin; its termination issue as GitHub holds it."""
    trial_id = client.post("/api/signups", json={"email": "gina@globex.com"}).json()["trial_id"]
    with runtime.session_factory() as s:
        admin = Directory(s).by_slack_id("U0ADMIN01")
    run(runtime, Command(trial_id, "terminate", "U0ADMIN01", admin, {"reason": "not a fit"}))
    deliver(runtime)
    [issue] = [i for i in github.issues if i["title"].startswith("Terminate cloud trial instance")]
    return trial_id, issue


def request_row(runtime, kind: str = "termination"):
    with runtime.session_factory() as s:
        return s.execute(select(tables.cloud_requests).where(tables.cloud_requests.c.kind == kind)).one()


def test_a_done_comment_from_the_cloud_team_completes_the_request_once(client, runtime, github):
    trial_id, issue = terminated(client, runtime, github)
    first = post_webhook(client, "issue_comment", issue_comment(issue["number"], issue["body"], "/done", "cody-cloud"))
    assert first.json() == {"status": "request_done", "kind": "termination", "trial_id": trial_id,
                            "number": issue["number"]}
    again = post_webhook(client, "issues", issue_closed(issue["number"], issue["body"], "ada-admin"))
    assert again.json()["status"] == "ignored" and "already completed by cody-cloud" in again.json()["reason"]
    history = client.get(f"/api/trials/{trial_id}").json()["history"]
    assert [h["trigger"] for h in history if h["trigger"] == "confirm_request_done"] == ["confirm_request_done"]
    assert history[-1]["actor"] == "cody-cloud" and history[-1]["detail"]["how"] == "/done"
    row = request_row(runtime)
    assert row.completed_by == "cody-cloud" and row.completed_at is not None
    with runtime.session_factory() as s:
        assert s.scalar(select(tables.instances.c.teardown_confirmed_at).where(
            tables.instances.c.trial_id == trial_id)) is not None


def test_a_closed_issue_that_trialflow_did_not_open_for_the_request_changes_nothing(client, runtime, github):
    trial_id, issue = terminated(client, runtime, github)
    someone_elses = post_webhook(client, "issues", issue_closed(issue["number"] + 40, issue["body"], "cody-cloud"))
    assert someone_elses.json()["status"] == "ignored"
    other_repo = post_webhook(client, "issues", issue_closed(issue["number"], issue["body"], "cody-cloud",
                                                             repo="someone/else"))
    assert other_repo.json()["status"] == "ignored"
    refused = post_webhook(client, "issue_comment", issue_comment(issue["number"], issue["body"], "/done", "carol-ce"))
    assert refused.json()["status"] == "refused"
    deliver(runtime)
    assert any("not a `cloud` or `admin` member" in c["body"] for c in github.comments_on(issue["number"]))
    assert request_row(runtime).completed_at is None
    assert "confirm_request_done" not in [h["trigger"] for h in client.get(f"/api/trials/{trial_id}").json()["history"]]


def test_a_closed_pool_replenish_issue_completes_a_request_with_no_trial(db_url, config_dir, github, clock):
    rt = Runtime(make_settings(db_url, config_dir, pool_low_water=10, **signing_settings(), **github.settings()),
                 clock=clock)
    load_reference_data(rt.session_factory, config_dir, clock.now())
    sweep(rt)
    deliver(rt)
    [issue] = [i for i in github.issues if i["title"].startswith("Pre-provision more")]
    with TestClient(create_app(rt)) as client:
        done = post_webhook(client, "issues", issue_closed(issue["number"], issue["body"], "cody-cloud")).json()
    rt.close()
    assert done == {"status": "request_done", "kind": "pool-replenish", "trial_id": None, "number": issue["number"]}


def test_a_request_open_past_its_sla_is_chased_on_its_issue_once_a_day(client, runtime, github, clock):
    _, issue = terminated(client, runtime, github)
    clock.advance(hours=23)
    sweep(runtime)
    deliver(runtime)
    assert github.comments_on(issue["number"]) == [], "within the SLA"
    clock.advance(hours=2)
    report = sweep(runtime)
    sweep(runtime)
    deliver(runtime)
    assert "1 cloud-team request(s) past their SLA chased" in report.actions
    [chase] = github.comments_on(issue["number"])
    assert "open for 25 hours" in chase["body"] and "/done" in chase["body"]
    clock.advance(days=1)
    sweep(runtime)
    deliver(runtime)
    assert len(github.comments_on(issue["number"])) == 2
    post_webhook(client, "issues", issue_closed(issue["number"], issue["body"], "cody-cloud"))
    clock.advance(days=1)
    sweep(runtime)
    deliver(runtime)
    assert len(github.comments_on(issue["number"])) == 2, "done: no more chasing"


# --- usage polls ----------------------------------------------------------------------------------

def polls(runtime) -> list[str]:
    with runtime.session_factory() as s:
        o = tables.outbox.c
        return [p["host"] for p in s.scalars(select(o.payload).where(o.kind == "instance.usage").order_by(o.id))]


def test_live_trials_instances_are_asked_every_poll_period_and_only_those_trialflow_holds_a_token_for(
        db_url, config_dir, clock, tmp_path):
    tokens = tmp_path / "tokens.csv"
    tokens.write_text("pool-a.sourcegraph.com,sgp_onlyPoolAToken0123456789\n")
    rt = Runtime(make_settings(db_url, config_dir, instance_tokens_file=tokens, usage_poll_hours=6), clock=clock)
    load_reference_data(rt.session_factory, config_dir, clock.now())
    for email in ("bob@acme-corp.com", "gina@globex.com"):          # pool-a (token), pool-b (none)
        client_signup(rt, email)
    sweep(rt)
    sweep(rt)
    assert polls(rt) == ["pool-a.sourcegraph.com"], "once per period, and never without a token"
    clock.advance(hours=6, minutes=1)
    sweep(rt)
    assert polls(rt) == ["pool-a.sourcegraph.com"] * 2
    with rt.session_factory() as s, s.begin():
        s.execute(update(tables.trials).where(tables.trials.c.email == "bob@acme-corp.com").values(state="converted"))
    clock.advance(hours=7)
    sweep(rt)
    rt.close()
    assert len(polls(rt)) == 2, "a converted trial's instance is no longer asked"


def client_signup(rt, email: str) -> None:
    submit_signup(rt.uow, rt.settings, rt.clock, SignupInput(email=email))


def test_without_any_token_nothing_is_polled(runtime, clock):
    client_signup(runtime, "bob@acme-corp.com")
    clock.advance(days=1)
    sweep(runtime)
    assert polls(runtime) == []
