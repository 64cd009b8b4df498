"""Triggers, states and timer kinds are named once, in the lifecycle table, and every step has
exactly one policy and, unless routing takes it, exactly one command handler."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import PlainTrial
from trialflow.services import policies, timers, trials

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def test_every_step_of_the_table_has_exactly_one_policy():
    assert sorted(policies.HANDLERS) == sorted(lc.TRIGGERS)


def test_every_step_is_taken_either_by_a_command_or_by_routing_never_both():
    commands, routing = set(trials.COMMAND_HANDLERS), set(trials.ROUTING_STEPS)
    assert not commands & routing
    assert sorted(commands | routing) == sorted(lc.TRIGGERS)


def test_routing_steps_are_trialflows_own():
    assert all(lc.STEPS[trigger].who == "system" for trigger in trials.ROUTING_STEPS)


def test_every_timer_kind_leads_to_steps_of_the_table():
    assert len({t.kind for t in lc.TIMERS}) == len(lc.TIMERS)
    for timer in lc.TIMERS:
        assert timer.steps and set(timer.steps) <= set(lc.TRIGGERS), timer


@pytest.mark.parametrize("state", lc.STATES)
@pytest.mark.parametrize("timer", lc.TIMERS, ids=lambda t: t.kind)
@pytest.mark.parametrize("used", [False, True])
def test_a_due_timer_only_ever_causes_a_step_declared_for_its_kind_and_allowed_now(state, timer, used):
    trial = PlainTrial("tr_0123456789abcdef", "bob@acme-corp.com", "acme-corp.com", T0)
    trial.state = state
    trial.started_at = T0
    trial.last_activity_at = T0 + timedelta(days=3) if used else None
    decided = timers.step_for(trial, timer.kind)
    if decided is None:
        return
    trigger, _detail = decided
    assert trigger in timer.steps
    assert lc.allowed(state, trigger)


def test_an_unknown_timer_kind_causes_nothing():
    trial = PlainTrial("tr_0123456789abcdef", "bob@acme-corp.com", "acme-corp.com", T0)
    trial.state = lc.ACTIVE
    assert timers.step_for(trial, "no_such_timer") is None
    assert tuple(t.kind for t in lc.TIMERS) == timers.TIMER_KINDS
