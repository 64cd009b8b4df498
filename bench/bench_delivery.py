"""Effects delivered per second by Celery workers on Redis, and commit-to-delivery latency.

Real pieces: PostgreSQL (database trialflow_bench_delivery), a private redis-server, two
`trialflow worker` processes, the real slack_sdk WebClient talking HTTP to the local Slack
server from tests/support (rate limits off). A floor, then three runs:

- the floor: as many chat.postMessage calls as the backlog has effects, posted to the same local
  Slack server by ``--workers`` plain processes, each one call after the other (as a worker's
  single pool process delivers), over raw HTTP (http.client, the same JSON body and headers
  slack_sdk sends, a new connection per call as slack_sdk's urllib makes): no queue, no database.
  What the workers add on top of it (Celery, Redis, leasing and recording in PostgreSQL,
  slack_sdk) is the backlog's rate as a fraction of the floor's;

- a backlog: ``--effects`` due effects at once (a sweep's batch, Slack back after an outage),
  sent as the relay sends them, in tasks of ``delivery_batch_size``;
- streaming: effects committed ``--per-commit`` per transaction (a signup commits about one) as
  fast as one producer can, handed to the API's coalescing sender (trialflow/delivery/coalesce.py);
- latency: ``--latency-effects`` committed one per transaction at ``--rate``/s through that same
  sender; commit-to-delivery is the row's delivered_at minus its created_at.

    .venv/bin/python bench/bench_delivery.py [--effects 5000] [--stream-effects 6000] [--per-commit 1]
                                             [--latency-effects 300] [--rate 50]

Targets: a backlog at >= 1,000 effects/s with two worker processes (streaming >= 500/s, as
before); p99 commit-to-delivery < 1 s. About 40 s with the defaults; each phase is printed as it
ends.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_seconds, describe, postgres_cpu_seconds, tree_cpu_seconds  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

from tests.support.config import write_config  # noqa: E402
from tests.support.fake_slack import FakeSlack  # noqa: E402
from tests.support.processes import RedisServer, TrialflowProcess, trialflow_env, wait_for  # noqa: E402
from tests.support.services import ensure_postgres_database  # noqa: E402
from trialflow.db import tables  # noqa: E402
from trialflow.db.engine import make_engine  # noqa: E402
from trialflow.db.migrate import upgrade  # noqa: E402
from trialflow.delivery.coalesce import Coalescer  # noqa: E402
from trialflow.delivery.core import batches  # noqa: E402
from trialflow.runtime import Runtime  # noqa: E402
from trialflow.services import outbox  # noqa: E402
from trialflow.settings import Settings  # noqa: E402

DB_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/trialflow_bench_delivery"
TARGET_BACKLOG = 1000.0
TARGET_STREAM = 500.0
TARGET_P99_MS = 1000.0
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.1f} s] {message}", flush=True)


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


# --- the floor: the same Slack server, posted to directly -------------------------------------

def _post_many(url: str, token: str, channel: str, keys: list[str], start, out) -> None:
    """One floor process: chat.postMessage for each key, one after the other, as slack_sdk sends
    it (JSON body, bearer token, a new connection per call)."""
    from trialflow.delivery.slack import EFFECT_EVENT_TYPE
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + "/chat.postMessage"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json;charset=utf-8"}
    bodies = [json.dumps({"channel": channel, "text": f"floor {key}", "unfurl_links": False, "unfurl_media": False,
                          "metadata": {"event_type": EFFECT_EVENT_TYPE, "event_payload": {"key": key}}}).encode()
              for key in keys]
    start.wait()
    failed = 0
    cpu = time.process_time()
    for body in bodies:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
        failed += response.status != 200 or not answer.get("ok")
    out.put((failed, time.process_time() - cpu))


def floor(slack, channel: str, n: int, processes: int) -> tuple[float, int, float]:
    """(seconds for ``n`` posts from ``processes`` processes, answers that were not ok, the
    posting processes' CPU seconds)."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(processes + 1), ctx.Queue()
    keys = [f"floor:{i}" for i in range(n)]
    procs = [ctx.Process(target=_post_many, args=(slack.url, slack.token, channel, keys[i::processes], start, out))
             for i in range(processes)]
    for proc in procs:
        proc.start()
    start.wait(timeout=120)  # the children have imported and built their bodies: the clock starts
    started = time.perf_counter()
    answers = [out.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join()
    return elapsed, sum(failed for failed, _cpu in answers), sum(cpu for _failed, cpu in answers)


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
    p.add_argument("--no-floor", action="store_true", help="skip the floor")
    args = p.parse_args()

    say(f"machine: {describe()}; load average {os.getloadavg()[0]:.2f}")
    fresh_database()
    tmp = Path(tempfile.mkdtemp(prefix="trialflow-bench-"))
    config_dir = write_config(tmp / "config")
    redis = RedisServer(tmp)
    redis.start()
    slack = FakeSlack().start()
    channel = slack.add_channel("cloud-trial-alerts")
    say("database, redis-server and the local Slack server ready")
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
        say(f"{args.workers} workers up and warm")

        floor_rate = None
        if not args.no_floor:
            here = cpu_seconds(os.getpid())
            floor_elapsed, floor_failed, floor_cpu = floor(slack, channel, args.effects, args.workers)
            slack_cpu = cpu_seconds(os.getpid()) - here  # the Slack server's threads, and this process waiting
            floor_rate = args.effects / floor_elapsed
            say(f"floor: {args.effects} posts from {args.workers} processes in {floor_elapsed:.2f} s = {floor_rate:,.0f}/s; "
                f"CPU per post: posting {1000 * floor_cpu / args.effects:.2f} ms, Slack server "
                f"{1000 * slack_cpu / args.effects:.2f} ms; answers not ok: {floor_failed}")

        rt.wake = None
        ids = enqueue(rt, args.effects, "throughput")
        cpu_before = (sum(tree_cpu_seconds(w.proc.pid) for w in workers), cpu_seconds(os.getpid()),
                      postgres_cpu_seconds("trialflow_bench_delivery"), tree_cpu_seconds(redis.proc.pid))
        started = time.perf_counter()
        dispatch(ids)
        wait_for(lambda: delivered(rt, "throughput") == args.effects, 600, "throughput run", interval=0.02)
        elapsed = time.perf_counter() - started
        cpu_after = (sum(tree_cpu_seconds(w.proc.pid) for w in workers), cpu_seconds(os.getpid()),
                     postgres_cpu_seconds("trialflow_bench_delivery"), tree_cpu_seconds(redis.proc.pid))
        per_effect = [1000 * (b - a) / args.effects for a, b in zip(cpu_before, cpu_after, strict=True)]
        throughput = args.effects / elapsed
        say(f"backlog: {args.effects} effects in {elapsed:.2f} s = {throughput:,.0f}/s; CPU per effect: workers "
            f"{per_effect[0]:.2f} ms, Slack server and this process {per_effect[1]:.2f} ms, PostgreSQL "
            f"{per_effect[2]:.2f} ms, Redis {per_effect[3]:.2f} ms")

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
        say(f"streaming: {streamed} effects in {stream_elapsed:.2f} s = {streamed / stream_elapsed:,.0f}/s")

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
        say(f"latency at {args.rate:g}/s: p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms")
        doubles = {k: n for k, n in slack.deliveries().items() if n > 1}
        stream_rate = streamed / stream_elapsed
        print()
        print("| measure | result | target | |")
        print("| --- | --- | --- | --- |")
        if floor_rate is not None:
            print(f"| floor: {args.effects} chat.postMessage posts from {args.workers} processes, one at a time each "
                  f"| {floor_rate:,.0f}/s ({floor_elapsed:.2f} s) | | |")
        print(f"| effects/s, a backlog: {args.effects} due effects, tasks of {settings.delivery_batch_size}, "
              f"{args.workers} workers | {throughput:,.0f}/s ({elapsed:.2f} s) | >= {TARGET_BACKLOG:,.0f}/s "
              f"| {met(throughput >= TARGET_BACKLOG)} |")
        if floor_rate is not None:
            print(f"| the backlog as a fraction of the floor | {throughput / floor_rate:.2f} | | |")
        print(f"| effects/s, streaming: {args.per_commit} effects per commit, coalesced tasks | {stream_rate:,.0f}/s "
              f"({streamed} effects in {stream_elapsed:.2f} s; committed in {produced:.2f} s, the last delivered "
              f"{1000 * (stream_elapsed - produced):.0f} ms after the last commit) | >= {TARGET_STREAM:,.0f}/s "
              f"| {met(stream_rate >= TARGET_STREAM)} |")
        print(f"| commit-to-delivery at {args.rate:g}/s: p50 / p95 / p99 | {q[49]:.1f} / {q[94]:.1f} / {q[98]:.1f} ms "
              f"| p99 < {TARGET_P99_MS:g} ms | {met(q[98] < TARGET_P99_MS)} |")
        print(f"| duplicates at the Slack server | {len(doubles)} | 0 | {met(not doubles)} |")
        print(f"| CPU per effect in the backlog: workers + Slack server + PostgreSQL + Redis "
              f"| {' + '.join(f'{v:.2f}' for v in per_effect)} ms | | |")
        print()
        print(f"machine: {describe()}; load average {os.getloadavg()[0]:.2f} at the end")
    finally:
        for w in workers:
            w.stop()
        slack.stop()
        redis.stop()
        rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
