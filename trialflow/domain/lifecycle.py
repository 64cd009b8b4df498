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
from typing import Any, Protocol

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

# The steps (triggers), named once: every other module uses these names, never the strings.
ROUTE_TO_EXISTING = "route_to_existing"
CLAIM_POOL_INSTANCE = "claim_pool_instance"
WAIT_FOR_CAPACITY = "wait_for_capacity"
SEND_TO_TRIAGE = "send_to_triage"
CONFIRM_USER_ADDED = "confirm_user_added"
REMIND_USER_ADDED = "remind_user_added"
DISQUALIFY = "disqualify"
QUALIFY = "qualify"
REQUEST_INSTANCE = "request_instance"
MARK_INSTANCE_READY = "mark_instance_ready"
HAND_OFF = "hand_off"
CONVERT_TO_OPPORTUNITY = "convert_to_opportunity"
REASSIGN = "reassign"
REQUEST_DOMAIN_CHANGE = "request_domain_change"
WARN_TERMINATION = "warn_termination"
KEEP = "keep"
EXTEND = "extend"
REMIND_DECISION = "remind_decision"
ESCALATE_DECISION = "escalate_decision"
CONVERT = "convert"
TERMINATE = "terminate"
REQUEST_FEEDBACK = "request_feedback"
CHECK_USAGE = "check_usage"
ASK_DECISION = "ask_decision"
CONFIRM_ADMIN = "confirm_admin"
CONFIRM_REQUEST_DONE = "confirm_request_done"
REMIND_TRIAGE = "remind_triage"
ESCALATE_TRIAGE = "escalate_triage"
CHASE_INSTANCE_REQUEST = "chase_instance_request"
REMIND_HAND_OFF = "remind_hand_off"
ESCALATE_HAND_OFF = "escalate_hand_off"
# The prospect is told (emails to the person who signed up, decided by the clock)
TELL_DEADLINE = "tell_deadline"
SEND_ONBOARDING_TIP = "send_onboarding_tip"
CHECK_IN = "check_in"


@dataclass(frozen=True)
class Step:
    trigger: str
    source: tuple[str, ...]
    dest: str | None  # None: an internal step, recorded in history, state unchanged
    who: str          # who may take the step: system, sdr, owner (CE/AE/admin), cloud
    what: str         # the seed's words


