"""Pure rules around trial instances: the usernames tried for an email, and what day 15 decides
from what is known of the instance's usage (used, answered and unused, no data)."""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from itertools import islice

import pytest

from trialflow.domain import lifecycle as lc
from trialflow.domain.instance_admin import USERNAME_MAX, usernames_for
from trialflow.domain.trial import PlainTrial
from trialflow.services.timers import Usage, step_for

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SOURCEGRAPH_USERNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|[-.](?=[A-Za-z0-9]))*-?$")


@pytest.mark.parametrize("email, first", [
    ("bob@acme-corp.com", ["bob", "bob-acme-corp", "bob-2"]),
    ("Bob.Smith+trial@acme-corp.com", ["bob.smith", "bob.smith-acme-corp", "bob.smith-2"]),
    ("__weird..name__@xn--bcher-kva.example", ["weird-name", "weird-name-xn-bcher-kva", "weird-name-2"]),
    ("+@acme-corp.com", ["user", "user-acme-corp", "user-2"]),
])
def test_usernames_follow_the_email_and_are_valid_sourcegraph_usernames(email, first):
    tried = list(usernames_for(email))
    assert tried[:3] == first
    assert len(set(tried)) == len(tried)
    assert all(SOURCEGRAPH_USERNAME.match(name) and len(name) <= USERNAME_MAX for name in tried), tried


def test_a_very_long_local_part_is_cut_to_a_valid_length():
    assert all(len(n) <= USERNAME_MAX for n in islice(usernames_for("a" * 80 + "@acme-corp.com"), 10))


def active_trial(**history) -> PlainTrial:
    trial = PlainTrial("tr_0123456789abcdef", "bob@acme-corp.com", "acme-corp.com", T0)
    trial.state = lc.ACTIVE
    trial.started_at = T0
    for trigger in history.get("steps", []):
        trial.fire(trigger, actor="system", at=T0 + timedelta(days=15))
    return trial


def test_day_15_used_extends_whatever_else_is_known():
    trial = active_trial()
    trial.last_activity_at = T0 + timedelta(days=3)
    for usage in (Usage(), Usage(pollable=True), Usage(answered=True)):
        assert step_for(trial, lc.DAY15_REVIEW, usage)[0] == lc.EXTEND


def test_day_15_asks_an_instance_it_can_ask_first_then_decides_on_the_answer():
    trial = active_trial()
    assert step_for(trial, lc.DAY15_REVIEW, Usage(pollable=True)) == (lc.CHECK_USAGE, {})
    checked = active_trial(steps=[lc.CHECK_USAGE])
    assert step_for(checked, lc.DAY15_REVIEW, Usage(pollable=True, answered=True))[0] == lc.TERMINATE
    assert step_for(checked, lc.DAY15_REVIEW, Usage(pollable=True))[0] == lc.ASK_DECISION


def test_day_15_without_data_never_terminates_and_asks_again_after_asking():
    trial = active_trial()
    assert step_for(trial, lc.DAY15_REVIEW, Usage())[0] == lc.ASK_DECISION
    assert step_for(trial, lc.DAY15_REVIEW)[0] == lc.ASK_DECISION, "nothing known is no data"
    asked = active_trial(steps=[lc.CHECK_USAGE, lc.ASK_DECISION])
    assert step_for(asked, lc.DAY15_REVIEW, Usage(pollable=True)) == (lc.CHECK_USAGE, {}), "asked again next time"


def test_day_15_answered_and_unused_terminates():
    assert step_for(active_trial(), lc.DAY15_REVIEW, Usage(answered=True))[0] == lc.TERMINATE


def test_the_heads_up_says_when_there_is_no_data():
    assert step_for(active_trial(), lc.TERMINATION_HEADS_UP, Usage()) == (lc.WARN_TERMINATION, {"usage": "none"})
    assert step_for(active_trial(), lc.TERMINATION_HEADS_UP, Usage(answered=True)) == (lc.WARN_TERMINATION, {})
