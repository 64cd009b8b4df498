from __future__ import annotations

from typing import Any

from trialflow.domain.trial import Trial
from trialflow.services import timers


def trial_summary(trial: Trial) -> dict[str, Any]:
    return {
        "trial_id": trial.id, "email": trial.email, "domain": trial.domain, "case": trial.case,
        "state": trial.state, "instance_url": trial.instance_url, "account_name": trial.account_name,
        "assignees": {"sdr": trial.sdr, "ae": trial.ae, "ce": trial.ce},
        "created_at": trial.created_at.isoformat(),
        "started_at": trial.started_at.isoformat() if trial.started_at else None,
    }


def trial_detail(session, trial: Trial) -> dict[str, Any]:
    return {
        **trial_summary(trial),
        "name": trial.name, "company": trial.company, "source": trial.source,
        "opportunity_id": trial.opportunity_id, "kept": trial.kept,
        "lead_score": {"mql_points": trial.mql_points or 0, "pql_grade": trial.pql_grade},
        "deadlines": timers.deadlines(session, trial.id),
        "history": [
            {"from_state": h.from_state, "to_state": h.to_state, "trigger": h.trigger, "actor": h.actor,
             "at": h.at.isoformat(), **({"detail": h.detail} if h.detail else {})}
            for h in trial.history
        ],
    }
