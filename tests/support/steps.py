"""A trial's steps as the integration tests take them: a signup through the signup service, and a
person's command through the one write path (as their Slack button would)."""
from __future__ import annotations

from trialflow.services.directory import Directory
from trialflow.services.signups import SignupInput, submit_signup
from trialflow.services.trials import Command, run


def signup(rt, email: str, **extra) -> str:
    return submit_signup(rt.uow, rt.settings, rt.clock, SignupInput(email=email, **extra)).trial_id


def act(rt, trial_id: str, trigger: str, slack_id: str, **detail) -> None:
    """``trigger`` taken by the staff member whose Slack id is ``slack_id``."""
    with rt.session_factory() as s:
        person = Directory(s).by_slack_id(slack_id)
    run(rt, Command(trial_id, trigger, slack_id, person, detail))
