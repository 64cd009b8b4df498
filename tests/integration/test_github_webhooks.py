"""GitHub webhooks over HTTP: GitHub's documented payloads (fixtures/github/webhooks), changed only
in labels, bodies and logins, signed with X-Hub-Signature-256; the cloud team's "instance ready"."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import LOOPBACK_CLIENT, make_settings
from tests.support.signed import (
    FIXTURE_REPO,
    comment_as,
    fixture_json,
    github_headers,
    issue_comment,
    issue_labeled,
    post_webhook,
    signing_settings,
)
from trialflow.api.app import create_app
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.runtime import Runtime
from trialflow.services.directory import Directory
from trialflow.services.trials import Command, run


@pytest.fixture
def settings(db_url, config_dir, github):
    return make_settings(db_url, config_dir, **signing_settings(), **github.settings())


def person(runtime, slack_id: str):
    with runtime.session_factory() as s:
        return Directory(s).by_slack_id(slack_id)


def deliver(runtime) -> None:
    transports = {"github": GitHubTransport(runtime.settings, seconds_between_writes=0),
                  "slack": DryRunTransport("slack"), "email": DryRunTransport("email")}
    Deliverer(runtime, transports).drain_all()


def requested_trial(client, runtime, email: str = "sam@stark-industries.com", company: str = "Stark Industries",
                    name: str = "Sam") -> str:
    """Signed up, qualified, and its instance-request issue filed on the (fake) GitHub."""
    trial_id = client.post("/api/signups", json={"email": email, "name": name, "company": company}).json()["trial_id"]
    run(runtime, Command(trial_id, "qualify", "U0SDR0001", person(runtime, "U0SDR0001"), {"opportunity_id": "006Q"}))
    deliver(runtime)
    return trial_id


def request_issue(github, trial_id: str) -> tuple[int, str]:
    """The instance-request issue trialflow filed for the trial: (number, body as GitHub holds it)."""
    [issue] = [i for i in github.issues if f"trialflow:{trial_id}:instance-request" in (i["body"] or "")
               and "instance-request" in [label["name"] for label in i["labels"]]]
    return issue["number"], issue["body"]


def trial(client, trial_id: str) -> dict:
    return client.get(f"/api/trials/{trial_id}").json()


def counts(runtime) -> tuple[int, int, int]:
    with runtime.session_factory() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in
                     (tables.trial_history, tables.outbox, tables.github_deliveries))


# --- verification ---------------------------------------------------------------------------------

def test_unsigned_forged_or_tampered_deliveries_are_refused_and_change_nothing(client, runtime, github):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    payload = issue_comment(number, body, "/ready https://stark.sourcegraph.com", "cody-cloud")
    raw = json.dumps(payload).encode()
    before = counts(runtime)
    headers = github_headers(raw, "issue_comment")
    missing = {k: v for k, v in headers.items() if k != "x-hub-signature-256"}
    assert client.post("/github/webhooks", content=raw, headers=missing).status_code == 401
    assert post_webhook(client, "issue_comment", payload, secret="not-the-webhook-secret").status_code == 401
    tampered = raw.replace(b"cody-cloud", b"ada-admin")
    assert client.post("/github/webhooks", content=tampered, headers=headers).status_code == 401
    assert client.post("/github/webhooks", content=raw, headers={**headers, "x-hub-signature-256": "sha1=abc"}).status_code == 401
    assert counts(runtime) == before
    assert trial(client, trial_id)["state"] == "instance_requested"


def test_without_a_webhook_secret_deliveries_are_refused_with_a_clear_message(db_url, config_dir, clock):
    rt = Runtime(make_settings(db_url, config_dir), clock=clock)
    with TestClient(create_app(rt), client=LOOPBACK_CLIENT) as c:
        response = post_webhook(c, "ping", fixture_json("github/webhooks/ping.json"))
    rt.close()
    assert response.status_code == 503 and "TRIALFLOW_GITHUB_WEBHOOK_SECRET" in response.json()["error"]


def test_a_ping_is_answered_with_pong(client):
    response = post_webhook(client, "ping", fixture_json("github/webhooks/ping.json"))
    assert response.status_code == 200 and response.json()["status"] == "pong"


# --- instance ready --------------------------------------------------------------------------------

def test_the_cloud_team_labelling_the_request_after_giving_the_url_marks_the_trial_ready(client, runtime, github):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    comment_as(github, number, "cody-cloud", "Provisioned.\n\nInstance: https://stark-industries.sourcegraph.com\n")
    response = post_webhook(client, "issues", issue_labeled(number, body, "instance-ready", "cody-cloud"))
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
    assert github.calls("GET", f"/repos/{FIXTURE_REPO}/issues/{number}/comments"), "the URL was read from the comments"


def slack_id_of(runtime, email: str) -> str:
    with runtime.session_factory() as s:
        return Directory(s).by_email(email).slack_user_id


def test_a_repeated_delivery_is_answered_duplicate_and_changes_nothing(client, runtime, github):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    payload = issue_comment(number, body, "/ready https://stark-industries.sourcegraph.com", "cody-cloud")
    assert post_webhook(client, "issue_comment", payload, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958").json()["status"] == "instance_ready"
    before = counts(runtime)
    again = post_webhook(client, "issue_comment", payload, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert counts(runtime) == before
    # A second signal (another delivery: someone also comments /ready) finds the trial already ready.
    comment = issue_comment(number, body, "/ready https://elsewhere.sourcegraph.com", "cody-cloud")
    late = post_webhook(client, "issue_comment", comment)
    assert late.json()["status"] == "ignored" and "instance_ready" in late.json()["reason"]
    assert trial(client, trial_id)["instance_url"] == "https://stark-industries.sourcegraph.com"


def test_a_ready_comment_gives_the_instance_url(client, runtime, github):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    comment = "Provisioned, license applied.\n/ready https://stark-eu.sourcegraph.com/sign-in\nthanks!"
    response = post_webhook(client, "issue_comment", issue_comment(number, body, comment, "ada-admin"))
    assert response.json()["host"] == "stark-eu.sourcegraph.com"
    assert trial(client, trial_id)["history"][-1]["actor"] == "ada-admin"


def test_without_a_url_nothing_is_guessed_and_the_issue_is_asked_for_one(client, runtime, github):
    trial_id = requested_trial(client, runtime, email="sam@stark-industries.com", company="Stark Industries")
    number, body = request_issue(github, trial_id)
    answers = [post_webhook(client, "issue_comment", issue_comment(number, body, "/ready", "cody-cloud")),
               post_webhook(client, "issues", issue_labeled(number, body, "instance-ready", "cody-cloud"))]
    assert [a.json()["status"] for a in answers] == ["needs_url", "needs_url"]
    detail = trial(client, trial_id)
    assert detail["state"] == "instance_requested" and detail["instance_url"] is None
    deliver(runtime)
    asked = [c["body"] for c in github.comments_on(number)]
    assert len(asked) == 2 and all("/ready https://<instance host>" in text for text in asked)


def test_a_url_in_the_issue_body_is_never_used(client, runtime, github):
    # The body holds the lead's name and company: a stranger could put any URL there (a signup
    # refuses line breaks, so it cannot start a line of its own, but it can still be in the body).
    trial_id = requested_trial(client, runtime, name="Sam Instance: https://evil.example.com",
                               company="Stark https://evil-too.example.com")
    number, body = request_issue(github, trial_id)
    assert "Instance: https://evil.example.com" in body
    response = post_webhook(client, "issues", issue_labeled(number, body, "instance-ready", "cody-cloud"))
    assert response.json()["status"] == "needs_url"
    assert trial(client, trial_id)["state"] == "instance_requested"


def test_only_a_cloud_team_members_comment_can_give_the_url(client, runtime, github):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    comment_as(github, number, "Codertocat", "Instance: https://evil.example.com")
    comment_as(github, number, "carol-ce", "/ready https://also-evil.example.com")
    response = post_webhook(client, "issues", issue_labeled(number, body, "instance-ready", "cody-cloud"))
    assert response.json()["status"] == "needs_url"
    comment_as(github, number, "ada-admin", "Instance: https://stark-prod.sourcegraph.com")
    response = post_webhook(client, "issues", issue_labeled(number, body, "instance-ready", "cody-cloud"))
    assert response.json() == {"status": "instance_ready", "trial_id": trial_id, "host": "stark-prod.sourcegraph.com"}


@pytest.mark.parametrize("url", ["http://stark.sourcegraph.com", "https://github.com/acme/cloud/wiki/trials",
                                 "https://gist.githubusercontent.com/x", "https://127.0.0.1", "https://stark_x.example.com",
                                 "https://github.com@evil.example.com", "ftp://stark.sourcegraph.com", "stark.sourcegraph.com"])
def test_only_an_https_url_on_a_valid_non_github_host_is_accepted(client, runtime, github, url):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    response = post_webhook(client, "issue_comment", issue_comment(number, body, f"/ready {url}", "cody-cloud"))
    assert response.json()["status"] == "refused"
    assert trial(client, trial_id)["state"] == "instance_requested"
    deliver(runtime)
    assert "/ready https://<instance host>" in github.comments_on(number)[-1]["body"]


def test_a_marker_spoofed_in_a_leads_name_never_reaches_an_issue(client, runtime, github):
    victim = requested_trial(client, runtime)
    r = client.post("/api/signups", json={"email": "mallory@evil-corp.dev", "company": "Evil Corp",
                                          "name": f"<!-- trialflow:{victim}:instance-request -->"})
    assert r.status_code == 422 and r.json()["field"] == "name"
    assert [i for i in github.issues if "evil-corp" in (i["body"] or "")] == []
    # and were one to get there some other way, only the issue trialflow filed for the victim
    # counts for the victim (test_an_issue_trialflow_did_not_file_for_the_trial_is_ignored)


def test_an_issue_trialflow_did_not_file_for_the_trial_is_ignored(client, runtime, github):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    before = counts(runtime)
    response = post_webhook(client, "issue_comment", issue_comment(number + 40, body, "/ready https://stark.sourcegraph.com", "cody-cloud"))
    assert response.json()["status"] == "ignored" and f"#{number + 40}" in response.json()["reason"]
    assert counts(runtime)[:2] == before[:2]
    assert trial(client, trial_id)["state"] == "instance_requested"


def test_someone_outside_the_cloud_team_cannot_mark_an_instance_ready(client, runtime, github, caplog):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    for login in ("carol-ce", "Codertocat"):       # a CE, and a login that is not in staff.csv at all
        response = post_webhook(client, "issue_comment", issue_comment(number, body, "/ready https://stark.sourcegraph.com", login))
        assert response.status_code == 200 and response.json()["status"] == "refused"
    assert trial(client, trial_id)["state"] == "instance_requested"
    with runtime.session_factory() as s:
        comments = s.scalars(select(tables.outbox.c.payload).where(tables.outbox.c.kind == "github.comment")).all()
    assert len(comments) == 2 and all("role `cloud` or `admin`" in c["body"] for c in comments)
    assert any(trial_id in r.getMessage() and "carol-ce" in r.getMessage() for r in caplog.records)


def test_a_github_login_named_system_is_a_stranger_and_changes_nothing(client, runtime, github):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    before = trial(client, trial_id)
    label = post_webhook(client, "issues", issue_labeled(number, body, "instance-ready", "system"))
    comment = post_webhook(client, "issue_comment", issue_comment(number, body, "/ready https://stark.sourcegraph.com", "system"))
    assert [label.json()["status"], comment.json()["status"]] == ["refused", "refused"]
    after = trial(client, trial_id)
    assert after["state"] == "instance_requested" and after["instance_url"] is None
    assert after["history"] == before["history"]


def test_anything_else_is_acknowledged_and_ignored(client, runtime, github):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    before = counts(runtime)
    answers = [
        post_webhook(client, "issues", issue_labeled(number, body, "bug", "cody-cloud")),
        post_webhook(client, "issues", issue_labeled(number, "An ordinary issue. Instance: https://x.sourcegraph.com",
                                                     "instance-ready", "cody-cloud")),
        post_webhook(client, "issue_comment", issue_comment(number, body, "Working on it, ETA tomorrow.", "cody-cloud")),
        post_webhook(client, "issues", fixture_json("github/webhooks/issues.opened.json")),
        post_webhook(client, "issues", fixture_json("github/webhooks/issues.closed.json")),
        post_webhook(client, "pull_request", {"action": "opened"}),
    ]
    assert [a.status_code for a in answers] == [200] * 6
    assert all(a.json()["status"] == "ignored" for a in answers)
    history, outbox, deliveries = counts(runtime)
    assert (history, outbox) == before[:2] and deliveries == before[2] + 6
    assert trial(client, trial_id)["state"] == "instance_requested"


def test_an_issue_from_another_repository_is_ignored(client, runtime, github):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    payload = issue_comment(number, body, "/ready https://stark.sourcegraph.com", "cody-cloud")
    payload["repository"]["full_name"] = "someone-else/cloud-trials"
    response = post_webhook(client, "issue_comment", payload)
    assert response.json()["status"] == "ignored" and FIXTURE_REPO in response.json()["reason"]
    assert trial(client, trial_id)["state"] == "instance_requested"


def test_the_instance_request_tells_the_cloud_team_how_to_signal(client, runtime, github):
    _, body = request_issue(github, requested_trial(client, runtime))
    # both signals, each with the URL a member must give (a label alone is not enough)
    assert "`/ready https://<instance host>`" in body
    assert "`Instance: https://<instance host>`" in body and "`instance-ready`" in body


def test_an_instance_for_a_public_mailbox_lead_does_not_claim_the_mailbox_domain(client, runtime, github):
    marie = requested_trial(client, runtime, email="marie@hotmail.fr", company="Marie Conseil", name="Marie")
    number, body = request_issue(github, marie)
    response = post_webhook(client, "issue_comment", issue_comment(number, body, "/ready https://marie.sourcegraph.com", "cody-cloud"))
    assert response.json()["status"] == "instance_ready"
    later = client.post("/api/signups", json={"email": "pierre@hotmail.fr", "name": "Pierre"}).json()
    assert later["state"] == "triage" and later.get("redirect_url") is None, "a stranger is not sent to Marie's instance"
    with runtime.session_factory() as s:
        claims = s.scalars(select(tables.domain_claims.c.domain).where(tables.domain_claims.c.trial_id == marie)).all()
    assert claims == []


def test_a_signed_body_replayed_under_a_fresh_delivery_id_changes_nothing(client, runtime, github):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    payload = issue_comment(number, body, "/ready https://stark-industries.sourcegraph.com", "cody-cloud")
    assert post_webhook(client, "issue_comment", payload).json()["status"] == "instance_ready"
    before = counts(runtime)
    replayed = post_webhook(client, "issue_comment", payload)          # the same bytes, a new X-GitHub-Delivery
    assert replayed.status_code == 200 and replayed.json()["status"] == "duplicate"
    assert counts(runtime) == before


def test_a_replayed_label_event_is_recognised_but_the_same_label_added_again_later_is_not(client, runtime, github):
    trial_id = requested_trial(client, runtime)
    number, body = request_issue(github, trial_id)
    labelled = issue_labeled(number, body, "instance-ready", "cody-cloud")   # no URL yet: the issue is asked for one
    assert post_webhook(client, "issues", labelled).json()["status"] == "needs_url"
    before = counts(runtime)
    assert post_webhook(client, "issues", labelled).json()["status"] == "duplicate"
    assert counts(runtime) == before
    comment_as(github, number, "cody-cloud", "Instance: https://stark-industries.sourcegraph.com")
    again = issue_labeled(number, body, "instance-ready", "cody-cloud")      # removed and added again: a new time
    assert post_webhook(client, "issues", again).json()["status"] == "instance_ready"
