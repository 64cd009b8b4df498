"""Scale benchmark on PostgreSQL: do the reads cost what changed, not everything ever stored?

    .venv/bin/python bench/bench_scale.py                        # 100k and 1M stored trials
    .venv/bin/python bench/bench_scale.py --sizes 100000 --signups 600

For each size the database ``trialflow_bench_scale`` (created if missing) is rebuilt from the
migrations and filled with COPY (not the API), as a program that has run at the same pace for a
while: 5,000 signups a week, so 100,000 trials are 20 weeks of it and 1,000,000 almost four
years. Per trial: its history (2 to 4 entries), two timers (pending for the live trials of the last
30 days, fired for the others), four delivered outbox rows (an alert and a thread reply in Slack,
an email, an issue or a second email: ~4,000,000 rows at 1M, nothing pruned yet), the aggregates
the writer keeps with them (``trial_facts``, ``trial_counts``, ``delivery_stats``) and an
instance for each started trial; plus a few hundred pending and failed effects.

Measured in process (warm-up, then 7 runs: median and max), each through the code that serves it:
``GET /metrics``, ``GET /dashboard``, ``GET /api/funnel``, ``trialflow report`` (its function,
without the interpreter's start), ``trialflow outbox list``, ``GET /api/trials?state=active&limit=50``,
the Slack ``/trial queue`` and ``/trial mine`` commands, the sweep with nothing due, and a signup's
latency: ``POST /api/signups`` paced at 200/s (open loop), p50/p99 against a small database (1,000
trials) measured in the same run. Then one prune of delivered effects past retention: its rate.

Targets at 1,000,000: /metrics < 100 ms; dashboard, funnel, report < 500 ms; each Slack command
< 200 ms; signup p99 at 200/s unchanged from the small database; nothing-due sweep < 50 ms; and
time(1M) / time(100k) < 2 for each. Results go to bench/RESULTS-scale.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from bench_sweep import (  # noqa: E402
    HISTORY_COPY,
    INSTANCES_COPY,
    OUTBOX_COPY,
    TIMERS_COPY,
    Tsv,
    admin_conninfo,
    copy_rows,
    ts,
)
from machine import describe  # noqa: E402

from trialflow import funnel  # noqa: E402
from trialflow.db import tables  # noqa: E402
from trialflow.db.migrate import upgrade  # noqa: E402
from trialflow.domain import lifecycle as lc  # noqa: E402
from trialflow.metrics import latency_bucket  # noqa: E402
from trialflow.runtime import Runtime  # noqa: E402
from trialflow.services import aggregates  # noqa: E402
from trialflow.services.prune import prune  # noqa: E402
from trialflow.services.reference import load_reference_data  # noqa: E402
from trialflow.services.slack_commands import handle_slash_command  # noqa: E402
from trialflow.services.sweep import sweep  # noqa: E402
from trialflow.settings import Settings  # noqa: E402

DB_NAME = "trialflow_bench_scale"
NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
PER_WEEK = 5_000
STEP = timedelta(weeks=1) / PER_WEEK
LIVE_DAYS = 30
AES = ["alice.ae@example.com", "andy.ae@example.com"]
CES = ["carol.ce@example.com", "chris.ce@example.com"]
SOURCES = ["website", "webinar", "docs", "partner", None]
FINAL = [lc.CONVERTED, lc.TERMINATED, lc.TERMINATED, lc.DISQUALIFIED]
CASES = ["existing_instance", "prequalified_named", "prequalified_unnamed", "manual_qualification",
         "manual_qualification", "manual_qualification", "manual_qualification", "manual_qualification",
         "manual_qualification", "manual_qualification"]
SMALL = 1_000
LOADER = ("127.0.0.1", 50000)   # loopback, as the staff surfaces expect without sign-in configured


def ensure_database(host: str, port: int, user: str) -> str:
    with psycopg.connect(admin_conninfo(host, port, user), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return f"postgresql+psycopg://{user}@{host}:{port}/{DB_NAME}"


def a_trial(i: int, stored: int) -> dict:
    """Trial ``i`` of ``stored`` (0 oldest): what happened to it, as plain values."""
    created = NOW - (stored - i) * STEP
    case = CASES[i % len(CASES)]
    live = NOW - created < timedelta(days=LIVE_DAYS)
    moves: list[tuple[str, str, str, datetime, dict]] = []
    started = None
    grade = None
    if case == "existing_instance":
        state = lc.JOINING_EXISTING if live else lc.JOINED
        moves.append(("new", lc.JOINING_EXISTING, lc.ROUTE_TO_EXISTING, created, {}))
        if not live:
            moves.append((lc.JOINING_EXISTING, lc.JOINED, lc.CONFIRM_USER_ADDED, created + timedelta(hours=3), {}))
    elif case.startswith("prequalified"):
        started = created
        moves.append(("new", lc.ACTIVE, lc.CLAIM_POOL_INSTANCE, created, {}))
        state = lc.ACTIVE if live else FINAL[i % 2]
        grade = "ABCD"[i % 4]
    else:
        moves.append(("new", lc.TRIAGE, lc.SEND_TO_TRIAGE, created, {}))
        if live and i % 7 == 0:
            state = lc.TRIAGE
        elif i % 5 == 0:
            state = lc.DISQUALIFIED
            moves.append((lc.TRIAGE, lc.DISQUALIFIED, lc.DISQUALIFY, created + timedelta(hours=2),
                          {"reason": ["student project", "competitor", "no company"][i % 3]}))
        else:
            qualified = created + timedelta(hours=1 + i % 9)
            ready = qualified + timedelta(hours=20 + i % 11)
            moves.append((lc.TRIAGE, lc.INSTANCE_REQUESTED, lc.QUALIFY, qualified, {}))
            if live and i % 7 == 1:
                state = lc.INSTANCE_REQUESTED
            else:
                started = ready + timedelta(hours=2 + i % 5)
                moves.append((lc.INSTANCE_REQUESTED, lc.INSTANCE_READY, lc.MARK_INSTANCE_READY, ready, {}))
                moves.append((lc.INSTANCE_READY, lc.ACTIVE, lc.HAND_OFF, started, {}))
                state = lc.ACTIVE if live else FINAL[i % 4 if i % 4 != 3 else 0]
                grade = "ABCD"[(i // 3) % 4]
    if state in (lc.CONVERTED, lc.TERMINATED):
        moves.append((lc.ACTIVE, state, lc.CONVERT if state == lc.CONVERTED else lc.TERMINATE,
                      (started or created) + timedelta(days=15), {}))
    return {"id": f"tr_{i:016x}", "i": i, "created": created, "case": case, "state": state, "started": started,
            "grade": grade, "moves": moves, "live": live, "source": SOURCES[i % len(SOURCES)],
            "ae": AES[i % 2] if started or state == lc.INSTANCE_REQUESTED else None,
            "ce": CES[(i // 2) % 2] if started or state == lc.INSTANCE_REQUESTED else None,
            "sdr": "ivy.inbound@example.com" if case == "manual_qualification" else None}


def fill(conninfo: str, stored: int) -> dict[str, float]:
    """Bulk-load ``stored`` trials with their history, timers, outbox rows, instances and aggregates."""
    timings: dict[str, float] = {}
    counts: Counter[tuple[str, str | None]] = Counter()
    stats: dict[tuple[str, int], list[float]] = {}
    chunk = 50_000
    with psycopg.connect(conninfo) as conn:
        for start in range(0, stored, chunk):
            t0 = time.perf_counter()
            trials, history, timers, effects, instances, facts = Tsv(), Tsv(), Tsv(), Tsv(), Tsv(), Tsv()
            for i in range(start, min(start + chunk, stored)):
                tr = a_trial(i, stored)
                tid, created, started = tr["id"], tr["created"], tr["started"]
                domain = f"company{i}.example"
                email = f"user{i}@{domain}"
                host = f"t{i:07d}.sourcegraph.com" if started else None
                updated = tr["moves"][-1][3]
                trials.row(tid, email, domain, tr["source"], tr["case"], tr["state"], f"Company {i}", host, tr["sdr"],
                           tr["ae"], tr["ce"], ts(created), ts(updated), ts(started), "f", i % 40, tr["grade"])
                for from_state, to_state, trigger, at, detail in tr["moves"]:
                    history.row(tid, from_state, to_state, trigger, "system", ts(at), json.dumps(detail))
                if started:
                    alive = tr["state"] == lc.ACTIVE
                    # A live trial's clock is ahead (started 15-30 days ago: it was extended), so nothing is due now.
                    ahead = NOW + timedelta(days=1 + i % 10)
                    heads_up, review = started + timedelta(days=12), started + timedelta(days=15)
                    timers.row(tid, "termination_heads_up", ts(max(heads_up, ahead) if alive else heads_up),
                               None if alive else ts(heads_up), ts(started))
                    timers.row(tid, "day15_review", ts(max(review, ahead) if alive else review),
                               None if alive else ts(review), ts(started))
                    instances.row(host, email, "live" if alive or tr["state"] == lc.CONVERTED else "terminated",
                                  tid, ts(started))
                moves = tuple(funnel.Move(f, t, g, a) for f, t, g, a, _ in tr["moves"])
                reason = next((d["reason"] for *_, d in tr["moves"] if "reason" in d), None)
                row = aggregates.fact_row(funnel.TrialFacts(tid, tr["case"], tr["state"], created, started, tr["grade"],
                                                            tuple(m for m in moves if funnel.bounds_a_step(m))),
                                          tr["source"], tr["ae"], tr["ce"], reason)
                facts.row(*(("t" if row[c] else "f") if c == "started" else
                            ts(row[c]) if c == "created_at" else row[c] for c in FACT_COLUMNS))
                counts[(tr["state"], tr["grade"])] += 1
                kinds = ("slack.message", "slack.message", "email.send",
                         "github.issue" if tr["case"] == "manual_qualification" else "email.send")
                for n, kind in enumerate(kinds):
                    at = created + timedelta(seconds=n)
                    latency = 0.05 * (1 + i % 40) * (n + 1)
                    payload = {"ref": f"alert:{tid}", "text": f"signup {email} (effect {n})"}
                    result = {"ts": f"{i}.{n:06d}"} if kind == "slack.message" else \
                        {"number": i} if kind == "github.issue" else {}
                    effects.row(f"{tid}:{n}:bench", tid, kind, json.dumps(payload), "delivered", 1, ts(at), ts(at),
                                ts(at + timedelta(seconds=latency)), json.dumps(result))
                    entry = stats.setdefault((kind, latency_bucket(latency)), [0, 0.0])
                    entry[0] += 1
                    entry[1] += latency
                if tr["live"] and i % 500 == 0:   # a few not delivered: pending, and parked as failed
                    effects.row(f"{tid}:9:bench", tid, "email.send", json.dumps({"text": "later"}),
                                "failed" if i % 1000 == 0 else "pending", 1, ts(NOW + timedelta(days=1)), ts(created),
                                None, None)
            t1 = time.perf_counter()
            copy_rows(conn, (
                ("trials", 'id, email, domain, source, "case", state, account_name, instance_host, sdr, ae, ce, '
                           "created_at, updated_at, started_at, kept, mql_points, pql_grade", trials),
                ("trial_history", HISTORY_COPY, history),
                ("timers", TIMERS_COPY, timers),
                ("instances", INSTANCES_COPY, instances),
                ("outbox", OUTBOX_COPY, effects),
                ("trial_facts", ", ".join(f'"{c}"' for c in FACT_COLUMNS), facts),
            ))
            timings["generate"] = timings.get("generate", 0.0) + (t1 - t0)
            timings["copy"] = timings.get("copy", 0.0) + (time.perf_counter() - t1)
            print(f"  loaded {min(start + chunk, stored):>9,}/{stored:,}", file=sys.stderr)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO trial_counts (state, pql_grade, n) VALUES (%s, %s, %s)",
                            [(s, g, n) for (s, g), n in counts.items()])
            cur.executemany("INSERT INTO delivery_stats (kind, bucket, n, seconds) VALUES (%s, %s, %s, %s)",
                            [(k, b, n, sec) for (k, b), (n, sec) in stats.items()])
        conn.commit()
        conn.autocommit = True
        t0 = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        timings["analyze"] = time.perf_counter() - t0
    return timings


FACT_COLUMNS = list(tables.trial_facts.columns.keys())


def timed(fn: Callable[[], object], runs: int = 7) -> dict[str, float]:
    fn()  # warm-up: first connection, plans, caches
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return {"median_ms": statistics.median(seconds) * 1000, "max_ms": max(seconds) * 1000}


def signup_latency(client, count: int, rate: float, tag: str) -> dict[str, float]:
    """``count`` signups of new companies, sent at most ``rate``/s from one thread, each timed from
    its request to its answer (the in-process client cannot keep 200/s on this machine: the rate
    it achieved is reported with it)."""
    latencies = []
    begin = time.perf_counter()
    for n in range(count):
        due = begin + n / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.001))
        sent = time.perf_counter()
        answer = client.post("/api/signups", json={"email": f"new{n}@{tag}-{n}.example", "source": "bench"})
        assert answer.status_code == 201, answer.text
        latencies.append(time.perf_counter() - sent)
    latencies.sort()
    return {"p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "achieved_per_s": count / (time.perf_counter() - begin)}


def explain(conninfo: str, sql: str, params: tuple = ()) -> str:
    with psycopg.connect(conninfo) as conn:
        return "\n".join(r[0] for r in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", params).fetchall())


def run_size(url: str, conninfo: str, stored: int, signups: int, rate: float) -> dict:
    print(f"\n== {stored:,} stored trials", file=sys.stderr)
    from fastapi.testclient import TestClient

    from trialflow.api.app import create_app
    from trialflow.cli import outbox_list as outbox_list_command
    t0 = time.perf_counter()
    rt = fresh_runtime(url, conninfo)
    timings = fill(conninfo, stored)
    setup = time.perf_counter() - t0
    print(f"  setup {setup:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})", file=sys.stderr)
    result: dict = {"stored": stored, "setup_s": setup}
    os.environ["TRIALFLOW_DATABASE_URL"] = url
    with TestClient(create_app(rt), client=LOADER) as client:
        def get(path: str, **params) -> Callable[[], None]:
            def call() -> None:
                answer = client.get(path, params=params)
                assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
            return call

        def report() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                assert funnel.cli_report(rt, argparse.Namespace(weeks=12, json=False, csv=False, by=None)) == 0

        def outbox_list() -> None:   # the command as `trialflow outbox list` runs it, its own runtime included
            with contextlib.redirect_stdout(io.StringIO()):
                assert outbox_list_command("open", 100) == 0

        def slack(text: str, user: str) -> Callable[[], None]:
            return lambda: handle_slash_command(rt, {"user_id": user, "text": text})

        surfaces = {
            "metrics": get("/metrics"), "dashboard": get("/dashboard"), "funnel": get("/api/funnel"),
            "report": report, "funnel_by_ae": get("/api/funnel", by="ae"), "outbox_list": outbox_list,
            "trials_active": get("/api/trials", state="active", limit=50),
            "slack_queue": slack("queue", "U0SDR0001"), "slack_mine": slack("mine", "U0AE00001"),
            "sweep_nothing_due": lambda: sweep(rt),
        }
        for name, fn in surfaces.items():
            result[name] = timed(fn)
            print(f"  {name}: median {result[name]['median_ms']:.1f} ms, max {result[name]['max_ms']:.1f} ms",
                  file=sys.stderr)
        result["signup"] = signup_latency(client, signups, rate, f"s{stored}")
        print(f"  signups at {rate:.0f}/s: p50 {result['signup']['p50_ms']:.1f} ms, "
              f"p99 {result['signup']['p99_ms']:.1f} ms", file=sys.stderr)
    t0 = time.perf_counter()
    # Retention is set out of reach for the runs above (the nothing-due sweep prunes nothing); here,
    # as if all of it had passed: 20 batches of what a sweep would prune.
    pruned = prune(rt, NOW + timedelta(days=rt.settings.outbox_retention_days + 30), max_batches=20)
    result["prune_per_s"] = pruned.pruned / (time.perf_counter() - t0)
    print(f"  prune: {pruned.pruned} rows in 20 batches, {result['prune_per_s']:.0f}/s", file=sys.stderr)
    result["plans"] = {
        "metrics: effects not delivered": explain(conninfo, "SELECT status, count(*) FROM outbox WHERE status <> 'delivered' GROUP BY status"),
        "funnel: the window's facts": explain(conninfo, "SELECT week, count(*) FROM trial_facts WHERE created_at >= %s AND created_at <= %s GROUP BY week",
                                              (funnel.window_start(NOW, 12), NOW)),
        "/trial mine": explain(conninfo, "SELECT id FROM trials WHERE (sdr = %s OR ae = %s OR ce = %s) AND state <> ALL(%s) "
                                         "ORDER BY created_at DESC LIMIT 20",
                               ("alice.ae@example.com",) * 3 + (sorted(lc.FINAL_STATES),)),
    }
    rt.close()
    return result


def fresh_runtime(url: str, conninfo: str) -> Runtime:
    """An empty, migrated database with the reference data, and a runtime on it (no providers:
    effects stay in the outbox; no signup rate limits: the load comes from one address)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    upgrade(url)
    settings = Settings(database_url=url, config_dir=ROOT / "config", broker_url=None, slack_bot_token=None,
                        slack_signing_secret=None, github_token=None, github_webhook_secret=None, smtp_url=None,
                        activity_secret=None, instance_cap=10_000_000, pool_low_water=0,
                        signup_rate_per_ip="1000000/second", signup_rate_per_domain="1000000/second",
                        outbox_retention_days=100_000, _env_file=None)
    rt = Runtime(settings, clock=FixedClock())
    load_reference_data(rt.session_factory, settings.config_dir, NOW - timedelta(days=60))
    return rt


