"""The ``trialflow`` command."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from trialflow.api.clients import is_loopback_host
from trialflow.api.serialize import trial_detail, trial_summary
from trialflow.db import tables
from trialflow.db.migrate import upgrade
from trialflow.delivery.core import retry
from trialflow.delivery.wiring import build_deliverer, run_reconcile, start_delivery
from trialflow.demo import run_demo
from trialflow.domain.trial import Trial
from trialflow.errors import ConfigError, DeliveryError, TrialflowError
from trialflow.funnel import cli_report
from trialflow.graph import cli_graph
from trialflow.logs import configure_logging
from trialflow.runtime import Runtime
from trialflow.services.crm_accounts import load_from_salesforce
from trialflow.services.outbox import redact
from trialflow.services.reference import load_reference_data
from trialflow.services.spooled_signups import SpoolReplayer, replay, spool_of
from trialflow.services.sweep import sweep
from trialflow.spool import SpooledSignup
from trialflow.timeline import print_timeline
from workers.commands import cmd_beat, cmd_worker
from workers.tasks import dispatch


def _runtime(args=None, **kw):
    return Runtime(**kw)


def _parse_when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"--at: {text!r} is not an ISO-8601 time (like 2026-03-01T09:00:00Z)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _progress(label: str, done: int, total: int) -> None:
    if not sys.stderr.isatty() and done != total:
        return
    width = 30
    filled = int(width * done / total) if total else width
    end = "\n" if done >= total else "\r"
    sys.stderr.write(f"{label:<24} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}{end}")
    sys.stderr.flush()


def prepare_database(rt, load_config: bool = True) -> None:
    """Migrations first, then the reference data from TRIALFLOW_CONFIG_DIR (if it is there)."""
    upgrade(rt.settings.database_url)
    config_dir = Path(rt.settings.config_dir)
    if load_config and not (config_dir / "accounts.csv").exists():
        logging.getLogger("trialflow").warning(
            "no reference data at %s (TRIALFLOW_CONFIG_DIR): every signup will go to triage until "
            "`trialflow config load --dir DIR` is run", config_dir.resolve())
    if load_config and (config_dir / "accounts.csv").exists():
        # With Salesforce the accounts are its own (config load --from salesforce, hourly), not the file's.
        report = load_reference_data(rt.session_factory, config_dir, rt.clock.now(),
                                     keep_accounts=rt.settings.salesforce_configured)
        logging.getLogger("trialflow").info("reference data loaded from %s: %s accounts, %s staff, %s instances",
                                            config_dir, report.accounts, report.staff, report.instances)
        for w in report.warnings:
            logging.getLogger("trialflow").warning(w)


def cmd_serve(args) -> int:
    import uvicorn


    rt = _runtime()
    if not is_loopback_host(args.host) and not rt.settings.staff_auth_configured:
        print(f"error: refusing to serve on {args.host}: trial data would be open to anyone who can reach it. "
              "Set staff sign-in (TRIALFLOW_OIDC_ISSUER, TRIALFLOW_OIDC_CLIENT_ID, TRIALFLOW_OIDC_CLIENT_SECRET, "
              "TRIALFLOW_PUBLIC_URL, TRIALFLOW_SESSION_SECRET) and/or machine tokens (TRIALFLOW_API_TOKENS), "
              "or serve on 127.0.0.1.", file=sys.stderr)
        return 2
    if not is_loopback_host(args.host) and rt.settings.metrics_token is None:
        logging.getLogger("trialflow").warning("/metrics answers this machine only: set TRIALFLOW_METRICS_TOKEN "
                                               "for a Prometheus elsewhere")
    prepare_database(rt)
    stop = start_delivery(rt, with_scheduler=True, send_to_workers=dispatch)
    stop_spool = SpoolReplayer(rt).start()  # signups kept on disk while the database was away
    # Imported here, not at the top: the API's web stack (FastAPI, Authlib, the docs) costs ~1.5 s
    # to import, and every other command (sweep, outbox, trials, report) starts without it.
    from trialflow.api.app import create_app

    app = create_app(rt)
    mode = "Celery via " + rt.settings.broker_url.split("@")[-1] if rt.settings.broker_url else "in-process"
    logging.getLogger("trialflow").info("trialflow on http://%s:%s (database %s, delivery %s)", args.host, args.port,
                                        rt.engine.url.render_as_string(hide_password=True), mode)
    try:
        # log_config=None: uvicorn's lines go through our handler (JSON when asked, secrets masked).
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False, log_config=None)
    finally:
        stop_spool()
        stop()
    return 0


def cmd_migrate(args) -> int:
    rt = _runtime()
    prepare_database(rt, load_config=False)
    print("database schema is up to date")
    return 0


def cmd_config_load(args) -> int:
    rt = _runtime()
    upgrade(rt.settings.database_url)
    directory = Path(args.dir or rt.settings.config_dir)
    source = str(directory)
    try:
        if args.source == "salesforce":
            report, source = load_from_salesforce(rt, directory, _progress)
        else:
            report = load_reference_data(rt.session_factory, directory, rt.clock.now(), progress=_progress)
    except (ConfigError, DeliveryError) as exc:
        print(f"error: {exc}\nnothing was imported.", file=sys.stderr)
        return 2
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"loaded {report.accounts:,} accounts, {report.staff:,} staff, {report.instances:,} instances "
          f"({report.pool_added} new in the pool) from {source}")
    print(f"accounts: {len(report.added):,} added, {len(report.removed):,} removed, {len(report.changed):,} changed")
    return 0



def cmd_sweep(args) -> int:
    rt = _runtime()
    prepare_database(rt, load_config=False)
    report = sweep(rt, at=_parse_when(args.at) if args.at else None, dry_run=args.dry_run)
    head = "would do" if args.dry_run else "did"
    print(f"sweep at {report.at.isoformat()} {head} {len(report.actions)} thing(s) "
          f"({report.timers_fired} timer(s), {report.promoted} promoted) in {report.seconds * 1000:.1f} ms")
    for action in report.actions:
        print(f"  {action}")
    return 0


def _print_spooled(rt, limit: int = 100) -> None:
    """The signups waiting in the spool for the database (read from disk: shown even while it is down)."""
    spool = spool_of(rt.settings)
    waiting = spool.count()
    if not waiting:
        return
    print(f"spooled signups: {waiting} kept in {spool.directory} while the database was unreachable; "
          "routed when it is back (or `trialflow spool replay`)")
    for n, record in enumerate(spool.records()):
        if n >= limit:
            print(f"  ... and {waiting - limit} more")
            break
        if isinstance(record, SpooledSignup):
            print(f"  {record.id}  received {record.received_at:%Y-%m-%d %H:%M:%S}  {record.signup.get('email')}")
        else:
            print(f"  {record.id}  damaged: {record.reason}; support gets it on the next replay")
    print()


def cmd_spool(args) -> int:
    rt = _runtime()
    if args.action == "replay":
        report = replay(rt)
        print(f"routed {len(report.routed)} spooled signup(s), {len(report.to_support)} kept for support, "
              f"{report.left} left" + (f" ({report.stopped})" if report.stopped else ""))
        for record_id, trial_id, created in report.routed:
            print(f"  {record_id} → {trial_id}{'' if created else ' (already there)'}")
        return 1 if report.left else 0
    _print_spooled(rt, args.limit)
    if not spool_of(rt.settings).count():
        print("no spooled signups")
    return 0


def cmd_outbox(args) -> int:
    rt = _runtime()
    if args.action == "list":
        _print_spooled(rt)
    if args.action == "retry":
        if args.id is None:
            print("usage: trialflow outbox retry ID", file=sys.stderr)
            return 2
        if not retry(rt, args.id):
            print(f"effect {args.id} is not failed or pending (or does not exist)", file=sys.stderr)
            return 1
        print(f"effect {args.id} re-queued")
        return 0
    if args.action == "drain":
        print(json.dumps(build_deliverer(rt).drain_all()))
        return 0
    statuses = ("pending", "delivering", "failed") if args.status == "open" else (args.status,)
    with rt.session_factory() as s:
        rows = s.execute(select(tables.outbox).where(tables.outbox.c.status.in_(statuses))
                         .order_by(tables.outbox.c.id).limit(args.limit)).all()
    if not rows:
        print(f"no {args.status} effects")
    for r in rows:
        summary = redact(r.payload)
        what = summary.get("text") or summary.get("title") or summary.get("template") or summary.get("name") or ""
        print(f"{r.id:>6}  {r.status:<10} {r.kind:<14} attempts={r.attempts:<2} trial={r.trial_id or '-':<20} {str(what)[:70]}")
        if r.last_error:
            print(f"        last error: {r.last_error[:160]}")
    return 0


def cmd_trials(args) -> int:
    rt = _runtime()
    if args.action == "list" and not args.json:
        _print_spooled(rt)
    with rt.session_factory() as s:
        if args.action == "show":
            trial = s.get(Trial, args.trial_id) if args.trial_id else None
            if trial is None:
                print(f"no trial {args.trial_id}", file=sys.stderr)
                return 1
            detail = trial_detail(s, trial)
            if args.json:
                print(json.dumps(detail, indent=2))
            else:
                print_timeline(detail)
            return 0
        stmt = select(Trial).order_by(tables.trials.c.created_at.desc()).limit(args.limit)
        if args.state:
            stmt = stmt.where(tables.trials.c.state == args.state)
        trials = [trial_summary(t) for t in s.scalars(stmt)]
    if args.json:
        print(json.dumps(trials, indent=2))
        return 0
    for t in trials:
        print(f"{t['trial_id']:<20} {t['state']:<20} {t['case'] or '-':<22} {t['email']}")
    return 0


def cmd_reconcile(args) -> int:
    rt = _runtime()
    prepare_database(rt, load_config=False)
    report = run_reconcile(rt)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 0
    print(f"reconcile at {report.at.isoformat()}: {len(report.findings)} finding(s), "
          f"{report.instances_asked} instance(s) asked; nothing was changed")
    for line in report.lines():
        print(f"  {line}")
    return 0


def cmd_demo(args) -> int:
    return run_demo(keep=args.keep)


def cmd_report(args) -> int:
    return cli_report(_runtime(), args)


def cmd_graph(args) -> int:
    return cli_graph(args)


def cmd_license(args) -> int:
    rt = _runtime()
    now = rt.clock.now().isoformat()
    with rt.session_factory() as s, s.begin():
        if not s.execute(tables.kv.update().where(tables.kv.c.key == "license_rotated_at").values(value=now)).rowcount:
            s.execute(tables.kv.insert().values(key="license_rotated_at", value=now))
    print(f"license rotation recorded at {now}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trialflow", description="Cloud-trial workflow orchestrator.")
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="API + delivery + scheduler (migrates the database first)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="bring the database schema up to date").set_defaults(func=cmd_migrate)

    c = sub.add_parser("config", help="reference data")
    c.add_argument("action", choices=["load"])
    c.add_argument("--dir", help="directory with accounts.csv, staff.csv, instances.csv (default TRIALFLOW_CONFIG_DIR)")
    c.add_argument("--from", dest="source", choices=["files", "salesforce"], default="files",
                   help="salesforce: accounts from Salesforce's named and pre-qualified accounts instead of "
                        "accounts.csv (staff.csv and instances.csv still from --dir)")
    c.set_defaults(func=cmd_config_load)

    w = sub.add_parser("sweep", help="run the 15/30-day clock and the queues once")
    w.add_argument("--at", help="sweep as of this ISO-8601 time (default: now)")
    w.add_argument("--dry-run", action="store_true", help="print what would happen; change nothing")
    w.set_defaults(func=cmd_sweep)

    o = sub.add_parser("outbox", help="effects waiting or failed")
    o.add_argument("action", nargs="?", choices=["list", "retry", "drain"], default="list")
    o.add_argument("id", nargs="?", type=int)
    o.add_argument("--status", default="open", choices=["open", "pending", "delivering", "failed", "delivered"])
    o.add_argument("--limit", type=int, default=100)
    o.set_defaults(func=cmd_outbox)

    t = sub.add_parser("trials", help="list or show trials")
    t.add_argument("action", choices=["list", "show"])
    t.add_argument("trial_id", nargs="?")
    t.add_argument("--state")
    t.add_argument("--limit", type=int, default=50)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_trials)

    rc = sub.add_parser("reconcile",
                        help="list where trials, claims, instances, GitHub and the instances' APIs disagree")
    rc.add_argument("--json", action="store_true")
    rc.set_defaults(func=cmd_reconcile)

    sp = sub.add_parser("spool", help="signups kept on disk while the database was unreachable")
    sp.add_argument("action", nargs="?", choices=["list", "replay"], default="list")
    sp.add_argument("--limit", type=int, default=100)
    sp.set_defaults(func=cmd_spool)

    d = sub.add_parser("demo", help="play the seed's story on a throw-away database")
    d.add_argument("--keep", action="store_true", help="keep the demo database and print its path")
    d.set_defaults(func=cmd_demo)

    k = sub.add_parser("worker", help="Celery worker, supervised: replaced when it dies or hangs (needs TRIALFLOW_BROKER_URL)")
    k.add_argument("--concurrency", type=int, default=2)
    k.add_argument("--queues")
    k.add_argument("--name", default="worker", help="this worker's name on the machine (its liveness files)")
    k.add_argument("--check", action="store_true",
                   help="exit 0 if the worker of this --name is alive, 1 if not (a health check)")
    k.add_argument("--no-supervisor", action="store_true",
                   help="run the Celery worker in this process; nothing replaces it if it dies")
    k.set_defaults(func=cmd_worker)
    b = sub.add_parser("beat", help="Celery beat: relay and sweeps on a schedule")
    b.add_argument("--check", action="store_true", help="exit 0 if beat saved its schedule lately, 1 if not")
    b.set_defaults(func=cmd_beat)

    r = sub.add_parser("report", help="the funnel: requests, starts, activation, conversion, time in each step")
    r.add_argument("--json", action="store_true")
    r.add_argument("--weeks", type=int, default=12, help="weekly cohorts to show")
    r.set_defaults(func=cmd_report)

    g = sub.add_parser("graph", help="write the lifecycle diagram from the table the machine runs on")
    g.add_argument("--output", "-o", help="file to write (default: stdout)")
    g.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    g.set_defaults(func=cmd_graph)

    lic = sub.add_parser("license", help="trial license key bookkeeping (the key itself is never stored)")
    lic.add_argument("action", choices=["rotated"])
    lic.set_defaults(func=cmd_license)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json_lines=args.log_json)
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrialflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:  # settings: say what is wrong, never echo the values (tokens, secrets)
        for problem in exc.errors(include_url=False, include_input=False):
            print(f"error: {problem['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        hint = " (run `trialflow migrate` first?)" if "no such table" in reason or "does not exist" in reason else ""
        print(f"error: database: {reason}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
