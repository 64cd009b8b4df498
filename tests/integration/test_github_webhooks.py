"""GitHub webhooks over HTTP: GitHub's documented payloads (fixtures/github/webhooks), changed only
in labels, bodies and logins, signed with X-Hub-Signature-256; the cloud team's "instance ready"."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from github import Auth, Github
from sqlalchemy import func, select

from tests.conftest import make_settings
from tests.support.fake_github import FakeGitHub
from tests.support.signed import (FIXTURE_REPO, fixture_json, github_headers, issue_comment, issue_labeled,
                                  post_webhook, signing_settings)
from trialflow.api.app import create_app
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.runtime import Runtime
from trialflow.services.directory import Directory
from trialflow.services.trials import Command, run


@pytest.fixture
def settings(db_url, config_dir):
    return make_settings(db_url, config_dir, **signing_settings(github_repo=FIXTURE_REPO))


def person(runtime, slack_id: str):
    with runtime.session_factory() as s:
        return Directory(s).by_slack_id(slack_id)


def requested_trial(client, runtime, email: str = "sam@stark-industries.com", company: str = "Stark Industries") -> str:
    trial_id = client.post("/api/signups", json={"email": email, "name": "Sam", "company": company}).json()["trial_id"]
    run(runtime, Command(trial_id, "qualify", "U0SDR0001", person(runtime, "U0SDR0001"), {"opportunity_id": "006Q"}))
    return trial_id


def request_body(runtime, trial_id: str) -> str:
    """The instance-request issue's body, as trialflow writes it (with its hidden marker)."""
    with runtime.session_factory() as s:
        [payload] = [p for p in s.scalars(select(tables.outbox.c.payload).where(tables.outbox.c.trial_id == trial_id,
                                                                                 tables.outbox.c.kind == "github.issue"))]
    assert payload["issue_kind"] == "instance-request"
    return payload["body"]


def trial(client, trial_id: str) -> dict:
    return client.get(f"/api/trials/{trial_id}").json()


def counts(runtime) -> tuple[int, int, int]:
    with runtime.session_factory() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in
                     (tables.trial_history, tables.outbox, tables.github_deliveries))


# --- verification ---------------------------------------------------------------------------------

def test_unsigned_forged_or_tampered_deliveries_are_refused_and_change_nothing(client, runtime):
    trial_id = requested_trial(client, runtime)
    payload = issue_labeled(7, request_body(runtime, trial_id) + "\nInstance: https://stark.sourcegraph.com", "instance-ready", "cody-cloud")
    body = json.dumps(payload).encode()
    before = counts(runtime)
    headers = github_headers(body, "issues")
    missing = {k: v for k, v in headers.items() if k != "x-hub-signature-256"}
    assert client.post("/github/webhooks", content=body, headers=missing).status_code == 401
    assert post_webhook(client, "issues", payload, secret="not-the-webhook-secret").status_code == 401
    tampered = body.replace(b"cody-cloud", b"ada-admin")
    assert client.post("/github/webhooks", content=tampered, headers=headers).status_code == 401
    assert client.post("/github/webhooks", content=body, headers={**headers, "x-hub-signature-256": "sha1=abc"}).status_code == 401
    assert counts(runtime) == before
    assert trial(client, trial_id)["state"] == "instance_requested"


def test_without_a_webhook_secret_deliveries_are_refused_with_a_clear_message(db_url, config_dir, clock):
    rt = Runtime(make_settings(db_url, config_dir), clock=clock)
    with TestClient(create_app(rt)) as c:
        response = post_webhook(c, "ping", fixture_json("github/webhooks/ping.json"))
    rt.close()
    assert response.status_code == 503 and "TRIALFLOW_GITHUB_WEBHOOK_SECRET" in response.json()["error"]


def test_a_ping_is_answered_with_pong(client):
    response = post_webhook(client, "ping", fixture_json("github/webhooks/ping.json"))
    assert response.status_code == 200 and response.json()["status"] == "pong"


# --- instance ready --------------------------------------------------------------------------------

