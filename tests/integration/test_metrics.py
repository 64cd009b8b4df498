"""GET /metrics: valid Prometheus text with trials, effects, delivery latency and the last sweep."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from trialflow import scoring
from trialflow.db import tables
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.wiring import build_deliverer
from trialflow.services.sweep import sweep


def scrape(client) -> dict[str, dict[tuple, float]]:
    """{metric sample name: {sorted labels: value}}, parsed by Prometheus' own client library."""
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def deliver_all(runtime) -> None:
    transports = {name: DryRunTransport(name) for name in ("slack", "github", "email")}
    build_deliverer(runtime, transports=transports).drain_all()


def effects_by_kind(runtime) -> dict[str, int]:
    with runtime.session_factory() as s:
        return dict(s.execute(select(tables.outbox.c.kind, func.count()).group_by(tables.outbox.c.kind)).all())


def test_trials_are_counted_by_state(client):
    client.post("/api/signups", json={"email": "bob@acme-corp.com"})      # pool instance: active
    client.post("/api/signups", json={"email": "lee@randomcorp.dev"})     # triage
    client.post("/api/signups", json={"email": "pam@initech.com"})        # initech's live instance
    trials = scrape(client)["trialflow_trials"]
    assert trials[(("state", "active"),)] == 1
    assert trials[(("state", "triage"),)] == 1
    assert trials[(("state", "joining_existing"),)] == 1
    assert sum(trials.values()) == 3
    assert scrape(client)["trialflow_pool_instances"][()] == 4  # 5 in the test pool, 1 claimed


def test_delivery_latency_is_a_histogram_from_commit_to_delivery_per_kind(client, runtime):
    client.post("/api/signups", json={"email": "bob@acme-corp.com"})
    first = effects_by_kind(runtime)
    runtime.clock.advance(seconds=2)
    deliver_all(runtime)                       # every effect so far: 2 s after its commit
    client.post("/api/signups", json={"email": "lee@randomcorp.dev"})
    second = {k: n - first.get(k, 0) for k, n in effects_by_kind(runtime).items() if n != first.get(k, 0)}
    runtime.clock.advance(seconds=45)
    deliver_all(runtime)                       # the triage alert and the SDRs' Home tabs: 45 s
    assert second == {"slack.message": 1, "slack.home": 1}
    m = scrape(client)
    bucket = m["trialflow_delivery_latency_seconds_bucket"]
    for kind, n in first.items():
        later = second.get(kind, 0)
        assert bucket[(("kind", kind), ("le", "1"))] == 0
        assert bucket[(("kind", kind), ("le", "2.5"))] == n
        assert bucket[(("kind", kind), ("le", "30"))] == n
        assert bucket[(("kind", kind), ("le", "60"))] == n + later
        assert bucket[(("kind", kind), ("le", "+Inf"))] == n + later
        assert m["trialflow_delivery_latency_seconds_count"][(("kind", kind),)] == n + later
        # n effects after 2 s each, plus the later ones after 45 s
        assert abs(m["trialflow_delivery_latency_seconds_sum"][(("kind", kind),)] - (2 * n + 45 * later)) < 0.01
    assert m["trialflow_effects"][(("status", "delivered"),)] == sum(first.values()) + 2
    assert m["trialflow_effects"][(("status", "pending"),)] == 0


def test_the_age_of_the_oldest_undelivered_effect_is_exposed(client, runtime):
    assert scrape(client)["trialflow_effects_oldest_pending_age_seconds"][()] == 0
    client.post("/api/signups", json={"email": "lee@randomcorp.dev"})
    runtime.clock.advance(seconds=30)
    m = scrape(client)
    assert m["trialflow_effects"][(("status", "pending"),)] == 2    # the triage alert and the SDRs' Home tabs
    assert m["trialflow_effects_oldest_pending_age_seconds"][()] == 30


def test_the_last_sweeps_duration_and_trials_touched_are_exposed(client, runtime):
    assert "trialflow_sweep_last_trials_touched" not in scrape(client)  # no sweep yet: absent, not 0
    client.post("/api/signups", json={"email": "bob@acme-corp.com"})
    runtime.clock.advance(days=12)             # the day-12 heads-up before the day-15 review is due
    report = sweep(runtime)                    # the sweep records its own numbers
    m = scrape(client)
    # the heads-up, and the prospect's day-15 notice and first onboarding tip
    assert report.timers_fired == 3 and report.trials_touched == 3
    assert m["trialflow_sweep_last_trials_touched"][()] == 3
    assert m["trialflow_sweep_last_timers_fired"][()] == 3
    assert m["trialflow_sweep_last_promoted"][()] == 0
    assert m["trialflow_sweep_last_duration_seconds"][()] == report.seconds > 0
    assert m["trialflow_sweep_last_run_timestamp_seconds"][()] == runtime.clock.now().timestamp()
    sweep(runtime, dry_run=True)               # a dry run is not the last sweep
    assert scrape(client)["trialflow_sweep_last_timers_fired"][()] == 3
    runtime.clock.advance(minutes=1)
    sweep(runtime)                             # nothing due now
    m = scrape(client)
    assert m["trialflow_sweep_last_timers_fired"][()] == 0
    assert m["trialflow_sweep_last_run_timestamp_seconds"][()] == runtime.clock.now().timestamp()


def test_live_trials_are_counted_by_pql_grade(client, runtime):
    signup = client.post("/api/signups", json={"email": "bob@acme-corp.com"}).json()
    client.post("/api/signups", json={"email": "carl@globex.com"})
    assert scrape(client)["trialflow_live_trials_by_pql_grade"][(("grade", "none"),)] == 2
    with runtime.uow() as uow:
        uow.session.execute(tables.instance_activity.insert().values(
            host=signup["redirect_url"].split("/")[2], at=runtime.clock.now(), active_users=2, searches=25,
            code_intel_actions=3, repositories=2))
        scoring.grade_trials(uow.session, runtime.clock.now())
        uow.commit()
    grades = scrape(client)["trialflow_live_trials_by_pql_grade"]
    assert {g[0][1]: v for g, v in grades.items()} == {"A": 0, "B": 1, "C": 0, "D": 1, "none": 0}