class FixedClock:
    """The benchmark's now: every size is read as of the same moment."""

    def now(self) -> datetime:
        return NOW


def small_signups(url: str, conninfo: str, signups: int, rate: float) -> dict[str, float]:
    """The signup latency against a small database (1,000 trials), for comparison."""
    from fastapi.testclient import TestClient

    from trialflow.api.app import create_app
    rt = fresh_runtime(url, conninfo)
    fill(conninfo, SMALL)
    with TestClient(create_app(rt), client=LOADER) as client:
        signup_latency(client, 100, rate, "warm")
        found = signup_latency(client, signups, rate, "small")
    rt.close()
    print(f"  small database: signups at {rate:.0f}/s: p50 {found['p50_ms']:.1f} ms, p99 {found['p99_ms']:.1f} ms",
          file=sys.stderr)
    return found


SURFACES = [("metrics", "GET /metrics", 100), ("dashboard", "GET /dashboard", 500), ("funnel", "GET /api/funnel", 500),
            ("report", "trialflow report", 500), ("funnel_by_ae", "GET /api/funnel?by=ae", 500),
            ("outbox_list", "trialflow outbox list", None), ("trials_active", "GET /api/trials?state=active&limit=50", None),
            ("slack_queue", "Slack /trial queue", 200), ("slack_mine", "Slack /trial mine", 200),
            ("sweep_nothing_due", "sweep, nothing due", 50)]


