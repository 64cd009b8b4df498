"""The lifecycle table, walked exhaustively: every (state, trigger) pair is either allowed and
lands where the table says, or refused and leaves the trial exactly as it was."""
from __future__ import annotations

import gc
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from transitions import Machine

from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import Trial
from trialflow.errors import TransitionRefused

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=3)

# What the table promises, read from the table itself: {(state, trigger): destination or None}.
ALLOWED = {(state, step.trigger): step.dest for step in lc.TABLE for state in step.source}
EVERY_PAIR = list(itertools.product(lc.STATES, lc.TRIGGERS))
ALLOWED_PAIRS = [pair for pair in EVERY_PAIR if pair in ALLOWED]
REFUSED_PAIRS = [pair for pair in EVERY_PAIR if pair not in ALLOWED]


def trial_in(state: str) -> Trial:
    trial = Trial("tr_0123456789abcdef", "bob@acme-corp.com", "acme-corp.com", T0)
    trial.state = state
    return trial


def snapshot(trial: Trial) -> dict:
    return {
        "state": trial.state, "updated_at": trial.updated_at, "started_at": trial.started_at,
        "history": [(h.from_state, h.to_state, h.trigger, h.actor, h.at, dict(h.detail)) for h in trial.history],
        "events": len(trial.events),
    }


def test_the_walk_covers_every_state_and_trigger_pair():
    assert len(EVERY_PAIR) == len(lc.STATES) * len(lc.TRIGGERS)
    assert len(ALLOWED_PAIRS) + len(REFUSED_PAIRS) == len(EVERY_PAIR)
    assert ALLOWED_PAIRS and REFUSED_PAIRS


@pytest.mark.parametrize("state,trigger", ALLOWED_PAIRS, ids=[f"{s}-{t}" for s, t in ALLOWED_PAIRS])
def test_an_allowed_step_moves_to_the_tables_destination_and_is_recorded(state, trigger):
    trial = trial_in(state)
    assert trial.can(trigger)
    expected = ALLOWED[(state, trigger)] or state  # None in the table: an internal step, the state stays

    event = trial.fire(trigger, actor="U0SDR0001", at=LATER, note="walked")

    assert trial.state == expected
    assert len(trial.history) == 1
    entry = trial.history[0]
    assert (entry.from_state, entry.to_state, entry.trigger, entry.actor, entry.at) == (state, expected, trigger, "U0SDR0001", LATER)
    assert entry.detail == {"note": "walked"}
    assert trial.events == [event]
    assert (event.from_state, event.to_state, event.trigger) == (state, expected, trigger)
    assert trial.updated_at == LATER


@pytest.mark.parametrize("state,trigger", REFUSED_PAIRS, ids=[f"{s}-{t}" for s, t in REFUSED_PAIRS])
def test_a_refused_step_raises_and_changes_nothing(state, trigger):
    trial = trial_in(state)
    before = snapshot(trial)

    assert not trial.can(trigger)
    with pytest.raises(TransitionRefused) as refused:
        trial.fire(trigger, actor="U0SDR0001", at=LATER, note="should not stick")

    assert refused.value.state == state and refused.value.trigger == trigger and refused.value.known
    assert snapshot(trial) == before


def test_a_refused_step_leaves_earlier_history_untouched():
    trial = trial_in(lc.NEW)
    trial.fire("send_to_triage", actor="system", at=T0)
    trial.fire("disqualify", actor="U0SDR0001", at=LATER, reason="student")
    before = snapshot(trial)

    with pytest.raises(TransitionRefused):
        trial.fire("qualify", actor="U0SDR0001", at=LATER + timedelta(minutes=1))

    assert snapshot(trial) == before
    assert [h.trigger for h in trial.history] == ["send_to_triage", "disqualify"]


def test_an_unknown_trigger_is_refused_as_not_a_step_of_the_lifecycle():
    trial = trial_in(lc.TRIAGE)
    with pytest.raises(TransitionRefused) as refused:
        trial.fire("to_active", actor="system", at=LATER)
    assert refused.value.known is False
    assert "not a step" in str(refused.value)
    assert trial.state == lc.TRIAGE and trial.history == []


def test_a_state_the_table_does_not_know_is_refused_rather_than_crashing():
    trial = trial_in("archived_by_a_future_version")
    with pytest.raises(TransitionRefused):
        trial.fire("terminate", actor="system", at=LATER)
    assert trial.state == "archived_by_a_future_version" and trial.history == []


def test_there_is_no_to_state_back_door():
    trial = trial_in(lc.TRIAGE)
    assert lc.MACHINE.auto_transitions is False
    assert [name for name in lc.MACHINE.events if name.startswith("to_")] == []
    for state in lc.STATES:
        assert not hasattr(trial, f"to_{state}")
        assert not hasattr(lc.MACHINE, f"to_{state}")


