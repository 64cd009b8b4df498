"""Effects delivered per second by Celery workers on Redis, and commit-to-delivery latency.

Real pieces: PostgreSQL (database trialflow_bench_delivery), a private redis-server, two
`trialflow worker` processes, the real slack_sdk WebClient talking HTTP to the local Slack
server from tests/support (rate limits off). Three runs:

- a backlog: ``--effects`` due effects at once (a sweep's batch, Slack back after an outage),
  sent as the relay sends them, in tasks of ``delivery_batch_size``;
- streaming: effects committed ``--per-commit`` per transaction (a signup commits about one) as
  fast as one producer can, handed to the API's coalescing sender (trialflow/delivery/coalesce.py);
- latency: ``--latency-effects`` committed one per transaction at ``--rate``/s through that same
  sender; commit-to-delivery is the row's delivered_at minus its created_at.

    .venv/bin/python bench/bench_delivery.py [--effects 5000] [--stream-effects 6000] [--per-commit 1]
                                             [--latency-effects 300] [--rate 50]

Targets (issue 3): >= 500 effects/s with two worker processes; p99 commit-to-delivery < 1 s.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select, text  # noqa: E402

from tests.support.config import write_config  # noqa: E402
from tests.support.fake_slack import FakeSlack  # noqa: E402
from tests.support.processes import RedisServer, TrialflowProcess, trialflow_env, wait_for  # noqa: E402
from tests.support.services import ensure_postgres_database  # noqa: E402
from trialflow.db import tables  # noqa: E402
from trialflow.delivery.coalesce import Coalescer  # noqa: E402
from trialflow.delivery.core import batches  # noqa: E402
from trialflow.db.engine import make_engine  # noqa: E402
from trialflow.db.migrate import upgrade  # noqa: E402
from trialflow.runtime import Runtime  # noqa: E402
from trialflow.services import outbox  # noqa: E402
from trialflow.settings import Settings  # noqa: E402

DB_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/trialflow_bench_delivery"


def fresh_database() -> None:
    ensure_postgres_database(DB_URL)
    engine = make_engine(DB_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    upgrade(DB_URL)


def enqueue(rt: Runtime, n: int, prefix: str) -> list[int]:
    ids = []
    with rt.uow() as uow:
        for i in range(n):
            ids.append(outbox.enqueue(uow, key=f"{prefix}:{i}", kind="slack.message", now=rt.clock.now(), payload={
                "channel": "cloud-trial-alerts", "text": f"bench {prefix} {i}"}))
        uow.commit()
    return ids


def delivered(rt: Runtime, prefix: str) -> int:
    with rt.session_factory() as s:
        return s.scalar(select(func.count()).select_from(tables.outbox).where(
            tables.outbox.c.status == "delivered", tables.outbox.c.key.like(f"{prefix}:%")))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--effects", type=int, default=5000)
    p.add_argument("--stream-effects", type=int, default=6000)
    p.add_argument("--per-commit", type=int, default=1, help="effects per transaction in the streaming run")
    p.add_argument("--latency-effects", type=int, default=300)
    p.add_argument("--rate", type=float, default=50.0, help="effects committed per second in the latency run")
    p.add_argument("--workers", type=int, default=2, help="trialflow worker processes")
    p.add_argument("--concurrency", type=int, default=1, help="Celery pool processes per worker")
    args = p.parse_args()

    fresh_database()
    tmp = Path(tempfile.mkdtemp(prefix="trialflow-bench-"))
    config_dir = write_config(tmp / "config")
    redis = RedisServer(tmp)
    redis.start()
    slack = FakeSlack().start()
    slack.add_channel("cloud-trial-alerts")
    overrides = dict(broker_url=redis.url, **slack.settings(), beat_relay_seconds=1.0, relay_grace_seconds=5.0)
    settings = Settings(database_url=DB_URL, config_dir=config_dir, _env_file=None, **overrides)
    env = trialflow_env(database_url=DB_URL, config_dir=config_dir, **overrides)
    from workers.celery_app import make_celery_app
    celery = make_celery_app(redis.url)

    def dispatch(ids):  # as workers.tasks.dispatch: one task per batch of a commit's effects
        for batch in batches(ids, settings.delivery_batch_size):
            celery.send_task("trialflow.deliver", (batch,), queue="trialflow")

    rt = Runtime(settings)
    rt.wake = dispatch
    streaming_dispatch = Coalescer(dispatch, settings.delivery_batch_size)  # what the API process uses
    workers = [TrialflowProcess(["worker", "--concurrency", str(args.concurrency)], env, tmp / f"worker-{i}.log").start()
               for i in range(args.workers)]
    try:
        for w in workers:
            w.wait_ready("ready", timeout=60)
        # warm-up: connections, imports
        enqueue(rt, 50, "warmup")
        wait_for(lambda: delivered(rt, "warmup") == 50, 60, "warm-up")

        rt.wake = None
        ids = enqueue(rt, args.effects, "throughput")
        started = time.perf_counter()
        dispatch(ids)
        wait_for(lambda: delivered(rt, "throughput") == args.effects, 600, "throughput run", interval=0.02)
        elapsed = time.perf_counter() - started
        throughput = args.effects / elapsed

        # Streaming: effects committed a few per transaction as fast as one producer can, each
        # commit handing its ids to the API's coalescing sender; workers deliver while more arrive.
        rt.wake = streaming_dispatch
        commits = args.stream_effects // args.per_commit
        started = time.perf_counter()
        for c in range(commits):
            with rt.uow() as uow:
                for j in range(args.per_commit):
                    outbox.enqueue(uow, key=f"stream:{c}:{j}", kind="slack.message", now=rt.clock.now(),
                                   payload={"channel": "cloud-trial-alerts", "text": f"stream {c} {j}"})
                uow.commit()
        produced = time.perf_counter() - started
        streamed = commits * args.per_commit
        wait_for(lambda: delivered(rt, "stream") == streamed, 600, "streaming run", interval=0.02)
        stream_elapsed = time.perf_counter() - started

        interval = 1.0 / args.rate
        next_at = time.perf_counter()
        for i in range(args.latency_effects):
            with rt.uow() as uow:
                outbox.enqueue(uow, key=f"latency:{i}", kind="slack.message", now=rt.clock.now(),
                               payload={"channel": "cloud-trial-alerts", "text": f"latency {i}"})
                uow.commit()
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))
        wait_for(lambda: delivered(rt, "latency") == args.latency_effects, 120, "latency run", interval=0.05)
        with rt.session_factory() as s:
            rows = s.execute(select(tables.outbox.c.created_at, tables.outbox.c.delivered_at)
                             .where(tables.outbox.c.key.like("latency:%"))).all()
        lat = sorted((d - c).total_seconds() * 1000 for c, d in rows)
        q = statistics.quantiles(lat, n=100)
        print(f"| effects/s, a backlog: {args.effects} due effects, tasks of {settings.delivery_batch_size} | {throughput:,.0f} ({args.effects} effects in {elapsed:.2f} s) | >= 500 |")
        print(f"| effects/s, streaming: {args.per_commit} effects per commit, coalesced tasks | {streamed / stream_elapsed:,.0f} ({streamed} effects in {stream_elapsed:.2f} s; committed in {produced:.2f} s, the last delivered {1000 * (stream_elapsed - produced):.0f} ms after the last commit) | >= 500 |")
        print(f"| commit-to-delivery at {args.rate:g}/s: p50 / p95 / p99 | {q[49]:.1f} / {q[94]:.1f} / {q[98]:.1f} ms | p99 < 1000 ms |")
        doubles = {k: n for k, n in slack.deliveries().items() if n > 1}
        print(f"duplicates at the Slack server: {len(doubles)}")
    finally:
        for w in workers:
            w.stop()
        slack.stop()
        redis.stop()
        rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
