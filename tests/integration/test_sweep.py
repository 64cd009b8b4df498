"""The 15/30-day clock: the sweep moved by a ManualClock (and by `trialflow sweep --at` in a
subprocess), on SQLite and PostgreSQL; two sweepers at once on PostgreSQL."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select, update

from tests.conftest import make_settings
from tests.support.processes import trialflow_env
from tests.support.steps import act, signup
from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.metrics import SWEEP_KEY
from trialflow.runtime import Runtime
from trialflow.services.activity import ActivityReport, record_activity
from trialflow.services.reference import load_reference_data
from trialflow.services.sweep import sweep

ROOT = Path(__file__).resolve().parents[2]




def used(rt, trial_id: str) -> None:
    """The instance reported use now (what POST /api/instances/{host}/activity records)."""
    with rt.session_factory() as s, s.begin():
        s.execute(update(tables.trials).where(tables.trials.c.id == trial_id).values(last_activity_at=rt.clock.now()))


def unused(rt, trial_id: str) -> None:
    """The instance answered, and shows no use: a report of all zeros (what a usage poll or
    POST /api/instances/{host}/activity records). With no answer at all, day 15 asks the CE instead."""
    with rt.session_factory() as s:
        host = s.scalar(select(tables.trials.c.instance_host).where(tables.trials.c.id == trial_id))
    record_activity(rt, host, ActivityReport(at=rt.clock.now(), active_users=0, searches=0, code_intel_actions=0,
                                             repositories=0))


def state(rt, trial_id: str) -> str:
    with rt.session_factory() as s:
        return s.scalar(select(tables.trials.c.state).where(tables.trials.c.id == trial_id))


def history(rt, trial_id: str) -> list[tuple[str, str, dict]]:
    with rt.session_factory() as s:
        return [(h.trigger, h.actor, h.detail) for h in s.execute(select(tables.trial_history).where(
            tables.trial_history.c.trial_id == trial_id).order_by(tables.trial_history.c.id))]


def effects(rt, trial_id: str | None, kind: str, since_key: str = "") -> list[dict]:
    with rt.session_factory() as s:
        stmt = select(tables.outbox.c.payload).where(tables.outbox.c.kind == kind).order_by(tables.outbox.c.id)
        stmt = stmt.where(tables.outbox.c.trial_id == trial_id) if trial_id else stmt.where(tables.outbox.c.trial_id.is_(None))
        return list(s.scalars(stmt.where(tables.outbox.c.key.like(f"%{since_key}%"))))


def pending_timers(rt, trial_id: str) -> dict:
    with rt.session_factory() as s:
        return dict(s.execute(select(tables.timers.c.kind, tables.timers.c.due_at).where(
            tables.timers.c.trial_id == trial_id, tables.timers.c.fired_at.is_(None))).all())


def snapshot(rt) -> tuple:
    """Everything a sweep may change in the program (not the /metrics note of its last run)."""
    with rt.session_factory() as s:
        return (s.scalar(select(func.count()).select_from(tables.trial_history)),
                s.scalar(select(func.count()).select_from(tables.outbox)),
                s.scalar(select(func.count()).select_from(tables.timers).where(tables.timers.c.fired_at.is_not(None))),
                tuple(s.execute(select(tables.trials.c.id, tables.trials.c.state).order_by(tables.trials.c.id)).all()),
                tuple(s.execute(select(tables.kv.c.key, tables.kv.c.value).where(tables.kv.c.key != SWEEP_KEY)
                                .order_by(tables.kv.c.key)).all()))


# The prospect's emails are steps of the clock too (tests/integration/test_prospect_emails.py); these
# tests are about the trials team's steps.
PROSPECT_STEPS = (lc.TELL_DEADLINE, lc.SEND_ONBOARDING_TIP, lc.CHECK_IN)


def team_steps(rt, trial_id: str) -> list[str]:
    return [h[0] for h in history(rt, trial_id) if h[0] not in PROSPECT_STEPS]


def team_actions(report) -> list[str]:
    """The report's steps that are not the prospect's emails."""
    return [a for a in report.actions if not any(f"→ {step} " in a for step in PROSPECT_STEPS)]


def buttons(message: dict) -> list[tuple[str, str]]:
    return [(e["action_id"], e["value"]) for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


# --- day 15 ---------------------------------------------------------------------------------------

def test_an_inactive_trial_gets_a_heads_up_with_keep_and_terminate_buttons_before_day_15(runtime, clock):
    idle = signup(runtime, "gina@globex.com")
    busy = signup(runtime, "bob@acme-corp.com")
    clock.advance(days=1)
    used(runtime, busy)
    clock.advance(days=11, minutes=1)
    report = sweep(runtime)
    assert team_steps(runtime, idle)[-1] == "warn_termination"
    assert "warn_termination" not in team_steps(runtime, busy)
    [heads_up] = effects(runtime, idle, "slack.message", "warn_termination")
    assert heads_up["channel"] == "#cloud-trial-globex" and "day-15 review" in heads_up["text"]
    assert buttons(heads_up) == [("trial:keep", idle), ("trial:terminate", idle)]
    # both heads-ups (one a no-op), both prospect notices and the two day-1 tips (one a no-op: in use)
    assert report.timers_fired == 6 and len(team_actions(report)) == 1


def test_at_day_15_no_activity_terminates_and_frees_the_instance_unless_the_ce_kept_it(runtime, clock):
    idle = signup(runtime, "gina@globex.com")
    kept = signup(runtime, "bob@acme-corp.com")
    act(runtime, kept, "keep", "U0CE00001")
    unused(runtime, idle)
    with runtime.session_factory() as s:
        host = s.scalar(select(tables.trials.c.instance_host).where(tables.trials.c.id == idle))
    clock.advance(days=15, minutes=1)
    sweep(runtime)
    assert state(runtime, idle) == "terminated"
    assert history(runtime, idle)[-1][:2] == ("terminate", "system")
    [issue] = effects(runtime, idle, "github.issue")
    assert issue["issue_kind"] == "termination" and host in issue["title"]
    with runtime.session_factory() as s:
        assert s.scalar(select(tables.instances.c.status).where(tables.instances.c.host == host)) == "terminated"
        assert s.scalar(select(tables.domain_claims.c.domain).where(tables.domain_claims.c.domain == "globex.com")) is None
    assert pending_timers(runtime, idle) == {}
    assert state(runtime, kept) == "extended"
    assert history(runtime, kept)[-1][2]["reason"] == "day 15: kept by the CE"


def test_at_day_15_activity_extends_to_day_30_with_a_trial_extend_issue(runtime, clock):
    bob = signup(runtime, "bob@acme-corp.com")
    started = clock.now()
    clock.advance(days=4)
    used(runtime, bob)
    clock.advance(days=11, minutes=1)
    sweep(runtime)
    assert state(runtime, bob) == "extended"
    assert team_steps(runtime, bob) == ["claim_pool_instance", "extend"], "no heads-up for an instance in use"
    [issue] = effects(runtime, bob, "github.issue")
    assert issue["issue_kind"] == "trial-extend" and str((started + timedelta(days=30)).date()) in issue["title"]
    assert pending_timers(runtime, bob) == {"day30_decision": started + timedelta(days=30),
                                            "prospect_deadline_notice": started + timedelta(days=27)}


# --- day 30 ---------------------------------------------------------------------------------------

def test_day_30_reminds_the_ce_then_escalates_every_two_days_until_someone_decides(runtime, clock):
    bob = signup(runtime, "bob@acme-corp.com")
    clock.advance(days=1)
    used(runtime, bob)
    clock.advance(days=14, minutes=1)
    sweep(runtime)
    clock.advance(days=15)
    sweep(runtime)
    [reminder] = effects(runtime, bob, "slack.message", "remind_decision")
    assert reminder["channel"] == "#cloud-trial-acme-corp" and "<@U0CE00001>" in reminder["text"]
    assert [b[0] for b in buttons(reminder)] == ["trial:extend", "trial:convert", "trial:terminate"]
    clock.advance(days=2)
    sweep(runtime)
    [escalation] = effects(runtime, bob, "slack.message", "escalate_decision")
    assert escalation["channel"] == "cloud-trial-alerts"
    assert "<@U0AE00001>" in escalation["text"] and "<@U0CE00001>" in escalation["text"]
    clock.advance(days=1)
    assert team_actions(sweep(runtime)) == [], "not before two more days"
    clock.advance(days=1)
    sweep(runtime)
    assert len(effects(runtime, bob, "slack.message", "escalate_decision")) == 2
    clock.advance(days=2)
    sweep(runtime)
    assert len(effects(runtime, bob, "slack.message", "escalate_decision")) == 3
    act(runtime, bob, "extend", "U0CE00001", days=15)
    clock.advance(days=6)
    assert team_actions(sweep(runtime)) == [], "a decision stops the escalations"
    assert len(effects(runtime, bob, "slack.message", "escalate_decision")) == 3
    assert team_steps(runtime, bob)[-5:] == ["remind_decision", "escalate_decision", "escalate_decision",
                                                          "escalate_decision", "extend"]


def test_a_decision_before_day_30_leaves_nothing_for_the_clock(runtime, clock):
    bob = signup(runtime, "bob@acme-corp.com")
    used(runtime, bob)
    clock.advance(days=15, minutes=1)
    sweep(runtime)
    act(runtime, bob, "convert", "U0CE00001")
    clock.advance(days=30)
    assert sweep(runtime).trials_touched == 0
    assert state(runtime, bob) == "converted" and pending_timers(runtime, bob) == {}


# --- idempotent, queues, reminders, program chores -------------------------------------------------

def test_a_sweep_run_twice_for_the_same_moment_does_nothing_the_second_time(runtime, clock):
    for email in ("bob@acme-corp.com", "gina@globex.com", "hans@xn--bcher-kva.example"):
        signup(runtime, email)
    signup(runtime, "alice@acme-corp.com")              # case 1: a user-added reminder too
    clock.advance(days=15, minutes=1)
    first = sweep(runtime)
    # 3 started trials: heads-up (no-op when in use: none is), review, prospect notice, day-1 tip; 1 reminder
    assert len(team_actions(first)) == 7 and first.timers_fired == 13
    before = snapshot(runtime)
    second = sweep(runtime, at=first.at)
    assert (second.timers_fired, second.trials_touched, second.actions) == (0, 0, [])
    assert snapshot(runtime) == before


def test_a_termination_frees_capacity_for_the_queue_once_the_cloud_team_confirms_it(db_url, config_dir, clock):
    rt = Runtime(make_settings(db_url, config_dir, instance_cap=1), clock=clock)
    load_reference_data(rt.session_factory, config_dir, clock.now())
    holder = signup(rt, "gina@globex.com")
    lead = signup(rt, "sam@stark-industries.com", company="Stark Industries")
    act(rt, lead, "qualify", "U0SDR0001", opportunity_id="006W")
    assert state(rt, lead) == "waiting_for_capacity"
    clock.advance(days=1)
    unused(rt, holder)
    assert sweep(rt).promoted == 0, "no capacity yet"
    clock.advance(days=14, minutes=1)
    asked = sweep(rt)
    assert (state(rt, holder), state(rt, lead)) == ("terminated", "waiting_for_capacity")
    assert asked.promoted == 0, "the instance is still running until the cloud team confirms its termination"
    act(rt, holder, "confirm_request_done", "U0CLOUD01", kind="termination", number=7)
    report = sweep(rt)
    rt_state = (state(rt, holder), state(rt, lead))
    issues = [i["issue_kind"] for i in effects(rt, lead, "github.issue")]
    rt.close()
    assert rt_state == ("terminated", "instance_requested")
    assert report.promoted == 1 and issues == ["instance-request"]


def test_a_user_waiting_to_be_added_is_reminded_every_two_days_until_the_ae_confirms(runtime, clock):
    signup(runtime, "bob@acme-corp.com")
    alice = signup(runtime, "alice@acme-corp.com")
    for _ in range(2):
        clock.advance(days=2, minutes=1)
        sweep(runtime)
    assert [h[0] for h in history(runtime, alice)].count("remind_user_added") == 2
    reminders = effects(runtime, alice, "slack.message", "remind_user_added")
    assert len(reminders) == 2 and all("<@U0AE00001>" in r["text"] and r["thread_ref"] == f"alert:{alice}" for r in reminders)
    act(runtime, alice, "confirm_user_added", "U0AE00001")
    clock.advance(days=6)
    sweep(runtime)
    assert [h[0] for h in history(runtime, alice)].count("remind_user_added") == 2


def test_license_rotation_is_reminded_once_per_period_without_the_key(runtime, clock):
    sweep(runtime)                                      # first sweep: the rotation clock starts
    clock.advance(days=7, hours=1)
    sweep(runtime)
    sweep(runtime)
    clock.advance(days=7)
    sweep(runtime)
    reminders = effects(runtime, None, "slack.message", "license-rotation")
    assert len(reminders) == 2
    assert all("trialflow license rotated" in r["text"] for r in reminders)


def test_a_pool_below_its_low_water_mark_raises_one_replenish_issue(db_url, config_dir, clock):
    rt = Runtime(make_settings(db_url, config_dir, pool_low_water=10), clock=clock)
    load_reference_data(rt.session_factory, config_dir, clock.now())
    first = sweep(rt)
    clock.advance(days=1)
    sweep(rt)
    issues = effects(rt, None, "github.issue")
    rt.close()
    assert "pool below its low-water mark: replenish request raised" in first.actions
    assert [i["issue_kind"] for i in issues] == ["pool-replenish"]


# --- robustness -----------------------------------------------------------------------------------

def test_one_broken_trial_does_not_stop_the_sweep_and_stays_due(runtime, clock, caplog):
    broken = signup(runtime, "gina@globex.com")
    fine = signup(runtime, "hans@xn--bcher-kva.example")
    used(runtime, broken)
    used(runtime, fine)
    with runtime.session_factory() as s, s.begin():   # a history row damaged by hand: its end date is not a date
        s.execute(insert(tables.trial_history).values(trial_id=broken, from_state="active", to_state="active",
                                                      trigger="extend", actor="system", at=clock.now(),
                                                      detail={"until": "the end of the month"}))
    clock.advance(days=15, minutes=1)
    with caplog.at_level(logging.WARNING, logger="trialflow.sweep"):
        report = sweep(runtime)
    assert state(runtime, fine) == "extended"
    assert state(runtime, broken) == "active"
    assert "day15_review" in pending_timers(runtime, broken), "left due, to be retried once repaired"
    # both day-12 heads-ups (no-ops), one review, both prospect notices and day-1 tips (no-ops: in use)
    assert len(team_actions(report)) == 1 and report.timers_fired == 7
    assert any(broken in r.getMessage() and "left due" in r.getMessage() for r in caplog.records)
    clock.advance(hours=1)
    again = sweep(runtime, dry_run=True, batch=1)   # a batch made only of the broken timer ends the run
    assert again.actions == [] and again.timers_fired == 0


# --- the CLI --------------------------------------------------------------------------------------

def run_cli(db_url: str, config_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trialflow.cli", "sweep", *args], cwd=ROOT,
                          env=trialflow_env(database_url=db_url, config_dir=str(config_dir)),
                          capture_output=True, text=True, timeout=60)


def test_a_dry_run_from_the_cli_prints_what_it_would_do_and_changes_nothing(db_url, config_dir, runtime, clock):
    idle = signup(runtime, "gina@globex.com")
    busy = signup(runtime, "bob@acme-corp.com")
    used(runtime, busy)
    unused(runtime, idle)
    sweep(runtime)                                      # the license rotation clock has started
    at = (clock.now() + timedelta(days=15, minutes=1)).isoformat()
    before = snapshot(runtime)
    dry = run_cli(db_url, config_dir, "--dry-run", "--at", at)
    assert dry.returncode == 0, dry.stderr
    assert "would do 7 thing(s)" in dry.stdout   # and the prospect's notices and tip
    assert f"{idle} gina@globex.com: day15_review → terminate (now terminated)" in dry.stdout
    assert f"{busy} bob@acme-corp.com: day15_review → extend (now extended)" in dry.stdout
    assert "would post a license rotation reminder" in dry.stdout
    assert "license rotation reminder posted" not in dry.stdout
    assert snapshot(runtime) == before
    real = run_cli(db_url, config_dir, "--at", at)
    assert real.returncode == 0, real.stderr
    assert "did 7 thing(s)" in real.stdout
    assert (state(runtime, idle), state(runtime, busy)) == ("terminated", "extended")


def test_a_sweep_for_a_future_time_decides_as_of_then_and_has_its_effects_delivered_now(db_url, config_dir,
                                                                                       runtime):
    idle = signup(runtime, "gina@globex.com")
    unused(runtime, idle)   # its instance answered with no use: day 15 terminates (no answer would ask the CE)
    sweep(runtime)
    future = datetime.now(UTC) + timedelta(days=400)

    swept = run_cli(db_url, config_dir, "--at", future.isoformat())
    sent_by = datetime.now(UTC)

    assert swept.returncode == 0, swept.stderr
    assert f"{idle} gina@globex.com: day15_review → terminate (now terminated)" in swept.stdout
    assert history(runtime, idle)[-1][0] == "terminate"
    with runtime.session_factory() as s:
        decided_at = s.scalar(select(tables.trial_history.c.at).where(tables.trial_history.c.trial_id == idle)
                              .order_by(tables.trial_history.c.id.desc()).limit(1))
        caused = s.execute(select(tables.outbox).where(tables.outbox.c.trial_id == idle,
                                                       tables.outbox.c.status == "pending")).all()
    assert decided_at == future                               # the decision: as of the simulated time
    assert {r.kind for r in caused} >= {"github.issue"}       # the termination request among what it caused
    assert all(r.next_attempt_at <= sent_by and r.created_at <= sent_by for r in caused)   # ... due now
    drained = subprocess.run([sys.executable, "-m", "trialflow.cli", "outbox", "drain"], cwd=ROOT, capture_output=True,
                             env=trialflow_env(database_url=db_url, config_dir=str(config_dir)), text=True, timeout=60)
    assert drained.returncode == 0, drained.stderr
    assert json.loads(drained.stdout.strip().splitlines()[-1]).get("delivered", 0) >= len(caused)
    with runtime.session_factory() as s:
        assert {r.status for r in s.execute(select(tables.outbox).where(tables.outbox.c.trial_id == idle))} == {
            "delivered"}


# --- two sweepers at once (PostgreSQL) ------------------------------------------------------------

def test_two_sweepers_at_once_never_process_a_trial_twice(pg_url, config_dir, clock):
    settings = make_settings(pg_url, config_dir)
    setup = Runtime(settings, clock=clock)
    load_reference_data(setup.session_factory, config_dir, clock.now())
    now = clock.now()
    started = now - timedelta(days=15, hours=1)
    count = 1500
    trials = [{"id": f"tr_{i:016x}", "email": f"u{i}@c{i}.example", "domain": f"c{i}.example", "state": "active",
               "case": "prequalified_unnamed", "account_name": f"C{i}", "instance_host": f"t{i}.sourcegraph.com",
               "ae": "alice.ae@example.com", "ce": "carol.ce@example.com", "created_at": started,
               "updated_at": started, "started_at": started, "kept": False, "mql_points": 0,
               "last_activity_at": started + timedelta(days=2) if i % 3 == 0 else None} for i in range(count)]
    with setup.session_factory() as s, s.begin():
        s.execute(insert(tables.trials), trials)
        s.execute(insert(tables.timers), [{"trial_id": t["id"], "kind": "day15_review", "due_at": now - timedelta(minutes=i % 60),
                                           "created_at": started} for i, t in enumerate(trials)])
        # The idle ones' instances answered with no use (with no answer at all, day 15 asks the CE).
        s.execute(insert(tables.instance_activity), [{"host": t["instance_host"], "trial_id": t["id"], "at": started,
                                                      "active_users": 0, "searches": 0, "code_intel_actions": 0,
                                                      "repositories": 0} for t in trials if not t["last_activity_at"]])
    setup.close()

    runtimes = [Runtime(settings, clock=clock) for _ in range(2)]
    reports = []
    barrier = threading.Barrier(len(runtimes))

    def sweeper(rt) -> None:
        barrier.wait()
        reports.append(sweep(rt, at=now, batch=100))

    threads = [threading.Thread(target=sweeper, args=(rt,)) for rt in runtimes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check = Runtime(settings, clock=clock)
    with check.session_factory() as s:
        per_trial = dict(s.execute(select(tables.trial_history.c.trial_id, func.count()).group_by(tables.trial_history.c.trial_id)).all())
        issues = s.scalar(select(func.count()).select_from(tables.outbox).where(tables.outbox.c.kind == "github.issue"))
        pending = s.scalar(select(func.count()).select_from(tables.timers).where(
            tables.timers.c.kind == "day15_review", tables.timers.c.fired_at.is_(None)))
    for rt in [*runtimes, check]:
        rt.close()
    assert len(per_trial) == count and set(per_trial.values()) == {1}, "every trial stepped exactly once"
    assert sum(r.trials_touched for r in reports) == count
    assert sum(r.timers_fired for r in reports) == count
    assert all(r.trials_touched > 0 for r in reports), "both sweepers took a share"
    assert issues == count and pending == 0     # one trial-extend or termination issue each