TABLE: tuple[Step, ...] = (
    # First step: routing inside the signup request
    Step(ROUTE_TO_EXISTING, (NEW, WAITING_FOR_CAPACITY), JOINING_EXISTING, "system", "case 1: the domain already has a live instance"),
    Step(CLAIM_POOL_INSTANCE, (NEW, WAITING_FOR_CAPACITY), ACTIVE, "system", "case 2.1/2.2: pre-provisioned instance claimed, reset link sent"),
    Step(WAIT_FOR_CAPACITY, (NEW, TRIAGE), WAITING_FOR_CAPACITY, "system", "pool empty or instance cap reached: wait in the queue"),
    Step(SEND_TO_TRIAGE, (NEW,), TRIAGE, "system", "case 3: inbound SDR triages the lead"),
    # Case 1
    Step(REMIND_TRIAGE, (TRIAGE,), None, "system", "still in triage after 4 business hours: the inbound SDRs are reminded"),
    Step(ESCALATE_TRIAGE, (TRIAGE,), None, "system",
         "still in triage after 1 business day: #cloud-trial-alerts and the admins are told"),
    Step(CONFIRM_USER_ADDED, (JOINING_EXISTING,), JOINED, "owner", "AE made sure the user was added to the instance"),
    Step(REMIND_USER_ADDED, (JOINING_EXISTING,), None, "system", "reminder: the user is not added yet"),
    # Case 3
    Step(DISQUALIFY, (TRIAGE,), DISQUALIFIED, "sdr", "3.1: lead disqualified, self-hosting recommended"),
    Step(QUALIFY, (TRIAGE,), INSTANCE_REQUESTED, "sdr", "3.2: lead qualified, instance requested from the cloud team"),
    Step(REQUEST_INSTANCE, (WAITING_FOR_CAPACITY,), INSTANCE_REQUESTED, "system", "capacity freed: instance requested"),
    Step(MARK_INSTANCE_READY, (INSTANCE_REQUESTED,), INSTANCE_READY, "cloud", "the cloud team reports the instance ready"),
    Step(CHASE_INSTANCE_REQUEST, (INSTANCE_REQUESTED,), None, "system",
         "instance not ready 1 business day after the request: a comment on the issue and an alert"),
    Step(REMIND_HAND_OFF, (INSTANCE_READY,), None, "system", "instance ready but not handed off: the CE, every business day"),
    Step(ESCALATE_HAND_OFF, (INSTANCE_READY,), None, "system",
         "instance ready and still not handed off after 2 business days: the AE is told"),
    Step(HAND_OFF, (INSTANCE_READY,), ACTIVE, "owner", "CE handed off the password-reset link: trial start"),
    # People around an opportunity
    Step(CONVERT_TO_OPPORTUNITY, (TRIAGE, INSTANCE_REQUESTED, INSTANCE_READY, ACTIVE, EXTENDED, WAITING_FOR_CAPACITY), None, "sdr", "SDR converted the lead to an opportunity"),
    Step(REASSIGN, (JOINING_EXISTING, TRIAGE, WAITING_FOR_CAPACITY, INSTANCE_REQUESTED, INSTANCE_READY, ACTIVE, EXTENDED), None, "sdr", "AE/CE reassigned"),
    Step(REQUEST_DOMAIN_CHANGE, (ACTIVE, EXTENDED, CONVERTED), None, "owner", "vanity domain requested (a buying signal)"),
    # Second step: the 15/30-day clock
    Step(WARN_TERMINATION, (ACTIVE,), None, "system", "heads-up to the CE before the day-15 review"),
    Step(CHECK_USAGE, (ACTIVE,), None, "system",
         "day 15: the instance is asked for its last 7 days of usage before the review"),
    Step(ASK_DECISION, (ACTIVE,), None, "system",
         "day 15 with no usage data (the instance never answered nor reported): the CE decides, nothing is terminated"),
    Step(KEEP, (ACTIVE,), None, "owner", "CE keeps the trial: no termination at day 15"),
    Step(EXTEND, (ACTIVE, EXTENDED), EXTENDED, "owner", "trial extended (day 15 with activity, or the CE's decision)"),
    Step(REMIND_DECISION, (EXTENDED,), None, "system", "day 30: extend, convert or terminate"),
    Step(ESCALATE_DECISION, (EXTENDED,), None, "system", "day 30 passed with no decision: AE and #cloud-trial-alerts told, again every 2 days"),
    Step(CONVERT, (ACTIVE, EXTENDED), CONVERTED, "owner", "converted to paid"),
    Step(TERMINATE, (WAITING_FOR_CAPACITY, INSTANCE_REQUESTED, INSTANCE_READY, ACTIVE, EXTENDED), TERMINATED, "owner",
         "terminated: instance (or its request, or its place in the queue) freed"),
    Step(REQUEST_FEEDBACK, (TERMINATED,), None, "owner", "feedback-request email to the user"),
    # What the instance and the cloud team report back
    Step(CONFIRM_ADMIN, (ACTIVE, EXTENDED, CONVERTED), None, "system",
         "someone at the domain signed in to the instance: the first one is its admin of record (the claim is real)"),
    Step(CONFIRM_REQUEST_DONE, (ACTIVE, EXTENDED, CONVERTED, TERMINATED), None, "cloud",
         "the cloud team completed a request (closed its issue or commented /done): termination, extension, "
         "license or domain change"),
    # The prospect is told: emails to the person who signed up
    Step(TELL_DEADLINE, (ACTIVE, EXTENDED), None, "system",
         "3 days before the day-15 review or the day-30 decision: the prospect is told the date and how to ask for more time"),
    Step(SEND_ONBOARDING_TIP, (ACTIVE, EXTENDED), None, "system",
         "onboarding tip from the CE (AE in cc) on days 1, 3 and 7, while the instance is not in use yet"),
    Step(CHECK_IN, (ACTIVE, EXTENDED), None, "system",
         "after there is usage on the instance: the CE checks in with the prospect (AE in cc)"),
)

