"""Every wait on a person has a clock, in business hours (a timezone, working days and the
config directory's holidays.csv): triage, the instance request, the hand-off. The clock is moved
by a ManualClock and by `trialflow sweep --at`, across a weekend and a holiday; each reminder and
escalation fires once, and never for a trial that has moved on."""
from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.integration.test_sweep import act, effects, history, pending_timers
from tests.support.block_kit import assert_valid_message
from tests.support.processes import trialflow_env
from tests.support.steps import signup
from trialflow.clock import ManualClock
from trialflow.delivery.core import Deliverer
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.domain import lifecycle as lc
from trialflow.runtime import Runtime
from trialflow.services.reference import load_reference_data
from trialflow.services.sweep import sweep

ROOT = Path(__file__).resolve().parents[2]
PARIS = "Europe/Paris"
# Friday 9 January 2026, 14:00 in Paris; Monday 12 January is a holiday in the config directory.
FRIDAY_2PM = datetime(2026, 1, 9, 13, 0, tzinfo=UTC)
HOLIDAYS = "date,name\n2026-01-12,Company day off\n"


def paris(day: int, hour: int, minute: int = 0) -> datetime:
    """A January 2026 time in Paris (UTC+1 in winter), as UTC."""
    return datetime(2026, 1, day, hour - 1, minute, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(FRIDAY_2PM)



@pytest.fixture
def settings(db_url, config_dir, github):
    (config_dir / "holidays.csv").write_text(HOLIDAYS)
    return make_settings(db_url, config_dir, business_timezone=PARIS, **github.settings())



def at(rt, clock, when: datetime):
    clock.set(when)
    return sweep(rt)


def steps(rt, trial_id: str, *triggers: str) -> list[str]:
    return [h[0] for h in history(rt, trial_id) if h[0] in triggers]


def deliver(runtime) -> None:
    Deliverer(runtime, {"github": GitHubTransport(runtime.settings, seconds_between_writes=0),
                        "slack": DryRunTransport("slack"), "email": DryRunTransport("email")}).drain_all()


def test_triage_reminds_the_inbound_sdrs_after_4_business_hours_and_escalates_after_1_business_day_across_a_weekend_and_a_holiday(
        runtime, clock):
    lead = signup(runtime, "pat@unknown-co.example")
    decided = signup(runtime, "quinn@unknown-co.example")
    assert pending_timers(runtime, lead) == {lc.TRIAGE_REMINDER: paris(13, 10), lc.TRIAGE_ESCALATION: paris(13, 14)}
    act(runtime, decided, lc.DISQUALIFY, "U0SDR0001", reason="student project")

    # Friday's close, the weekend and the holiday: 3 business hours have passed, no more.
    for when in (paris(9, 17), paris(10, 12), paris(11, 23), paris(12, 16), paris(13, 9, 59)):
        at(runtime, clock, when)
    assert steps(runtime, lead, lc.REMIND_TRIAGE, lc.ESCALATE_TRIAGE) == []

    at(runtime, clock, paris(13, 10))
    at(runtime, clock, paris(13, 11))
    assert steps(runtime, lead, lc.REMIND_TRIAGE, lc.ESCALATE_TRIAGE) == [lc.REMIND_TRIAGE]
    [reminder] = effects(runtime, lead, "slack.message", lc.REMIND_TRIAGE)
    assert reminder["thread_ref"] == f"alert:{lead}" and "<@U0SDR0001>" in reminder["text"]
    assert "<@U0ADMIN01>" not in reminder["text"]
    assert_valid_message(reminder)

    at(runtime, clock, paris(13, 14))
    at(runtime, clock, paris(20, 14))
    assert steps(runtime, lead, lc.REMIND_TRIAGE, lc.ESCALATE_TRIAGE) == [lc.REMIND_TRIAGE, lc.ESCALATE_TRIAGE]
    [escalation] = effects(runtime, lead, "slack.message", lc.ESCALATE_TRIAGE)
    assert escalation["channel"] == "cloud-trial-alerts" and "thread_ref" not in escalation
    assert "<@U0ADMIN01>" in escalation["text"]
    assert_valid_message(escalation)
    # The disqualified lead moved on before its clock ran out: nothing, ever.
    assert steps(runtime, decided, lc.REMIND_TRIAGE, lc.ESCALATE_TRIAGE) == []
    assert pending_timers(runtime, decided) == {}


def test_an_instance_request_not_ready_after_1_business_day_gets_one_comment_on_its_issue_and_one_alert(
        runtime, clock, github):
    lead = signup(runtime, "pat@unknown-co.example")
    fast = signup(runtime, "quinn@other-co.example")
    act(runtime, lead, lc.QUALIFY, "U0SDR0001")
    act(runtime, fast, lc.QUALIFY, "U0SDR0001")
    deliver(runtime)
    [issue] = [i for i in github.issues if "unknown-co.example" in i["title"]]
    # Qualified Friday 14:00: due Tuesday 14:00 (the weekend and Monday's holiday do not count).
    assert pending_timers(runtime, lead)[lc.INSTANCE_REQUEST_SLA] == paris(13, 14)
    clock.set(paris(12, 10))
    act(runtime, fast, lc.MARK_INSTANCE_READY, "U0CLOUD01", host="fast.sourcegraph.com")

    at(runtime, clock, paris(13, 13, 59))
    assert steps(runtime, lead, lc.CHASE_INSTANCE_REQUEST) == []
    for when in (paris(13, 14), paris(14, 14), paris(16, 14)):
        at(runtime, clock, when)
    assert steps(runtime, lead, lc.CHASE_INSTANCE_REQUEST) == [lc.CHASE_INSTANCE_REQUEST]
    assert steps(runtime, fast, lc.CHASE_INSTANCE_REQUEST) == []
    deliver(runtime)
    [comment] = [c for c in github.comments_on(issue["number"]) if "trialflow expects one within" in c["body"]]
    assert "1 business day(s)" in comment["body"] and "/ready" in comment["body"]
    [alert] = effects(runtime, lead, "slack.message", lc.CHASE_INSTANCE_REQUEST)
    assert alert["thread_ref"] == f"alert:{lead}"
    assert_valid_message(alert)


def test_an_instance_ready_but_not_handed_off_reminds_the_ce_each_business_day_and_the_ae_once_after_2(
        runtime, clock):
    lead = signup(runtime, "pat@unknown-co.example")
    act(runtime, lead, lc.QUALIFY, "U0SDR0001")
    act(runtime, lead, lc.MARK_INSTANCE_READY, "U0CLOUD01", host="pat.sourcegraph.com")  # Friday 14:00
    handed = signup(runtime, "quinn@other-co.example")
    act(runtime, handed, lc.QUALIFY, "U0SDR0001")
    act(runtime, handed, lc.MARK_INSTANCE_READY, "U0CLOUD01", host="quinn.sourcegraph.com")

    at(runtime, clock, paris(12, 10))   # weekend and holiday: no business time
    act(runtime, handed, lc.HAND_OFF, "U0ADMIN01")
    assert steps(runtime, lead, lc.REMIND_HAND_OFF, lc.ESCALATE_HAND_OFF) == []
    at(runtime, clock, paris(13, 14))   # 1 business day
    at(runtime, clock, paris(13, 16))
    assert steps(runtime, lead, lc.REMIND_HAND_OFF, lc.ESCALATE_HAND_OFF) == [lc.REMIND_HAND_OFF]
    for when in (paris(14, 14), paris(14, 15), paris(15, 9)):
        at(runtime, clock, when)
    # Wednesday 14:00 brings the second reminder and the escalation, in either order.
    assert sorted(steps(runtime, lead, lc.REMIND_HAND_OFF, lc.ESCALATE_HAND_OFF)) == [
        lc.ESCALATE_HAND_OFF, lc.REMIND_HAND_OFF, lc.REMIND_HAND_OFF]
    ce_reminders = effects(runtime, lead, "slack.message", lc.REMIND_HAND_OFF)
    [to_ae] = effects(runtime, lead, "slack.message", lc.ESCALATE_HAND_OFF)
    assert all(m["channel"] == "#cloud-trial-unknown-co-example" for m in [*ce_reminders, to_ae])
    assert "<@U0AE0000" in to_ae["text"]
    for message in [*ce_reminders, to_ae]:
        assert_valid_message(message)
    # Handed off on Tuesday, before its first reminder was sent: nothing after the hand-off.
    assert steps(runtime, handed, lc.REMIND_HAND_OFF, lc.ESCALATE_HAND_OFF) == []
    assert {lc.HAND_OFF_REMINDER, lc.HAND_OFF_ESCALATION}.isdisjoint(pending_timers(runtime, handed))
    # Handing off on Thursday morning stops the CE's daily reminder (the next was due at 14:00).
    act(runtime, lead, lc.HAND_OFF, "U0ADMIN01")
    at(runtime, clock, paris(30, 12))
    assert sorted(steps(runtime, lead, lc.REMIND_HAND_OFF, lc.ESCALATE_HAND_OFF)) == [
        lc.ESCALATE_HAND_OFF, lc.REMIND_HAND_OFF, lc.REMIND_HAND_OFF]


def test_sweep_at_moves_the_triage_clock_from_the_command_line(sqlite_url, config_dir):
    db_url = sqlite_url
    (config_dir / "holidays.csv").write_text(HOLIDAYS)
    clock = ManualClock(FRIDAY_2PM)
    rt = Runtime(make_settings(db_url, config_dir, business_timezone=PARIS), clock=clock)
    try:
        load_reference_data(rt.session_factory, config_dir, clock.now())
        lead = signup(rt, "pat@unknown-co.example")
    finally:
        rt.close()

    def sweep_at(when: datetime) -> str:
        done = subprocess.run([sys.executable, "-m", "trialflow.cli", "sweep", "--at", when.isoformat()], cwd=ROOT,
                              env=trialflow_env(database_url=db_url, config_dir=str(config_dir),
                                                business_timezone=PARIS), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert lc.TRIAGE_REMINDER not in sweep_at(paris(12, 17))  # the holiday
    first = sweep_at(paris(13, 10))
    assert f"{lead} pat@unknown-co.example: {lc.TRIAGE_REMINDER} → {lc.REMIND_TRIAGE}" in first
    assert lc.TRIAGE_REMINDER not in sweep_at(paris(13, 12))
