"""Real Celery workers on Redis deliver the outbox exactly once, even when a worker is killed
with SIGKILL mid-run or Redis restarts mid-run (it keeps nothing on disk: queued tasks are lost).

The database is the truth: the beat relay re-sends due effects whose task was lost, the lease
keeps two workers off one effect, and a retried effect asks Slack/GitHub whether its first
attempt landed before sending again.
"""
from __future__ import annotations

import signal
from collections import Counter

import pytest
from sqlalchemy import func, select

from tests.conftest import make_settings
from tests.support.processes import RedisServer, TrialflowProcess, trialflow_env, wait_for
from trialflow.db import tables
from trialflow.runtime import Runtime
from trialflow.services import outbox

pytestmark = [pytest.mark.celery, pytest.mark.postgres, pytest.mark.redis]

EFFECTS = 200
ISSUES = 40  # of the 200, the rest are Slack messages


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stack(pg_url, config_dir, tmp_path, redis_server, fake_slack, fake_github):
    fake_slack.add_channel("cloud-trial-alerts")
    # Short lease and relay so recovery happens within the test; no pause between GitHub writes
    # (the local GitHub has no secondary limits to respect).
    timing = dict(delivery_lease_seconds=2, beat_relay_seconds=0.5, relay_grace_seconds=1.5, beat_sweep_seconds=3600,
                  github_seconds_between_writes=0)
    overrides = dict(broker_url=redis_server.url, **fake_slack.settings(), **fake_github.settings(), **timing)
    settings = make_settings(pg_url, config_dir, **overrides)
    env = trialflow_env(database_url=pg_url, config_dir=config_dir, **overrides)
    rt = Runtime(settings)
    processes: list[TrialflowProcess] = []

    def start(kind: str, name: str, *args: str) -> TrialflowProcess:
        proc = TrialflowProcess([kind, *args], env, tmp_path / f"{name}.log").start()
        processes.append(proc)
        proc.wait_ready("ready" if kind == "worker" else "beat: Starting", timeout=60)
        return proc

    yield rt, start
    for proc in processes:
        proc.stop()
    rt.close()


def enqueue_effects(rt: Runtime) -> list[str]:
    keys = []
    with rt.uow() as uow:
        for i in range(EFFECTS):
            key = f"celery-test:{i}"
            if i < ISSUES:
                kind, payload = "github.issue", {"issue_kind": "instance-request", "title": f"Instance request {i}",
                                                 "body": f"request {i}", "labels": ["cloud-trial"], "ref": f"req:{i}"}
            else:
                kind, payload = "slack.message", {"channel": "cloud-trial-alerts", "text": f"alert {i}",
                                                  "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"alert {i}"}}]}
            outbox.enqueue(uow, key=key, kind=kind, payload=payload, now=rt.clock.now())
            keys.append(key)
        uow.commit()
    return keys


def arrived(fake_slack, fake_github) -> Counter:
    counts = Counter(fake_slack.deliveries())
    counts.update(fake_github.deliveries())
    counts.pop(None, None)
    return counts


def delivered_rows(rt: Runtime) -> int:
    with rt.session_factory() as s:
        return s.scalar(select(func.count()).select_from(tables.outbox).where(tables.outbox.c.status == "delivered"))


def assert_each_arrived_exactly_once(keys, fake_slack, fake_github, rt) -> None:
    counts = arrived(fake_slack, fake_github)
    doubled = {k: n for k, n in counts.items() if n > 1}
    missing = [k for k in keys if counts[k] == 0]
    assert not doubled, f"delivered more than once: {doubled}"
    assert not missing, f"never delivered: {missing[:10]} (+{max(len(missing) - 10, 0)})"
    assert set(counts) == set(keys)
    assert delivered_rows(rt) == EFFECTS


def start_delivering(rt: Runtime, start, fake_slack, fake_github, worker_name: str):
    """The 200 effects committed, beat and a worker running, and some of it delivered already."""
    keys = enqueue_effects(rt)
    start("beat", "beat")
    worker = start("worker", worker_name, "--concurrency", "2")
    wait_for(lambda: sum(arrived(fake_slack, fake_github).values()) >= 40, 60, "the worker to deliver some",
             interval=0.005)
    return keys, worker


def test_a_worker_killed_with_sigkill_mid_run_loses_nothing_and_doubles_nothing(stack, fake_slack, fake_github):
    rt, start = stack
    keys, first = start_delivering(rt, start, fake_slack, fake_github, "worker-1")
    first.kill(signal.SIGKILL)
    before_restart = sum(arrived(fake_slack, fake_github).values())
    assert before_restart < EFFECTS, "the worker finished before it could be killed: the test proved nothing"
    start("worker", "worker-2", "--concurrency", "2")
    wait_for(lambda: delivered_rows(rt) == EFFECTS, 90, "every effect to be delivered", interval=0.1)
    assert_each_arrived_exactly_once(keys, fake_slack, fake_github, rt)


def test_redis_restarted_mid_run_loses_nothing_and_doubles_nothing(stack, redis_server, fake_slack, fake_github):
    rt, start = stack
    keys, worker = start_delivering(rt, start, fake_slack, fake_github, "worker")
    redis_server.restart(down_for=1.0)
    assert sum(arrived(fake_slack, fake_github).values()) < EFFECTS, "finished before Redis went down: proved nothing"

    def settled() -> bool:
        # Celery 5.7 sometimes dies of the lost connection itself ("Unrecoverable error",
        # celery/celery#9250) and then hangs in its shutdown; a deployment's supervisor replaces
        # such a worker, and so does this test. What must hold either way: nothing lost, nothing doubled.
        nonlocal worker
        if "Unrecoverable error" in worker.log():
            worker.kill()
            worker = start("worker", f"worker-after-crash-{len(worker.log())}", "--concurrency", "2")
        return delivered_rows(rt) == EFFECTS
    wait_for(settled, 120, "every effect to be delivered", interval=0.1)
    assert_each_arrived_exactly_once(keys, fake_slack, fake_github, rt)


def test_a_task_queued_before_batches_with_one_bare_effect_id_is_still_delivered(stack, redis_server, fake_slack):
    from workers.celery_app import make_celery_app
    rt, start = stack
    with rt.uow() as uow:
        effect_id = outbox.enqueue(uow, key="old-task:1", kind="slack.message", now=rt.clock.now(),
                                   payload={"channel": "cloud-trial-alerts", "text": "queued long ago", "blocks": []})
        uow.commit()
    start("worker", "worker", "--concurrency", "1")  # no beat: only this task can deliver it

    make_celery_app(redis_server.url).send_task("trialflow.deliver", (effect_id,), queue="trialflow")

    wait_for(lambda: delivered_rows(rt) == 1, 30, "the effect to be delivered")
    assert fake_slack.deliveries() == {"old-task:1": 1}