def test_the_machine_is_built_once_and_shared_not_per_trial():
    def machines() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if isinstance(obj, Machine))

    before = machines()
    trials = [trial_in(lc.NEW) for _ in range(50)]
    for i, trial in enumerate(trials):
        trial.fire("send_to_triage", actor="system", at=T0)
        trial.fire("qualify" if i % 2 else "disqualify", actor="U0SDR0001", at=LATER)

    assert machines() == before == 1
    # Trials are not registered with the shared machine either (that would keep every trial alive).
    assert lc.MACHINE.models == []
    assert not any(isinstance(value, Machine) for value in vars(trials[0]).values())


def test_every_state_is_reachable_from_new():
    reachable, frontier = {lc.NEW}, [lc.NEW]
    while frontier:
        state = frontier.pop()
        for trigger in lc.allowed_triggers(state):
            dest = ALLOWED[(state, trigger)]
            if dest and dest not in reachable:
                reachable.add(dest)
                frontier.append(dest)
    assert reachable == set(lc.STATES)


def test_nothing_leaves_a_final_state():
    for state in lc.FINAL_STATES:
        for trigger in lc.allowed_triggers(state):
            assert ALLOWED[(state, trigger)] is None, f"{trigger} takes a trial out of final state {state}"


def test_every_state_that_is_not_final_has_a_way_forward():
    for state in set(lc.STATES) - lc.FINAL_STATES:
        assert any(ALLOWED[(state, t)] not in (None, state) for t in lc.allowed_triggers(state)), state


def test_the_trial_starts_when_the_user_gets_an_instance_and_keeps_that_start():
    trial = trial_in(lc.NEW)
    trial.fire("claim_pool_instance", actor="system", at=T0, instance="pool-a.sourcegraph.com")
    assert trial.started_at == T0
    trial.fire("extend", actor="carol.ce@example.com", at=LATER, days=15)
    trial.fire("convert", actor="carol.ce@example.com", at=LATER + timedelta(days=1))
    assert trial.started_at == T0


def test_a_trial_that_never_got_an_instance_has_not_started():
    trial = trial_in(lc.NEW)
    trial.fire("send_to_triage", actor="system", at=T0)
    trial.fire("qualify", actor="U0SDR0001", at=LATER)
    trial.fire("mark_instance_ready", actor="cody-cloud", at=LATER)
    assert trial.started_at is None
    trial.fire("hand_off", actor="carol.ce@example.com", at=LATER + timedelta(hours=1))
    assert trial.started_at == LATER + timedelta(hours=1)


@pytest.mark.parametrize("state,trigger,dest", [
    # Spot checks read straight from cloud-trial-operations.txt, independent of the table above.
    (lc.NEW, "route_to_existing", lc.JOINING_EXISTING),
    (lc.NEW, "claim_pool_instance", lc.ACTIVE),
    (lc.NEW, "send_to_triage", lc.TRIAGE),
    (lc.TRIAGE, "qualify", lc.INSTANCE_REQUESTED),
    (lc.TRIAGE, "disqualify", lc.DISQUALIFIED),
    (lc.INSTANCE_REQUESTED, "mark_instance_ready", lc.INSTANCE_READY),
    (lc.INSTANCE_READY, "hand_off", lc.ACTIVE),
    (lc.ACTIVE, "extend", lc.EXTENDED),
    (lc.EXTENDED, "convert", lc.CONVERTED),
    (lc.EXTENDED, "terminate", lc.TERMINATED),
    (lc.WAITING_FOR_CAPACITY, "request_instance", lc.INSTANCE_REQUESTED),
    # Nothing holds capacity (or a place in the queue) forever.
    (lc.INSTANCE_REQUESTED, "terminate", lc.TERMINATED),
    (lc.WAITING_FOR_CAPACITY, "terminate", lc.TERMINATED),
])
def test_the_seeds_steps_are_in_the_table(state, trigger, dest):
    assert ALLOWED.get((state, trigger)) == dest


@pytest.mark.parametrize("state,trigger", [
    (lc.DISQUALIFIED, "qualify"),
    (lc.TERMINATED, "extend"),
    (lc.CONVERTED, "terminate"),
    (lc.TRIAGE, "hand_off"),
    (lc.JOINING_EXISTING, "claim_pool_instance"),
    (lc.INSTANCE_REQUESTED, "hand_off"),
])
def test_steps_the_seed_rules_out_are_not_in_the_table(state, trigger):
    assert (state, trigger) not in ALLOWED
