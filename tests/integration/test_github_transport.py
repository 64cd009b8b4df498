"""GitHub effects delivered by the real Deliverer and PyGithub to a local server that answers
like GitHub's REST API (shapes from ../shared/fixtures/github/rest)."""
from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.support.outbox import DiesAfterTheCall, WorkerKilled, enqueue_effect, outbox_row
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.services.directory import Directory
from trialflow.services.signups import SignupInput, submit_signup
from trialflow.services.trials import Command, run

TRIAL = "tr_githubtransport1"


@pytest.fixture
def settings(db_url, config_dir, fake_github):
    return make_settings(db_url, config_dir, **fake_github.settings())


@pytest.fixture
def deliverer(runtime, settings):
    # PyGithub's one-second pause between writes is kept in production; here it would only slow the tests.
    return Deliverer(runtime, {"github": GitHubTransport(settings, seconds_between_writes=None),
                               "slack": DryRunTransport("slack"), "email": DryRunTransport("email")})


def enqueue(rt, key: str, kind: str, payload: dict, trial_id: str | None = TRIAL) -> int:
    return enqueue_effect(rt, key, kind, payload, trial_id)


row = outbox_row


def issue_payload(title: str = "Cloud trial instance request: Initech", **extra) -> dict:
    return {"issue_kind": "instance-request", "title": title, "body": "### Cloud trial instance request",
            "labels": ["cloud-trial", "instance-request"], "ref": f"instance-request:{TRIAL}", **extra}


def test_a_qualified_lead_s_instance_request_names_the_assigned_ce_and_has_no_todo(runtime, deliverer, fake_github):
    signup = submit_signup(runtime.uow, runtime.settings, runtime.clock,
                           SignupInput(email="gavin@hooli.com", name="Gavin Belson", company="Hooli"))
    with runtime.session_factory() as s:
        sdr = Directory(s).by_email("ivy.inbound@example.com")
    trial = run(runtime, Command(signup.trial_id, "qualify", actor=sdr.slack_user_id, person=sdr))

    deliverer.drain_all()

    [issue] = fake_github.issues
    assert issue["title"] == "Cloud trial instance request: hooli.com"   # not in accounts.csv: named by its domain
    assert trial.ce and trial.ce.endswith("@example.com")
    assert f"Assigned CE (needs operator access to create the password-reset link): {trial.ce}" in issue["body"]
    assert "TODO" not in issue["body"].upper()
    assert [label["name"] for label in issue["labels"]] == ["cloud-trial", "instance-request"]
    with runtime.session_factory() as s:
        effect = s.execute(select(tables.outbox).where(tables.outbox.c.kind == "github.issue")).one()
    assert issue["body"].endswith(f"<!-- trialflow-effect:{effect.key} -->")
    assert effect.result == {"number": issue["number"], "url": issue["html_url"]}


def test_a_comment_goes_on_the_issue_its_ref_names(runtime, deliverer, fake_github):
    enqueue(runtime, "k:issue", "github.issue", issue_payload())
    enqueue(runtime, "k:other-issue", "github.issue", issue_payload("another", ref="termination:tr_someoneelse"),
            trial_id="tr_someoneelse")
    deliverer.drain()
    comment_id = enqueue(runtime, "k:comment", "github.comment",
                         {"ref": f"instance-request:{TRIAL}", "body": "Instance https://initech-x.sourcegraph.com is ready"})

    assert deliverer.drain() == {"delivered": 1}

    request_issue = next(i for i in fake_github.issues if i["title"].startswith("Cloud trial"))
    [comment] = fake_github.comments_on(request_issue["number"])
    assert comment["body"].startswith("Instance https://initech-x.sourcegraph.com is ready")
    assert row(runtime, comment_id).result["number"] == request_issue["number"]
    assert len(fake_github.comments) == 1


def test_a_comment_waits_until_its_issue_has_been_opened(runtime, deliverer, fake_github, clock):
    comment_id = enqueue(runtime, "k:comment", "github.comment", {"ref": f"instance-request:{TRIAL}", "body": "ready"})

    assert deliverer.drain() == {"retry": 1}
    assert fake_github.requests == []
    assert "not opened yet" in row(runtime, comment_id).last_error

    enqueue(runtime, "k:issue", "github.issue", issue_payload())
    deliverer.drain()
    clock.advance(minutes=1)
    assert deliverer.drain() == {"delivered": 1}
    assert len(fake_github.comments_on(fake_github.issues[0]["number"])) == 1


