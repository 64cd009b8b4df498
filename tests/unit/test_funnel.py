"""The funnel on a small data set whose figures are worked out by hand below."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trialflow.funnel import Move, TrialFacts, compute_funnel, duration, render_text, week_of

H = 3600.0
NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # a Wednesday in 2026-W10


def at(day: str, hm: str = "09:00") -> datetime:
    return datetime.fromisoformat(f"2026-{day}T{hm}:00+00:00")


def case3(trial_id, created, *moves, state, started=None, grade=None):
    """A case-3 trial: triaged at signup, then ``moves`` as (from, to, trigger, at)."""
    history = (Move("new", "triage", "send_to_triage", created), *(Move(*m) for m in moves))
    return TrialFacts(trial_id, "manual_qualification", state, created, started, grade, history)


def claimed(trial_id, case, created, *, state, grade):
    """A pre-qualified trial: a pool instance at signup, so it starts at once."""
    return TrialFacts(trial_id, case, state, created, created, grade,
                      (Move("new", "active", "claim_pool_instance", created),))


TRIALS = [
    # --- 2026-W08 (Mon 16 Feb) ---------------------------------------------------------------
    case3("a", at("02-16"),
          ("triage", "instance_requested", "qualify", at("02-16", "13:00")),          # 4 h in triage
          ("instance_requested", "instance_ready", "mark_instance_ready", at("02-17", "13:00")),  # 24 h
          ("instance_ready", "active", "hand_off", at("02-17", "19:00")),             # 6 h; start after 34 h
          ("active", "converted", "convert", at("02-25")),
          state="converted", started=at("02-17", "19:00"), grade="A"),
    case3("b", at("02-17", "10:00"),
          ("triage", "instance_requested", "qualify", at("02-17", "12:00")),          # 2 h
          ("instance_requested", "instance_ready", "mark_instance_ready", at("02-18", "20:00")),  # 32 h
          ("instance_ready", "active", "hand_off", at("02-19", "00:00")),             # 4 h; start after 38 h
          state="active", started=at("02-19", "00:00"), grade="C"),
    case3("c", at("02-18"), ("triage", "disqualified", "disqualify", at("02-18", "10:00")), state="disqualified"),
    claimed("d", "prequalified_named", at("02-20", "08:00"), state="extended", grade="B"),
    # --- 2026-W09 (Mon 23 Feb) ---------------------------------------------------------------
    case3("e", at("02-23"),
          ("triage", "waiting_for_capacity", "wait_for_capacity", at("02-24")),        # qualified after 24 h, cap reached
          ("waiting_for_capacity", "instance_requested", "request_instance", at("02-25")),
          ("instance_requested", "instance_ready", "mark_instance_ready", at("02-25", "15:00")),  # 6 h
          state="instance_ready"),
    TrialFacts("f", "existing_instance", "joining_existing", at("02-28"), None, None,
               (Move("new", "joining_existing", "route_to_existing", at("02-28")),)),
    case3("g", at("03-01", "23:30"), state="triage"),                                 # Sunday night: still W09
    # --- 2026-W10 (Mon 2 Mar) ----------------------------------------------------------------
    claimed("h", "prequalified_unnamed", at("03-02", "00:00"), state="active", grade="D"),
    # --- outside the three weeks ---------------------------------------------------------------
    claimed("before", "prequalified_unnamed", at("02-15", "23:59"), state="active", grade="A"),
    claimed("after-now", "prequalified_unnamed", at("03-04", "13:00"), state="active", grade="A"),
]


@pytest.fixture(scope="module")
def funnel():
    return compute_funnel(TRIALS, NOW, weeks=3)


def test_cohorts_are_the_iso_weeks_of_signup_oldest_first(funnel):
    assert [(c.week, c.week_start.isoformat()) for c in funnel.cohorts] == [
        ("2026-W08", "2026-02-16"), ("2026-W09", "2026-02-23"), ("2026-W10", "2026-03-02")]


def test_requests_starts_activation_and_conversion_per_week(funnel):
    rows = [(c.requests, c.joiners, c.starts, c.start_rate, c.activated, c.activation_rate, c.converted,
             c.conversion_rate) for c in funnel.cohorts]
    assert rows == [
        # W08: a b c d requested; a b d started: 3/4 = 0.75; A or B: a d = 2/3; converted: a = 1/3
        (4, 0, 3, 0.75, 2, 0.6667, 1, 0.3333),
        # W09: e g requested (f joined initech's instance: a joiner, not a request), none started:
        # 0/2; no starts, so no activation or conversion rate
        (2, 1, 0, 0.0, 0, None, 0, None),
        # W10: h requested and started: 1/1; grade D: 0/1; not converted: 0/1
        (1, 0, 1, 1.0, 0, 0.0, 0, 0.0),
    ]


def test_the_totals_add_up_the_weeks_shown(funnel):
    t = funnel.total
    # requests 4+2+1 = 7, joiners 1; starts 3+0+1 = 4 -> 4/7; activated 2+0+0 = 2 -> 2/4; converted 1 -> 1/4
    assert (t.requests, t.joiners, t.starts, t.start_rate, t.activated, t.activation_rate, t.converted,
            t.conversion_rate) == (7, 1, 4, 0.5714, 2, 0.5, 1, 0.25)


def test_median_time_in_each_step_per_week(funnel):
    w08, w09, w10 = funnel.cohorts
    # signup -> start, case 3 only: a 34 h, b 38 h -> median 36 h (d is case 2: not counted)
    assert w08.median_seconds("signup_to_start") == 36 * H
    # triage -> qualified: a 4 h, b 2 h -> 3 h
    assert w08.median_seconds("triage_to_qualified") == 3 * H
    # requested -> ready: a 24 h, b 32 h -> 28 h
    assert w08.median_seconds("requested_to_ready") == 28 * H
    # ready -> handed off: a 6 h, b 4 h -> 5 h
    assert w08.median_seconds("ready_to_handed_off") == 5 * H
    # W09: e was qualified after 24 h (it waited for capacity first), ready 6 h after its request,
    # not handed off yet; nobody started
    assert w09.to_dict()["median_seconds"] == {"signup_to_start": None, "triage_to_qualified": 24 * H,
                                                "requested_to_ready": 6 * H, "ready_to_handed_off": None}
    assert set(w10.to_dict()["median_seconds"].values()) == {None}


def test_total_medians_pool_every_completed_step(funnel):
    m = funnel.total.to_dict()["median_seconds"]
    assert m == {
        "signup_to_start": 36 * H,         # 34 h, 38 h
        "triage_to_qualified": 4 * H,      # 2 h, 4 h, 24 h
        "requested_to_ready": 24 * H,      # 6 h, 24 h, 32 h
        "ready_to_handed_off": 5 * H,      # 4 h, 6 h
    }
    assert funnel.total.to_dict()["completed"] == {"signup_to_start": 2, "triage_to_qualified": 3,
                                                   "requested_to_ready": 3, "ready_to_handed_off": 2}


def test_a_sunday_night_signup_belongs_to_that_iso_week():
    assert week_of(at("03-01", "23:59"))[0] == "2026-W09"
    assert week_of(at("03-02", "00:00"))[0] == "2026-W10"
    assert week_of(datetime(2026, 1, 1, tzinfo=UTC))[0] == "2026-W01"   # Thursday 1 Jan 2026
    assert week_of(datetime(2027, 1, 1, tzinfo=UTC))[0] == "2026-W53"   # a Friday in 2026's 53rd week


def test_empty_weeks_are_shown_as_empty_not_left_out():
    funnel = compute_funnel([], NOW, weeks=2)
    assert [(c.week, c.requests, c.start_rate) for c in funnel.cohorts] == [("2026-W09", 0, None), ("2026-W10", 0, None)]


def test_the_text_report_shows_each_weeks_numbers_and_the_totals(funnel):
    text = render_text(funnel)
    lines = text.splitlines()
    w08 = next(line for line in lines if line.split()[:2] == ["2026-W08", "2026-02-16"])
    assert w08.split()[2:] == ["4", "0", "3", "75.0%", "2", "66.7%", "1", "33.3%"]
    total = next(line for line in lines if line.startswith("all "))
    assert total.split()[1:] == ["7", "1", "4", "57.1%", "2", "50.0%", "1", "25.0%"]
    steps = next(line for line in lines if line.startswith("2026-W08") and "(n=" in line)
    assert steps.split()[1:] == ["36.0", "h", "(n=2)", "3.0", "h", "(n=2)", "28.0", "h", "(n=2)", "5.0", "h", "(n=2)"]


@pytest.mark.parametrize("seconds, text", [(None, "–"), (90, "2 min"), (5 * H, "5.0 h"), (47.9 * H, "47.9 h"), (72 * H, "3.0 d")])
def test_durations_read_in_minutes_hours_or_days(seconds, text):
    assert duration(seconds) == text