def test_the_cloud_team_labelling_the_request_instance_ready_marks_the_trial_ready(client, runtime):
    trial_id = requested_trial(client, runtime)
    body = request_body(runtime, trial_id) + "\n\nInstance: https://stark-industries.sourcegraph.com\n"
    response = post_webhook(client, "issues", issue_labeled(12, body, "instance-ready", "cody-cloud"))
    assert response.status_code == 200
    assert response.json() == {"status": "instance_ready", "trial_id": trial_id, "host": "stark-industries.sourcegraph.com"}
    detail = trial(client, trial_id)
    assert detail["state"] == "instance_ready"
    assert detail["instance_url"] == "https://stark-industries.sourcegraph.com"
    assert detail["history"][-1]["trigger"] == "mark_instance_ready" and detail["history"][-1]["actor"] == "cody-cloud"
    with runtime.session_factory() as s:
        new = {r.kind: r.payload for r in s.execute(select(tables.outbox.c.kind, tables.outbox.c.payload).where(
            tables.outbox.c.key.like(f"{trial_id}:%:mark_instance_ready:%")))}
    ce_slack = slack_id_of(runtime, detail["assignees"]["ce"])
    assert f"<@{ce_slack}>" in new["slack.message"]["text"], "the CE is told in Slack"
    assert new["github.comment"]["ref"] == f"instance-request:{trial_id}", "the issue gets a comment"


def slack_id_of(runtime, email: str) -> str:
    with runtime.session_factory() as s:
        return Directory(s).by_email(email).slack_user_id


