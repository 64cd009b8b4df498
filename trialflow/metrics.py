"""Prometheus metrics, computed from the database at scrape time (the truth lives there)."""
from __future__ import annotations

from sqlalchemy import func, select

from trialflow.db import tables
from trialflow.domain import lifecycle as lc


def render(rt) -> str:
    lines: list[str] = []
    with rt.session_factory() as session:
        by_state = dict(session.execute(select(tables.trials.c.state, func.count()).group_by(tables.trials.c.state)).all())
        lines += ["# HELP trialflow_trials Trials by lifecycle state.", "# TYPE trialflow_trials gauge"]
        lines += [f'trialflow_trials{{state="{s}"}} {by_state.get(s, 0)}' for s in lc.STATES]
        by_status = dict(session.execute(select(tables.outbox.c.status, func.count()).group_by(tables.outbox.c.status)).all())
        lines += ["# HELP trialflow_effects Outbox effects by status.", "# TYPE trialflow_effects gauge"]
        lines += [f'trialflow_effects{{status="{s}"}} {by_status.get(s, 0)}' for s in ("pending", "delivered", "failed")]
        pool = session.scalar(select(func.count()).select_from(tables.instances).where(tables.instances.c.status == "pool"))
        lines += ["# HELP trialflow_pool_instances Free pre-provisioned instances.", "# TYPE trialflow_pool_instances gauge",
                  f"trialflow_pool_instances {pool}"]
    return "\n".join(lines) + "\n"
