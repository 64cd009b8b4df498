"""Bounded storage: delivered effects past retention leave the outbox in batches (the sweep and
`trialflow outbox prune`); undelivered and failed ones stay, and so do the ones later effects and
the cloud team's signals still look up; a pruned effect decided again is not sent twice."""
from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from tests.conftest import make_settings
from tests.support.outbox import enqueue_effect
from tests.support.signed import issue_closed, post_webhook, signing_settings
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.services import outbox
from trialflow.services.directory import Directory
from trialflow.services.prune import prune
from trialflow.services.sweep import sweep
from trialflow.services.trials import Command, run

ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture
def settings(db_url, config_dir, github):
    return make_settings(db_url, config_dir, **signing_settings(), **github.settings())


def deliver(runtime) -> None:
    Deliverer(runtime, {"github": GitHubTransport(runtime.settings, seconds_between_writes=0),
                        "slack": DryRunTransport("slack"), "email": DryRunTransport("email")}).drain_all()


def outbox_rows(runtime) -> dict[int, tuple]:
    o = tables.outbox
    with runtime.session_factory() as s:
        return {r.id: (r.key, r.kind, r.status, r.trial_id) for r in s.execute(select(o))}


def story(client, runtime, github) -> dict:
    """gina's trial terminated by an admin (its termination issue open), bob's trial live, and two
    effects past retention that were never delivered: one pending, one parked as failed."""
    gina = client.post("/api/signups", json={"email": "gina@globex.com"}).json()["trial_id"]
    bob = client.post("/api/signups", json={"email": "bob@acme-corp.com"}).json()["trial_id"]
    with runtime.session_factory() as s:
        admin = Directory(s).by_slack_id("U0ADMIN01")
    run(runtime, Command(gina, "terminate", "U0ADMIN01", admin, {"reason": "not a fit"}))
    deliver(runtime)
    pending = enqueue_effect(runtime, "test:pending", "email.send", {"to": "x@example.com"})
    failed = enqueue_effect(runtime, "test:failed", "email.send", {"to": "y@example.com"})
    with runtime.uow() as uow:
        o = tables.outbox
        uow.session.execute(update(o).where(o.c.id == pending).values(next_attempt_at=runtime.clock.now() + timedelta(days=90)))
        uow.session.execute(update(o).where(o.c.id == failed).values(status="failed", last_error="refused"))
        uow.commit()
    [issue] = [i for i in github.issues if i["title"].startswith("Terminate cloud trial instance")]
    return {"gina": gina, "bob": bob, "pending": pending, "failed": failed, "issue": issue}


def test_the_right_rows_go_in_batches_and_a_dry_run_changes_nothing(client, runtime, clock, github):
    s = story(client, runtime, github)
    before = outbox_rows(runtime)
    delivered = {i for i, (_, _, status, _) in before.items() if status == "delivered"}
    # Kept past retention: bob's Slack messages and issues (his trial is live: its thread and issue
    # are still looked up), gina's termination issue (the cloud team has not closed it yet), and
    # everything not delivered.
    looked_up = {i for i in delivered if before[i][3] == s["bob"] and before[i][1] in ("slack.message", "github.issue")}
    with runtime.session_factory() as session:
        open_request = {session.scalar(select(tables.cloud_requests.c.key).where(tables.cloud_requests.c.trial_id == s["gina"]))}
    termination = {i for i in delivered if before[i][0] in open_request}
    assert len(termination) == 1 and looked_up
    expected_gone = delivered - looked_up - termination
    assert len(expected_gone) >= 5

    clock.advance(days=29)
    assert prune(runtime, dry_run=True).pruned == 0          # within the 30 days: nothing goes
    clock.advance(days=2)
    dry = prune(runtime, dry_run=True, batch=2)
    assert (dry.pruned, dry.batches) == (len(expected_gone), -(-len(expected_gone) // 2))
    assert outbox_rows(runtime) == before

    report = prune(runtime, batch=2, max_batches=1)
    assert (report.pruned, report.done) == (2, False)           # one small batch, more left
    report = prune(runtime, batch=2)
    assert report.pruned == len(expected_gone) - 2
    after = outbox_rows(runtime)
    assert set(after) == set(before) - expected_gone
    assert {s["pending"], s["failed"]} <= set(after)
    with runtime.session_factory() as session:
        kept_keys = set(session.scalars(select(tables.pruned_keys.c.key)))
    assert kept_keys == {before[i][0] for i in expected_gone}
    with runtime.session_factory() as session:   # trials and their history are never pruned
        assert session.scalar(select(tables.trials.c.state).where(tables.trials.c.id == s["gina"])) == "terminated"

    # The cloud team closes the termination issue after pruning: trialflow still knows it opened it.
    closed = post_webhook(client, "issues", issue_closed(s["issue"]["number"], s["issue"]["body"], "cody-cloud"))
    assert closed.json()["status"] == "request_done", closed.json()
    assert prune(runtime).pruned == 1                           # now the request is done, its issue goes too


def test_the_sweep_prunes_and_a_pruned_effect_decided_again_is_not_sent_twice(client, runtime, clock, github):
    story(client, runtime, github)
    deliver(runtime)
    o = tables.outbox
    with runtime.session_factory() as session:
        delivered = {r.key: r for r in session.execute(select(o.c.key, o.c.kind, o.c.payload, o.c.trial_id)
                                                       .where(o.c.status == "delivered"))}
    clock.advance(days=31)
    report = sweep(runtime)
    assert report.pruned > 0 and any("pruned" in action for action in report.actions)
    with runtime.session_factory() as session:
        left = set(session.scalars(select(o.c.key)))
    key, kind, payload, trial_id = next(row for k, row in sorted(delivered.items()) if k not in left)
    with runtime.uow() as uow:                      # the same step's effect, decided again
        assert outbox.enqueue(uow, key=key, kind=kind, payload=payload, now=clock.now(), trial_id=trial_id) is None
        uow.commit()
    with runtime.session_factory() as session:
        assert session.scalar(select(tables.outbox.c.id).where(tables.outbox.c.key == key)) is None
    assert sweep(runtime).pruned == 0


def test_outbox_prune_dry_run_shows_what_would_go(client, runtime, clock, github, settings, tmp_path):
    story(client, runtime, github)
    clock.advance(days=31)
    expected = prune(runtime, dry_run=True)
    env = {"TRIALFLOW_DATABASE_URL": settings.database_url, "TRIALFLOW_OUTBOX_RETENTION_DAYS": "1",
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "trialflow.cli", "outbox", "prune", "--dry-run"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    # The real clock is later than the test's (2026-01-05) plus a day: the same rows are past retention.
    assert f"would prune {expected.pruned} delivered effects" in done.stdout
    for kind, n in expected.by_kind.items():
        assert f"{kind:<16} {n}" in done.stdout
    assert len(outbox_rows(runtime)) > expected.pruned
