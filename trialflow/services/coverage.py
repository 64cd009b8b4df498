"""Nobody's trials are left with someone who is gone: an open trial whose AE or CE is marked
inactive in staff.csv is reassigned by the rotation, and its new owner is told in Slack (the
``reassign`` step's message, with the reason and the rotation's explanation).

It reads the state, not the change: run after every ``config load`` (and at start), it also
finishes a reassignment a crash interrupted, and a second run finds nothing left to do.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import SYSTEM
from trialflow.errors import TrialflowError
from trialflow.services.rotation import OPEN_STATES, ROTATING_ROLES
from trialflow.services.trials import Command, get_trial, handle
from trialflow.services.uow import App

log = logging.getLogger("trialflow.coverage")


@dataclass(frozen=True)
class Reassigned:
    trial_id: str
    email: str
    role: str
    before: str
    after: str | None

    def line(self) -> str:
        return (f"{self.trial_id} {self.email}: {self.role.upper()} {self.before} (inactive) → "
                f"{self.after or 'nobody (no one in the rotation can take it)'}")


def reassign_from_inactive(rt: App, now: datetime | None = None) -> list[Reassigned]:
    now = now or rt.clock.now()
    t, s = tables.trials.c, tables.staff.c
    gone = select(s.email).where(s.active.is_(False), s.role.in_(ROTATING_ROLES)).scalar_subquery()
    with rt.session_factory() as session:
        ids = list(session.scalars(select(t.id).where(t.state.in_(OPEN_STATES), t.state != lc.NEW,
                                                     or_(t.ae.in_(gone), t.ce.in_(gone))).order_by(t.id)))
        inactive = set(session.scalars(select(s.email).where(s.active.is_(False))))
    done: list[Reassigned] = []
    for trial_id in ids:
        # One transaction per trial: a rotation turn locks its role until commit.
        with rt.uow() as uow:
            trial = get_trial(uow, trial_id, lock=True)
            roles = {role: getattr(trial, role) for role in ROTATING_ROLES if getattr(trial, role) in inactive}
            if not roles:
                continue
            names = ", ".join(f"{role.upper()} {email}" for role, email in roles.items())
            cmd = Command(trial.id, lc.REASSIGN, SYSTEM, None, {**{r: "next" for r in roles},
                                                                "reason": f"{names} no longer active"}, internal=True)
            try:
                handle(uow, rt.settings, now, cmd, trial)
            except TrialflowError as exc:
                log.warning("could not reassign %s: %s", trial_id, exc, extra={"trial_id": trial_id})
                continue
            uow.commit()
            done.extend(Reassigned(trial.id, trial.email, role, before, getattr(trial, role))
                        for role, before in roles.items())
    return done
