"""The trial lifecycle, declared once as data.

Read this table against ``shared/seeds/cloud-trial-operations.txt``: every row is one step a
person or the clock takes. One ``transitions.Machine`` is built from it at import time and shared
by every trial (building a machine per trial costs ~0.3 ms; firing an event on the shared one costs
~11 µs: ``bench/bench_transition.py``). The machine has no callbacks: a transition changes ``state`` and nothing else, so a
refused trigger leaves the trial untouched and nothing can half-happen. Effects are decided by
``trialflow.services.policies`` from the recorded events, and committed with the state change.
"""
from __future__ import annotations

from dataclasses import dataclass

from transitions import Machine, MachineError

from trialflow.errors import TransitionRefused

NEW = "new"
JOINING_EXISTING = "joining_existing"
JOINED = "joined"
WAITING_FOR_CAPACITY = "waiting_for_capacity"
TRIAGE = "triage"
DISQUALIFIED = "disqualified"
INSTANCE_REQUESTED = "instance_requested"
INSTANCE_READY = "instance_ready"
ACTIVE = "active"
EXTENDED = "extended"
CONVERTED = "converted"
TERMINATED = "terminated"

STATES: tuple[str, ...] = (
    NEW, JOINING_EXISTING, JOINED, WAITING_FOR_CAPACITY, TRIAGE, DISQUALIFIED,
    INSTANCE_REQUESTED, INSTANCE_READY, ACTIVE, EXTENDED, CONVERTED, TERMINATED,
)
FINAL_STATES = frozenset({JOINED, DISQUALIFIED, CONVERTED, TERMINATED})
# Trials that hold, or wait for the cloud team to provision, an instance: the instance cap counts these.
HOLDING_INSTANCE = frozenset({INSTANCE_REQUESTED, INSTANCE_READY, ACTIVE, EXTENDED})
# The trial has started: the user has an instance (the seed's "trial start").
STARTED = frozenset({ACTIVE, EXTENDED, CONVERTED, TERMINATED})

LIVE_TRIAL = (ACTIVE, EXTENDED)


@dataclass(frozen=True)
class Step:
    trigger: str
    source: tuple[str, ...]
    dest: str | None  # None: an internal step, recorded in history, state unchanged
    who: str          # who may take the step: system, sdr, owner (CE/AE/admin), cloud
    what: str         # the seed's words


TABLE: tuple[Step, ...] = (
    # First step: routing inside the signup request
    Step("route_to_existing", (NEW, WAITING_FOR_CAPACITY), JOINING_EXISTING, "system", "case 1: the domain already has a live instance"),
    Step("claim_pool_instance", (NEW, WAITING_FOR_CAPACITY), ACTIVE, "system", "case 2.1/2.2: pre-provisioned instance claimed, reset link sent"),
    Step("wait_for_capacity", (NEW, TRIAGE), WAITING_FOR_CAPACITY, "system", "pool empty or instance cap reached: wait in the queue"),
    Step("send_to_triage", (NEW,), TRIAGE, "system", "case 3: inbound SDR triages the lead"),
    # Case 1
    Step("confirm_user_added", (JOINING_EXISTING,), JOINED, "owner", "AE made sure the user was added to the instance"),
    Step("remind_user_added", (JOINING_EXISTING,), None, "system", "reminder: the user is not added yet"),
    # Case 3
    Step("disqualify", (TRIAGE,), DISQUALIFIED, "sdr", "3.1: lead disqualified, self-hosting recommended"),
    Step("qualify", (TRIAGE,), INSTANCE_REQUESTED, "sdr", "3.2: lead qualified, instance requested from the cloud team"),
    Step("request_instance", (WAITING_FOR_CAPACITY,), INSTANCE_REQUESTED, "system", "capacity freed: instance requested"),
    Step("mark_instance_ready", (INSTANCE_REQUESTED,), INSTANCE_READY, "cloud", "the cloud team reports the instance ready"),
    Step("hand_off", (INSTANCE_READY,), ACTIVE, "owner", "CE handed off the password-reset link: trial start"),
    # People around an opportunity
    Step("convert_to_opportunity", (TRIAGE, INSTANCE_REQUESTED, INSTANCE_READY, ACTIVE, EXTENDED, WAITING_FOR_CAPACITY), None, "sdr", "SDR converted the lead to an opportunity"),
    Step("reassign", (JOINING_EXISTING, TRIAGE, WAITING_FOR_CAPACITY, INSTANCE_REQUESTED, INSTANCE_READY, ACTIVE, EXTENDED), None, "sdr", "AE/CE reassigned"),
    Step("request_domain_change", (ACTIVE, EXTENDED, CONVERTED), None, "owner", "vanity domain requested (a buying signal)"),
    # Second step: the 15/30-day clock
    Step("warn_termination", (ACTIVE,), None, "system", "heads-up to the CE before the day-15 review"),
    Step("keep", (ACTIVE,), None, "owner", "CE keeps the trial: no termination at day 15"),
    Step("extend", (ACTIVE, EXTENDED), EXTENDED, "owner", "trial extended (day 15 with activity, or the CE's decision)"),
    Step("remind_decision", (EXTENDED,), None, "system", "day 30: extend, convert or terminate"),
    Step("escalate_decision", (EXTENDED,), None, "system", "day 30 passed with no decision: AE and #cloud-trial-alerts told, again every 2 days"),
    Step("convert", (ACTIVE, EXTENDED), CONVERTED, "owner", "converted to paid"),
    Step("terminate", (WAITING_FOR_CAPACITY, INSTANCE_REQUESTED, INSTANCE_READY, ACTIVE, EXTENDED), TERMINATED, "owner",
         "terminated: instance (or its request, or its place in the queue) freed"),
    Step("request_feedback", (TERMINATED,), None, "owner", "feedback-request email to the user"),
)

TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(step.trigger for step in TABLE))
STEPS = {step.trigger: step for step in TABLE}


def _machine_transitions() -> list[dict]:
    return [
        {"trigger": s.trigger, "source": list(s.source), "dest": s.dest}
        for s in TABLE
    ]


MACHINE = Machine(
    model=None,
    states=list(STATES),
    transitions=_machine_transitions(),
    initial=None,
    auto_transitions=False,   # no to_<state>() back door
    ignore_invalid_triggers=False,
)


def allowed(state: str, trigger: str) -> bool:
    event = MACHINE.events.get(trigger)
    return event is not None and state in event.transitions


def allowed_triggers(state: str) -> list[str]:
    return [t for t in TRIGGERS if allowed(state, t)]


def fire(model, trigger: str) -> tuple[str, str]:
    """Move ``model.state`` along ``trigger``; returns (from, to). Refusal changes nothing."""
    before = model.state
    event = MACHINE.events.get(trigger)
    if event is None:
        raise TransitionRefused(trigger, before, known=False)
    if before not in event.transitions:
        # Also covers a state the table does not know (a row written by another version):
        # transitions would raise a bare ValueError there, which the API would turn into a 500.
        raise TransitionRefused(trigger, before)
    try:
        event.trigger(model)
    except MachineError:
        raise TransitionRefused(trigger, before) from None
    return before, model.state