def test_a_repeated_delivery_is_answered_duplicate_and_changes_nothing(client, runtime):
    trial_id = requested_trial(client, runtime)
    payload = issue_labeled(12, request_body(runtime, trial_id), "instance-ready", "cody-cloud")
    assert post_webhook(client, "issues", payload, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958").json()["status"] == "instance_ready"
    before = counts(runtime)
    again = post_webhook(client, "issues", payload, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert counts(runtime) == before
    # A second signal (another delivery: someone also comments /ready) finds the trial already ready.
    comment = issue_comment(12, request_body(runtime, trial_id), "/ready https://elsewhere.sourcegraph.com", "cody-cloud")
    late = post_webhook(client, "issue_comment", comment)
    assert late.json()["status"] == "ignored" and "instance_ready" in late.json()["reason"]
    assert trial(client, trial_id)["instance_url"] == "https://stark-industries.sourcegraph.com"


def test_a_ready_comment_gives_the_instance_url(client, runtime):
    trial_id = requested_trial(client, runtime)
    comment = "Provisioned, license applied.\n/ready https://stark-eu.sourcegraph.com/sign-in\nthanks!"
    response = post_webhook(client, "issue_comment", issue_comment(3, request_body(runtime, trial_id), comment, "ada-admin"))
    assert response.json()["host"] == "stark-eu.sourcegraph.com"
    assert trial(client, trial_id)["history"][-1]["actor"] == "ada-admin"


def test_without_a_url_anywhere_the_host_is_derived_from_the_account(client, runtime):
    trial_id = requested_trial(client, runtime, email="sam@stark-industries.com", company="Stark Industries")
    response = post_webhook(client, "issue_comment", issue_comment(3, request_body(runtime, trial_id), "/ready", "cody-cloud"))
    assert response.json()["host"] == "stark-industries.sourcegraph.com"


def test_the_first_https_url_in_the_body_is_used_but_not_a_github_link(client, runtime):
    trial_id = requested_trial(client, runtime)
    body = (request_body(runtime, trial_id) + "\nRunbook: https://github.com/acme/cloud/wiki/trials"
            "\nProvisioned at https://stark-trial.sourcegraph.com (us-central1)")
    response = post_webhook(client, "issues", issue_labeled(4, body, "instance-ready", "cody-cloud"))
    assert response.json()["host"] == "stark-trial.sourcegraph.com"


def test_a_label_on_an_issue_without_a_url_reads_the_issues_comments_with_pygithub(db_url, config_dir, clock):
    with FakeGitHub(repo=FIXTURE_REPO) as fake:
        settings = make_settings(db_url, config_dir, **signing_settings(), **fake.settings())
        rt = Runtime(settings, clock=clock)
        from trialflow.services.reference import load_reference_data
        load_reference_data(rt.session_factory, config_dir, clock.now())
        with TestClient(create_app(rt)) as client:
            trial_id = requested_trial(client, rt)
            transports = {"github": GitHubTransport(settings, seconds_between_writes=None),
                          "slack": DryRunTransport("slack"), "email": DryRunTransport("email")}
            Deliverer(rt, transports).drain_all()
            [issue] = fake.issues
            cloud = Github(auth=Auth.Token(fake.token), base_url=fake.url).get_repo(FIXTURE_REPO).get_issue(issue["number"])
            cloud.create_comment("Done. Instance: https://stark-prod.sourcegraph.com")
            response = post_webhook(client, "issues", issue_labeled(issue["number"], issue["body"], "instance-ready", "cody-cloud"))
        rt.close()
    assert response.json()["host"] == "stark-prod.sourcegraph.com"
    assert fake.calls("GET", f"/repos/{FIXTURE_REPO}/issues/{issue['number']}/comments")


def test_someone_outside_the_cloud_team_cannot_mark_an_instance_ready(client, runtime, caplog):
    trial_id = requested_trial(client, runtime)
    for login in ("carol-ce", "Codertocat"):       # a CE, and a login that is not in staff.csv at all
        response = post_webhook(client, "issues", issue_labeled(5, request_body(runtime, trial_id), "instance-ready", login))
        assert response.status_code == 200 and response.json()["status"] == "refused"
    assert trial(client, trial_id)["state"] == "instance_requested"
    with runtime.session_factory() as s:
        comments = s.scalars(select(tables.outbox.c.payload).where(tables.outbox.c.kind == "github.comment")).all()
    assert len(comments) == 2 and all("role `cloud` or `admin`" in c["body"] for c in comments)
    assert any(trial_id in r.getMessage() and "carol-ce" in r.getMessage() for r in caplog.records)


def test_anything_else_is_acknowledged_and_ignored(client, runtime):
    trial_id = requested_trial(client, runtime)
    body = request_body(runtime, trial_id)
    before = counts(runtime)
    answers = [
        post_webhook(client, "issues", issue_labeled(5, body, "bug", "cody-cloud")),
        post_webhook(client, "issues", issue_labeled(5, "An ordinary issue. Instance: https://x.sourcegraph.com",
                                                     "instance-ready", "cody-cloud")),
        post_webhook(client, "issue_comment", issue_comment(5, body, "Working on it, ETA tomorrow.", "cody-cloud")),
        post_webhook(client, "issues", fixture_json("github/webhooks/issues.opened.json")),
        post_webhook(client, "issues", fixture_json("github/webhooks/issues.closed.json")),
        post_webhook(client, "pull_request", {"action": "opened"}),
    ]
    assert [a.status_code for a in answers] == [200] * 6
    assert all(a.json()["status"] == "ignored" for a in answers)
    history, outbox, deliveries = counts(runtime)
    assert (history, outbox) == before[:2] and deliveries == before[2] + 6
    assert trial(client, trial_id)["state"] == "instance_requested"


def test_an_issue_from_another_repository_is_ignored(db_url, config_dir, clock):
    rt = Runtime(make_settings(db_url, config_dir, **signing_settings(github_repo="acme-cloud/cloud-trials")), clock=clock)
    from trialflow.services.reference import load_reference_data
    load_reference_data(rt.session_factory, config_dir, clock.now())
    with TestClient(create_app(rt)) as client:
        trial_id = requested_trial(client, rt)
        response = post_webhook(client, "issues", issue_labeled(5, request_body(rt, trial_id), "instance-ready", "cody-cloud"))
        state = trial(client, trial_id)["state"]
    rt.close()
    assert response.json()["status"] == "ignored" and "acme-cloud/cloud-trials" in response.json()["reason"]
    assert state == "instance_requested"


def test_the_instance_request_tells_the_cloud_team_how_to_signal(client, runtime):
    body = request_body(runtime, requested_trial(client, runtime))
    assert "`instance-ready`" in body and "`/ready <url>`" in body


def test_a_github_login_named_system_is_a_stranger_and_changes_nothing(client, runtime):
    trial_id = requested_trial(client, runtime)
    before = trial(client, trial_id)
    label = post_webhook(client, "issues", issue_labeled(5, request_body(runtime, trial_id), "instance-ready", "system"))
    comment = post_webhook(client, "issue_comment", issue_comment(5, request_body(runtime, trial_id),
                                                                  "/ready https://stark.sourcegraph.com", "system"))
    assert [label.json()["status"], comment.json()["status"]] == ["refused", "refused"]
    after = trial(client, trial_id)
    assert after["state"] == "instance_requested" and after["instance_url"] is None
    assert after["history"] == before["history"]