def write_results(path: Path, results: list[dict], small: dict, rate: float, load: tuple[float, float]) -> None:
    base, top = results[0], results[-1]
    lines = ["# Scale benchmark (PostgreSQL)", "",
             f"Generated by `bench/bench_scale.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; this machine: "
             f"{describe()}; PostgreSQL on 127.0.0.1. Load average {load[0]:.1f} at the start and {load[1]:.1f} at "
             "the end: the machine is shared, other engineers' test suites and benchmarks ran on the same cores.", "",
             f"A program at {PER_WEEK:,} signups a week: each size is that many weeks of it, built by COPY (history, "
             "timers, four delivered outbox rows per trial, the aggregates). Medians of 7 runs after a warm-up "
             "(max in brackets), in process through the code that serves each surface.", "",
             "| surface | " + " | ".join(f"{r['stored']:,} trials" for r in results) + " | ratio | target at the largest |",
             "| --- | " + " | ".join("---:" for _ in results) + " | ---: | --- |"]
    for key, label, target in SURFACES:
        cells = [f"{r[key]['median_ms']:.1f} ms ({r[key]['max_ms']:.0f})" for r in results]
        ratio = top[key]["median_ms"] / base[key]["median_ms"]
        goal = f"< {target} ms: **{'met' if top[key]['median_ms'] < target else 'NOT met'}**" if target else "–"
        lines.append(f"| {label} | {' | '.join(cells)} | {ratio:.2f} {'✓' if ratio < 2 else '✗'} | {goal} |")
    cells = [f"p50 {r['signup']['p50_ms']:.1f} / p99 {r['signup']['p99_ms']:.1f} ms at {r['signup']['achieved_per_s']:.0f}/s"
             for r in results]
    lines.append(f"| signup (up to {rate:.0f}/s) | {' | '.join(cells)} | "
                 f"{top['signup']['p99_ms'] / base['signup']['p99_ms']:.2f} | p99 vs {SMALL:,} trials: "
                 f"p50 {small['p50_ms']:.1f} / p99 {small['p99_ms']:.1f} ms at {small['achieved_per_s']:.0f}/s |")
    prunes = " | ".join(f"{r['prune_per_s']:,.0f} rows/s" for r in results)
    setups = " | ".join(f"{r['setup_s']:.0f} s" for r in results)
    lines.append(f"| prune (20 batches of 500) | {prunes} | | |")
    lines.append(f"| setup (COPY, VACUUM ANALYZE) | {setups} | | |")
    lines += ["", f"## Query plans at {top['stored']:,} trials", ""]
    for name, plan in top["plans"].items():
        lines += [f"{name}:", "", "```", plan, "```", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--signups", type=int, default=1000)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--host", default=os.environ.get("PGHOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", "5432")))
    p.add_argument("--user", default=os.environ.get("PGUSER", "postgres"))
    p.add_argument("--output", default=str(ROOT / "bench" / "RESULTS-scale.md"))
    args = p.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING)
    load_start = os.getloadavg()[0]
    url = ensure_database(args.host, args.port, args.user)
    conninfo = f"host={args.host} port={args.port} user={args.user} dbname={DB_NAME}"
    small = small_signups(url, conninfo, args.signups, args.rate)
    results = [run_size(url, conninfo, int(size), args.signups, args.rate) for size in args.sizes.split(",")]
    write_results(Path(args.output), results, small, args.rate, (load_start, os.getloadavg()[0]))
    print(f"\nwrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
