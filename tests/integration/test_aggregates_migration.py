"""The migration that adds the aggregates fills them from the rows already stored."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from trialflow.db import tables
from trialflow.db.engine import make_engine
from trialflow.db.migrate import upgrade

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)   # a Monday: 2026-W10
H = timedelta(hours=1)


def trial(trial_id: str, state: str, started: datetime | None, **extra) -> dict:
    return {"id": trial_id, "email": f"{trial_id}@example.com", "domain": "example.com", "case": "manual_qualification",
            "state": state, "created_at": T0, "updated_at": T0, "started_at": started, "kept": False, "mql_points": 0,
            "source": None, "ae": None, "pql_grade": None,
            **extra}


def move(trial_id: str, from_state: str, to_state: str, trigger: str, at: datetime, detail: dict | None = None) -> dict:
    return {"trial_id": trial_id, "from_state": from_state, "to_state": to_state, "trigger": trigger, "actor": "x",
            "at": at, "detail": detail or {}}


def test_upgrading_a_database_with_trials_backfills_the_aggregates(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0007")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(tables.trials.insert(), [
            trial("lee", "active", T0 + 32 * H, source="website", ae="alice.ae@example.com", pql_grade="B"),
            trial("ann", "disqualified", None, source="webinar")])
        conn.execute(tables.trial_history.insert(), [
            move("lee", "new", "triage", "send_to_triage", T0),
            move("lee", "triage", "instance_requested", "qualify", T0 + 2 * H),
            move("lee", "instance_requested", "instance_ready", "mark_instance_ready", T0 + 26 * H),
            move("lee", "instance_ready", "active", "hand_off", T0 + 32 * H),
            move("ann", "new", "triage", "send_to_triage", T0),
            move("ann", "triage", "disqualified", "disqualify", T0 + H, {"reason": "student project"})])
        conn.execute(tables.outbox.insert(), [
            {"key": "k1", "kind": "slack.message", "payload": {}, "status": "delivered", "attempts": 1,
             "next_attempt_at": T0, "created_at": T0, "delivered_at": T0 + timedelta(seconds=2)},
            {"key": "k2", "kind": "slack.message", "payload": {}, "status": "pending", "attempts": 0,
             "next_attempt_at": T0, "created_at": T0, "delivered_at": None}])
    engine.dispose()

    upgrade(url)
    engine = make_engine(url)
    f = tables.trial_facts
    with engine.connect() as conn:
        facts = {r.trial_id: r for r in conn.execute(select(f))}
        counts = sorted(tuple(r) for r in conn.execute(select(tables.trial_counts.c.state,
                                                              tables.trial_counts.c.pql_grade, tables.trial_counts.c.n)))
        stats = [tuple(r) for r in conn.execute(select(tables.delivery_stats.c.kind, tables.delivery_stats.c.bucket,
                                                       tables.delivery_stats.c.n, tables.delivery_stats.c.seconds))]
    engine.dispose()
    lee, ann = facts["lee"], facts["ann"]
    assert (lee.week, lee.source, lee.ae, lee.started, lee.state, lee.pql_grade) == \
        ("2026-W10", "website", "alice.ae@example.com", True, "active", "B")
    # started 32 h after signup; 2 h in triage; 24 h from request to ready; 6 h from ready to hand-off
    assert (lee.signup_to_start, lee.triage_to_qualified, lee.requested_to_ready, lee.ready_to_handed_off) == \
        (32 * 3600.0, 2 * 3600.0, 24 * 3600.0, 6 * 3600.0)
    assert (ann.reason, ann.started, ann.signup_to_start) == ("student project", False, None)
    assert counts == [("active", "B", 1), ("disqualified", None, 1)]
    # one delivered effect, 2 s after its commit: the 2.5 s bucket (the sixth); the pending one is not counted
    assert stats == [("slack.message", 5, 1, 2.0)]