def test_a_secondary_rate_limit_comes_back_after_github_s_retry_after(runtime, deliverer, fake_github, clock):
    fake_github.secondary_limit(retry_after=60)
    effect_id = enqueue(runtime, "k:issue", "github.issue", issue_payload())
    started = clock.now()
    began = time.monotonic()

    assert deliverer.drain() == {"retry": 1}

    # One request, one 403: PyGithub did not sleep and retry inside the call.
    assert time.monotonic() - began < 30  # GithubRetry would have slept the full 60 s
    assert [r.status for r in fake_github.calls("POST", "/repos/")] == [403]
    waiting = row(runtime, effect_id)
    assert waiting.status == "pending"
    assert "secondary rate limit" in waiting.last_error
    assert timedelta(seconds=60) <= waiting.next_attempt_at - started <= timedelta(seconds=61)

    clock.advance(seconds=59)
    assert deliverer.drain() == {}
    clock.advance(seconds=2)
    assert deliverer.drain() == {"delivered": 1}
    assert len(fake_github.issues) == 1


def test_the_primary_rate_limit_waits_until_github_resets_it(runtime, deliverer, fake_github, clock):
    fake_github.primary_limit(reset_in=600)
    effect_id = enqueue(runtime, "k:issue", "github.issue", issue_payload())
    started = clock.now()

    assert deliverer.drain() == {"retry": 1}

    waiting = row(runtime, effect_id)
    assert "rate limit" in waiting.last_error
    # x-ratelimit-reset is epoch seconds, measured against the response's Date (1 s resolution,
    # and a loaded machine may take a few seconds between arranging the limit and the request).
    assert timedelta(seconds=590) <= waiting.next_attempt_at - started <= timedelta(seconds=601)
    assert fake_github.issues == []


@pytest.mark.parametrize("status, message, expected", [
    (404, "Not Found", "TRIALFLOW_GITHUB_REPO"),
    (422, "Validation Failed", "GitHub rejected the content"),
])
def test_a_refusal_parks_the_issue_at_once_with_a_clear_message_and_alerts(runtime, deliverer, fake_github,
                                                                          status, message, expected):
    fake_github.fail("POST", r"/issues$", status, message,
                     errors=[{"resource": "Issue", "field": "labels", "code": "invalid"}] if status == 422 else [])
    effect_id = enqueue(runtime, "k:issue", "github.issue", issue_payload())

    assert deliverer.drain() == {"failed": 1}

    parked = row(runtime, effect_id)
    assert parked.status == "failed"
    assert parked.attempts == 1
    assert f"GitHub refused to open an issue in {fake_github.repo}: {status} {message}" in parked.last_error
    assert expected in parked.last_error
    deliverer.drain()
    with runtime.session_factory() as s:
        notice = s.execute(select(tables.outbox).where(tables.outbox.c.key == f"delivery-failed:{effect_id}")).one()
    assert notice.payload["channel"] == "cloud-trial-alerts"
    assert "github.issue" in notice.payload["text"] and notice.status == "delivered"


def test_a_comment_on_an_issue_that_is_gone_is_a_permanent_failure(runtime, deliverer, fake_github):
    enqueue(runtime, "k:issue", "github.issue", issue_payload())
    deliverer.drain()
    fake_github.issues.clear()  # deleted by someone on GitHub
    comment_id = enqueue(runtime, "k:comment", "github.comment", {"ref": f"instance-request:{TRIAL}", "body": "ready"})

    assert deliverer.drain() == {"failed": 1}
    assert "404" in row(runtime, comment_id).last_error


def test_a_bad_token_is_reported_as_such(runtime, fake_github):
    wrong = make_settings(runtime.settings.database_url, runtime.settings.config_dir,
                          **{**fake_github.settings(), "github_token": "ghp_wrongwrongwrongwrongwrong0000000000"})
    effect_id = enqueue(runtime, "k:issue", "github.issue", issue_payload())

    Deliverer(runtime, {"github": GitHubTransport(wrong, seconds_between_writes=None),
                        "slack": DryRunTransport("slack")}).drain()

    parked = row(runtime, effect_id)
    assert parked.status == "failed"
    assert "401 Bad credentials" in parked.last_error and "TRIALFLOW_GITHUB_TOKEN" in parked.last_error
    assert "ghp_wrong" not in parked.last_error



def test_a_retry_finds_its_issue_among_every_issue_opened_since_its_first_attempt_when_search_is_down(
        runtime, settings, fake_github, clock):
    clock.set(datetime.now(UTC))
    effect_id = enqueue(runtime, "k:issue", "github.issue", issue_payload())
    with pytest.raises(WorkerKilled):
        Deliverer(runtime, {"github": DiesAfterTheCall(GitHubTransport(settings, seconds_between_writes=None))}
                  ).deliver(effect_id)
    for i in range(150):                    # more than one look at the newest 100 would see
        fake_github.handle("POST", f"/repos/{fake_github.repo}/issues", {}, {"title": f"other {i}", "body": "x"},
                           {"authorization": f"token {fake_github.token}"})
    fake_github.search_available = False
    clock.advance(seconds=runtime.settings.delivery_lease_seconds + 1)

    assert Deliverer(runtime, {"github": GitHubTransport(settings, seconds_between_writes=None)}
                     ).deliver(effect_id) == "delivered"

    assert fake_github.deliveries()["k:issue"] == 1
    assert len(fake_github.issues) == 151
    assert row(runtime, effect_id).result["number"] == 1
