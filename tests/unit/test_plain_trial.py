"""The signup's fast path builds a ``PlainTrial``: the aggregate without the ORM's instrumentation.
It must behave as a mapped ``Trial`` does and carry every column the signup's INSERT writes."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import NoInspectionAvailable

from trialflow.db import tables
from trialflow.db.mapping import start_mappers
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import PlainTrial, Trial
from trialflow.errors import TransitionRefused

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def steps(trial):
    trial.fire("route_to_existing", actor="system", at=T0, instance="initech.sourcegraph.com")
    return trial


def test_a_plain_trial_steps_and_records_as_a_mapped_trial_does():
    start_mappers()
    plain = steps(PlainTrial("tr_0123456789abcdef", "bob@acme-corp.com", "acme-corp.com", T0, name="Bob"))
    mapped = steps(Trial("tr_0123456789abcdef", "bob@acme-corp.com", "acme-corp.com", T0, name="Bob"))
    for name in (c.name for c in tables.trials.columns):
        assert getattr(plain, name) == getattr(mapped, name), name
    assert plain.state == lc.JOINING_EXISTING
    assert [vars(h) for h in plain.history] == [
        {k: v for k, v in vars(h).items() if not k.startswith("_sa_")} for h in mapped.history]
    assert [(e.trigger, e.from_state, e.to_state) for e in plain.events] == \
        [(e.trigger, e.from_state, e.to_state) for e in mapped.events]
    with pytest.raises(TransitionRefused):
        plain.fire("route_to_existing", actor="system", at=T0)


def test_a_plain_trial_is_not_instrumented_by_the_orm():
    start_mappers()
    with pytest.raises(NoInspectionAvailable):
        inspect(PlainTrial("tr_0123456789abcdef", "bob@acme-corp.com", "acme-corp.com", T0))
    assert inspect(Trial("tr_0123456789abcdef", "bob@acme-corp.com", "acme-corp.com", T0)) is not None
