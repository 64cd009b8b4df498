"""The outbox end to end: signups over HTTP whose effects reach local Slack, GitHub and SMTP
servers through the real clients; exactly once when a worker dies after the provider accepted a
call; parking, the alert about it and `trialflow outbox`; the dry-run sink."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.support.outbox import DiesAfterTheCall, WorkerKilled, enqueue_effect
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.email import EmailTransport, message_id
from trialflow.delivery.github import GitHubTransport
from trialflow.delivery.slack import SlackTransport
from trialflow.delivery.wiring import build_deliverer
from trialflow.runtime import Runtime
from trialflow.services.directory import Directory
from trialflow.services.reference import load_reference_data
from trialflow.services.signups import SignupInput, submit_signup
from trialflow.services.trials import Command, run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def instance_api() -> bool:
    """Parametrize True to administer the trial instances (the fake Sourcegraph) too."""
    return False


@pytest.fixture
def settings(db_url, config_dir, fake_slack, fake_github, smtp_server, instance_api, request):
    instances = request.getfixturevalue("fake_sourcegraph").settings() if instance_api else {}
    return make_settings(db_url, config_dir, **fake_slack.settings(), **fake_github.settings(),
                         **smtp_server.settings(), **instances)


def real_transports(settings) -> dict:
    # PyGithub's one-second pause between writes is kept in production; here it would only slow the tests.
    return {"slack": SlackTransport(settings), "github": GitHubTransport(settings, seconds_between_writes=None),
            "email": EmailTransport(settings)}


@pytest.fixture
def deliverer(runtime, settings):
    return Deliverer(runtime, real_transports(settings))


def rows(rt, *where):
    with rt.session_factory() as s:
        return s.execute(select(tables.outbox).where(*where).order_by(tables.outbox.c.id)).all()


def row(rt, effect_id: int):
    [found] = rows(rt, tables.outbox.c.id == effect_id)
    return found


def qualify(rt, trial_id: str):
    with rt.session_factory() as s:
        sdr = Directory(s).by_email("ivy.inbound@example.com")
    return run(rt, Command(trial_id, "qualify", actor=sdr.slack_user_id, person=sdr))


def assert_each_effect_arrived_exactly_once(rt, fake_slack, fake_github, smtp_server) -> None:
    delivered = rows(rt)
    assert delivered and {r.status for r in delivered} == {"delivered"}
    slack, github = fake_slack.deliveries(), fake_github.deliveries()
    emails = [m["Message-ID"] for m in smtp_server.messages]
    for r in delivered:
        if r.kind == "slack.message":
            assert slack[r.key] == 1, r.key
        elif r.kind.startswith("github."):
            assert github[r.key] == 1, r.key
        elif r.kind == "email":
            assert emails.count(message_id(r.key)) == 1, r.key
        elif r.kind == "instance.account":  # its email is sent inside the delivery, one per attempt's fresh link
            assert emails.count(message_id(f"{r.key}:mail:{r.attempts}")) == 1, r.key
    assert sum(slack.values()) == sum(1 for r in delivered if r.kind == "slack.message")
    assert sum(github.values()) == sum(1 for r in delivered if r.kind.startswith("github."))
    assert len(emails) == sum(1 for r in delivered if r.kind in ("email", "instance.account"))


# --- whole flows -------------------------------------------------------------------------------

@pytest.mark.parametrize("instance_api", [True])
def test_a_named_account_signup_over_http_reaches_slack_and_the_person_s_inbox(client, runtime, fake_slack,
                                                                              fake_github, smtp_server,
                                                                              fake_sourcegraph):
    response = client.post("/api/signups", json={"email": "bob@acme-corp.com", "name": "Bob"})
    assert response.status_code == 201, response.text

    # the alert, the channel, the account (its link emailed), the trial's start emailed, the Home tabs published
    assert build_deliverer(runtime).drain_all() == {"delivered": 5}

    [alert] = fake_slack.messages_in("cloud-trial-alerts")
    assert ":rocket:" in alert["text"] and "bob@acme-corp.com" in alert["text"]
    channel = fake_slack.channel_named("cloud-trial-acme-corp")
    assert {"U0CE00001", "U0AE00001"} <= channel.members
    assert channel.topic == "Cloud trial for Acme Corp (acme-corp.com)"
    [reset] = [m for m in smtp_server.messages if m["X-Trialflow-Template"] == "password_reset"]
    assert reset["To"] == "bob@acme-corp.com"
    assert "https://pool-a.sourcegraph.com/password-reset?code=" in reset.get_content()
    assert fake_sourcegraph.reset_links[-1] in reset.get_content(), "the link the instance made"
    assert "password-reset" not in str(fake_slack.state())
    assert fake_github.issues == []
    assert_each_effect_arrived_exactly_once(runtime, fake_slack, fake_github, smtp_server)


def test_a_qualified_lead_gets_its_channel_issue_and_welcome_email_each_exactly_once(client, runtime, deliverer,
                                                                                    fake_slack, fake_github,
                                                                                    smtp_server, clock):
    signup = client.post("/api/signups", json={"email": "gavin@hooli.com", "name": "Gavin", "company": "Hooli"}).json()
    deliverer.drain_all()
    trial = qualify(runtime, signup["trial_id"])
    clock.advance(seconds=1)

    deliverer.drain_all()

    [alert] = fake_slack.messages_in("cloud-trial-alerts")
    assert alert["text"].startswith(":white_check_mark:")  # the triage alert, edited in place
    assert {"U0CE00001", "U0AE00001"} & fake_slack.channel_named("cloud-trial-hooli-com").members
    [issue] = fake_github.issues
    assert f"Assigned CE (needs operator access to create the password-reset link): {trial.ce}" in issue["body"]
    assert "TODO" not in issue["body"].upper()
    [welcome] = smtp_server.messages
    assert welcome["From"] == trial.ce and welcome["Cc"] == trial.ae and welcome["To"] == "gavin@hooli.com"
    assert_each_effect_arrived_exactly_once(runtime, fake_slack, fake_github, smtp_server)


def test_two_workers_draining_at_once_deliver_every_effect_exactly_once(client, runtime, settings, fake_slack,
                                                                        fake_github, smtp_server, clock):
    for email in ("bob@acme-corp.com", "ann@globex.com", "peter@initech.com", "gavin@hooli.com", "kim@piedpiper.com"):
        assert client.post("/api/signups", json={"email": email}).status_code == 201
    for trial in client.get("/api/trials", params={"state": "triage"}).json()["trials"]:
        qualify(runtime, trial["trial_id"])
    workers = [Deliverer(runtime, real_transports(settings)) for _ in range(2)]
    errors: list[BaseException] = []

    def work(deliverer):
        try:
            for _ in range(3):  # updates wait for their alert: give them their retries
                deliverer.drain_all()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for _ in range(3):
        clock.advance(minutes=1)
        workers[0].drain_all()

    assert errors == []
    # 2 welcomes, 2 links (the claims), and the 2 claimed trials' start
    assert len(fake_github.issues) == 2 and len(smtp_server.messages) == 6
    assert_each_effect_arrived_exactly_once(runtime, fake_slack, fake_github, smtp_server)


# --- a worker killed after the provider accepted the call ---------------------------------------

def enqueue(rt, key: str, kind: str, payload: dict, trial_id: str = "tr_crashtest00001") -> int:
    return enqueue_effect(rt, key, kind, payload, trial_id)


ALERT = {"channel": "cloud-trial-alerts", "text": "bob signed up", "blocks": [], "ref": "alert:tr_crashtest00001"}
ISSUE = {"issue_kind": "instance-request", "title": "Cloud trial instance request: Acme", "body": "CE: carol",
         "labels": ["cloud-trial"], "ref": "instance-request:tr_crashtest00001"}
CRASHES = {
    "an alert": (None, "slack.message", ALERT),
    "a reminder in the alert's thread": (("slack.message", ALERT), "slack.message",
                                         {"channel": "cloud-trial-alerts", "text": "reminder", "blocks": [],
                                          "thread_ref": "alert:tr_crashtest00001"}),
    "an account channel": (None, "slack.channel", {"name": "cloud-trial-acme", "invite": ["carol.ce@example.com"],
                                                   "topic": "t"}),
    "an issue (found by search)": (None, "github.issue", ISSUE),
    "an issue the search index has not caught up with": ("lagging-search", "github.issue", ISSUE),
    "an issue while search is down": ("search-down", "github.issue", ISSUE),
    "a comment on the issue": (("github.issue", ISSUE), "github.comment",
                               {"ref": "instance-request:tr_crashtest00001", "body": "ready"}),
}


@pytest.mark.parametrize("case", list(CRASHES))
def test_an_effect_whose_worker_died_after_the_provider_accepted_it_is_not_delivered_twice(
        case, runtime, settings, deliverer, fake_slack, fake_github, smtp_server, clock):
    before, kind, payload = CRASHES[case]
    if isinstance(before, tuple):
        enqueue(runtime, "k:parent", *before)
        assert deliverer.drain() == {"delivered": 1}
    effect_id = enqueue(runtime, "k:crash", kind, payload)
    dying = Deliverer(runtime, {name: DiesAfterTheCall(t) for name, t in real_transports(settings).items()})

    with pytest.raises(WorkerKilled):
        dying.deliver(effect_id)
    left_behind = row(runtime, effect_id)
    assert (left_behind.status, left_behind.attempts, left_behind.result) == ("delivering", 1, None)
    fake_github.search_indexed = before != "lagging-search"
    fake_github.search_available = before != "search-down"

    assert deliverer.deliver(effect_id) == "skipped"  # the dead worker's lease still holds
    clock.advance(seconds=runtime.settings.delivery_lease_seconds + 1)
    # A new worker: fresh clients, nothing cached from the first attempt.
    assert Deliverer(runtime, real_transports(settings)).deliver(effect_id) == "delivered"

    assert row(runtime, effect_id).attempts == 2
    if kind == "slack.message":
        assert fake_slack.deliveries()["k:crash"] == 1
        assert row(runtime, effect_id).result["ts"] in {m["ts"] for m in fake_slack.messages}
    elif kind == "slack.channel":
        assert [c.name for c in fake_slack.channels.values()].count("cloud-trial-acme") == 1
        assert [c for c, _ in fake_slack.invites].count(fake_slack.channel_named("cloud-trial-acme").id) == 1
    else:
        assert fake_github.deliveries()["k:crash"] == 1
        assert len(fake_github.issues) == 1
        if before == "search-down":
            assert [r.status for r in fake_github.calls("GET", "/search/issues")] == [503]


def test_an_email_resent_after_its_worker_died_carries_the_same_message_id(runtime, settings, deliverer, smtp_server,
                                                                          clock):
    effect_id = enqueue(runtime, "k:crash", "email", {"template": "self_host", "to": "bob@acme-corp.com", "cc": [],
                                                      "from": None, "context": {"name": "Bob"}})
    with pytest.raises(WorkerKilled):
        Deliverer(runtime, {"email": DiesAfterTheCall(EmailTransport(settings))}).deliver(effect_id)
    clock.advance(seconds=runtime.settings.delivery_lease_seconds + 1)

    assert deliverer.deliver(effect_id) == "delivered"

    # SMTP cannot be asked whether it already has the message; the receiving side can tell the copies apart.
    assert [m["Message-ID"] for m in smtp_server.messages] == [message_id("k:crash")] * 2


# --- parking and the operator's view ------------------------------------------------------------

def park_a_message(runtime, deliverer, fake_slack, clock) -> int:
    runtime.settings.delivery_max_attempts = 3
    fake_slack.fail("chat.postMessage", "internal_error", times=3)
    effect_id = enqueue(runtime, "tr_crashtest00001:4:convert_to_opportunity:opp", "slack.message",
                        {"channel": "#cloud-trial-acme", "text": ":briefcase: Opportunity created", "blocks": []})
    outcomes = []
    for _ in range(3):
        outcomes.append(deliverer.deliver(effect_id))
        clock.advance(minutes=20)  # past the longest backoff
    assert outcomes == ["retry", "retry", "failed"]
    return effect_id


def test_an_effect_is_parked_as_failed_after_the_last_attempt_and_the_alerts_channel_is_told(runtime, deliverer,
                                                                                            fake_slack, clock):
    effect_id = park_a_message(runtime, deliverer, fake_slack, clock)

    parked = row(runtime, effect_id)
    assert (parked.status, parked.attempts) == ("failed", 3)
    assert "internal_error" in parked.last_error
    assert fake_slack.messages_in("cloud-trial-acme") == []

    assert deliverer.drain() == {"delivered": 1}
    [notice] = fake_slack.messages_in("cloud-trial-alerts")
    assert "could not deliver `slack.message`" in notice["text"]
    assert "after 3 attempt(s)" in notice["text"]
    assert f"trialflow outbox retry {effect_id}" in notice["text"]


def trialflow_cli(settings, *args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    """`trialflow ...` in its own process, configured only through TRIALFLOW_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALFLOW_")}
    env.update(TRIALFLOW_DATABASE_URL=settings.database_url, TRIALFLOW_CONFIG_DIR=str(settings.config_dir))
    env.update({f"TRIALFLOW_{k.upper()}": str(v) for k, v in extra.items()})
    return subprocess.run([sys.executable, "-m", "trialflow.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_trialflow_outbox_lists_the_parked_effect_and_retry_sends_it_again(runtime, deliverer, fake_slack, clock,
                                                                          tmp_path):
    effect_id = park_a_message(runtime, deliverer, fake_slack, clock)

    listing = trialflow_cli(runtime.settings, "outbox", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    [line] = [ln for ln in listing.stdout.splitlines() if ln.split()[:1] == [str(effect_id)]]
    assert line.split()[1:3] == ["failed", "slack.message"]
    assert "attempts=3" in line and ":briefcase: Opportunity created" in line
    assert "last error: Slack chat.postMessage failed for now: internal_error" in listing.stdout

    retried = trialflow_cli(runtime.settings, "outbox", "retry", str(effect_id), cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == f"effect {effect_id} re-queued"
    requeued = row(runtime, effect_id)
    assert (requeued.status, requeued.attempts, requeued.last_error) == ("pending", 0, None)

    # Another process, configured like a worker, delivers it (and the failure notice) to the same fake Slack.
    drained = trialflow_cli(runtime.settings, "outbox", "drain", cwd=tmp_path, **fake_slack.settings())
    assert drained.returncode == 0, drained.stderr
    assert json.loads(drained.stdout.strip().splitlines()[-1]) == {"delivered": 2}
    assert row(runtime, effect_id).status == "delivered"
    assert [m["text"] for m in fake_slack.messages_in("cloud-trial-acme")] == [":briefcase: Opportunity created"]

    again = trialflow_cli(runtime.settings, "outbox", "retry", str(effect_id), cwd=tmp_path)
    assert again.returncode == 1
    assert f"effect {effect_id} is not failed or pending" in again.stderr


# --- no tokens: the dry-run sink ---------------------------------------------------------------

@pytest.fixture
def dry_runtime(db_url, config_dir, clock):
    rt = Runtime(make_settings(db_url, config_dir), clock=clock)
    load_reference_data(rt.session_factory, config_dir, clock.now())
    yield rt
    rt.close()


def test_without_tokens_effects_are_logged_and_marked_delivered_but_the_reset_link_is_never_logged(
        db_url, config_dir, clock, caplog, fake_sourcegraph):
    # No Slack, GitHub or SMTP tokens; trialflow does hold the instance's: the link it returns is
    # "emailed" by the dry-run sink and never logged.
    caplog.set_level(logging.DEBUG)
    rt = Runtime(make_settings(db_url, config_dir, **fake_sourcegraph.settings()), clock=clock)
    load_reference_data(rt.session_factory, config_dir, clock.now())
    submit_signup(rt.uow, rt.settings, rt.clock, SignupInput(email="bob@acme-corp.com"))

    assert build_deliverer(rt).drain_all() == {"delivered": 5}
    [link] = fake_sourcegraph.reset_links
    assert link.startswith("https://pool-a.sourcegraph.com/password-reset?code=")

    dry_run = {r.kind: (r.status, r.result.get("dry_run", (r.result.get("email") or {}).get("dry_run")))
               for r in rows(rt)}
    assert dry_run == {"slack.message": ("delivered", True), "slack.channel": ("delivered", True),
                       "instance.account": ("delivered", True), "email": ("delivered", True),
                       "slack.home": ("delivered", True)}
    assert "dry-run email → bob@acme-corp.com: password_reset" in caplog.text
    assert "dry-run slack.channel" in caplog.text
    assert link not in caplog.text
    assert link.split("code=")[1] not in caplog.text
    assert link.split("code=")[1] not in str([tuple(r) for r in rows(rt)])
    rt.close()


def test_without_an_instance_token_no_reset_link_is_invented(dry_runtime, caplog):
    caplog.set_level(logging.DEBUG)
    submit_signup(dry_runtime.uow, dry_runtime.settings, dry_runtime.clock, SignupInput(email="bob@acme-corp.com"))
    assert build_deliverer(dry_runtime).drain_all() == {"delivered": 5}
    [pending] = rows(dry_runtime, tables.outbox.c.kind == "email", tables.outbox.c.key.like("%account-pending"))
    assert pending.payload["template"] == "account_pending" and "reset_link" not in pending.payload["context"]
    [alert] = rows(dry_runtime, tables.outbox.c.kind == "slack.message")
    assert "?sourcegraph-operator" in json.dumps(alert.payload), "the CE gets today's manual step"
    assert "password-reset?" not in caplog.text + str([tuple(r) for r in rows(dry_runtime)])