# Steps that leave the state as it is but make sense only once: a second press is "already done".
ONCE_ONLY = frozenset({KEEP, REQUEST_FEEDBACK, CONVERT_TO_OPPORTUNITY})


@dataclass(frozen=True)
class Timer:
    """A wait with a deadline: a row in ``timers`` that the sweep turns into one of ``steps``."""
    kind: str
    steps: tuple[str, ...]
    what: str


USER_ADDED_REMINDER = "user_added_reminder"
TERMINATION_HEADS_UP = "termination_heads_up"
DAY15_REVIEW = "day15_review"
DAY30_DECISION = "day30_decision"
DAY30_ESCALATION = "day30_escalation"
TRIAGE_REMINDER = "triage_reminder"
TRIAGE_ESCALATION = "triage_escalation"
INSTANCE_REQUEST_SLA = "instance_request_sla"
HAND_OFF_REMINDER = "hand_off_reminder"
HAND_OFF_ESCALATION = "hand_off_escalation"
PROSPECT_DEADLINE_NOTICE = "prospect_deadline_notice"
ONBOARDING_TIP = "onboarding_tip"
PROSPECT_CHECK_IN = "prospect_check_in"

TIMERS: tuple[Timer, ...] = (
    Timer(USER_ADDED_REMINDER, (REMIND_USER_ADDED,), "case 1: every 2 days until the AE confirms the user was added"),
    Timer(TERMINATION_HEADS_UP, (WARN_TERMINATION,), "day 12: the CE's heads-up before the day-15 review"),
    Timer(DAY15_REVIEW, (EXTEND, TERMINATE, CHECK_USAGE, ASK_DECISION),
          "day 15: usage asked first; used extends to day 30, answered and unused terminates, no data asks the CE"),
    Timer(DAY30_DECISION, (REMIND_DECISION,), "day 30 (or the extension's end): extend, convert or terminate"),
    Timer(DAY30_ESCALATION, (ESCALATE_DECISION,), "2 days after the decision was due, and every 2 days after"),
    # The waits on people, in business hours (services.calendar); each fires once, and not at all
    # for a trial that has moved on.
    Timer(TRIAGE_REMINDER, (REMIND_TRIAGE,), "triage: 4 business hours after the alert"),
    Timer(TRIAGE_ESCALATION, (ESCALATE_TRIAGE,), "triage: 1 business day after the alert"),
    Timer(INSTANCE_REQUEST_SLA, (CHASE_INSTANCE_REQUEST,), "instance requested: 1 business day"),
    Timer(HAND_OFF_REMINDER, (REMIND_HAND_OFF,), "instance ready: each business day until it is handed off"),
    Timer(HAND_OFF_ESCALATION, (ESCALATE_HAND_OFF,), "instance ready: 2 business days"),
    Timer(PROSPECT_DEADLINE_NOTICE, (TELL_DEADLINE,), "3 days before the day-15 review and the day-30 decision"),
    Timer(ONBOARDING_TIP, (SEND_ONBOARDING_TIP,), "days 1, 3 and 7 after the start, until the instance is in use"),
    Timer(PROSPECT_CHECK_IN, (CHECK_IN,), "the instance's first use, then every 7 days while the trial runs"),
)
# Timers that only ever email the prospect: not a deadline of anyone on the trials team.
PROSPECT_TIMERS = frozenset({PROSPECT_DEADLINE_NOTICE, ONBOARDING_TIP, PROSPECT_CHECK_IN})

TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(step.trigger for step in TABLE))
STEPS = {step.trigger: step for step in TABLE}


def _machine_transitions() -> list[dict[str, Any]]:
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


class Stateful(Protocol):
    """What the shared machine steps: anything with a ``state``."""
    state: str


def fire(model: Stateful, trigger: str) -> tuple[str, str]:
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
