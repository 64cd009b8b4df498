"""The ``trialflow`` command, on Typer (help with defaults, Rich formatting).

Adding a command: a function decorated with ``@app.command()`` (or ``@<group>.command()`` for a
sub-command such as ``outbox prune``), its options as ``Annotated[..., typer.Option(help=...)]``,
returning an exit code. Import what it needs inside the function: ``trialflow --help`` and every
other command should not pay for the web stack, the database drivers or the provider clients.

Errors: a bad argument exits 2 with one line (``main``); a bad setting prints one line per setting
(``settings_problems``); ``ConfigError`` exits 2, other ``TrialflowError``s 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer

# Typer (0.20 and later) carries its own copy of Click: its usage errors are these classes.
from typer._click import exceptions as usage

from trialflow.domain.lifecycle import STATES

if TYPE_CHECKING:
    from pydantic import ValidationError

    from trialflow.runtime import Runtime

app = typer.Typer(name="trialflow", help="Cloud-trial workflow orchestrator.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
config_app = typer.Typer(help="Reference data: accounts, staff and instances.", no_args_is_help=True)
outbox_app = typer.Typer(help="Effects (Slack messages, GitHub issues, emails) waiting or failed. "
                              "Without a sub-command: list.")
trials_app = typer.Typer(help="List or show trials.", no_args_is_help=True)
spool_app = typer.Typer(help="Signups kept on disk while the database was unreachable. Without a sub-command: list.")
license_app = typer.Typer(help="Trial license key bookkeeping (the key itself is never stored).",
                          no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(outbox_app, name="outbox")
app.add_typer(trials_app, name="trials")
app.add_typer(spool_app, name="spool")
app.add_typer(license_app, name="license")

def _flag(name: str, help: str) -> Any:
    """An on/off option: shown as ``--name`` with its default (off), without a value to give."""
    return typer.Option(name, help=help, show_default="off", metavar="")


OutboxStatusName = Literal["open", "pending", "delivering", "failed", "delivered"]
TrialState = Literal[STATES]  # type: ignore[valid-type]  # the lifecycle's states, named once there

Json = Annotated[bool, _flag("--json", "print JSON instead of text")]
OutboxStatus = Annotated[OutboxStatusName, typer.Option(help="effects in this status (open: pending, delivering or failed)")]
OutboxLimit = Annotated[int, typer.Option(min=1, help="show at most this many effects")]
SpoolLimit = Annotated[int, typer.Option(min=1, help="show at most this many spooled signups")]


def _runtime() -> Runtime:
    from trialflow.runtime import Runtime
    return Runtime()


def _parse_when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO-8601 time (like 2026-03-01T09:00:00Z)",
                                 param_hint="'--at'") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _log() -> logging.Logger:
    return logging.getLogger("trialflow")


def prepare_database(rt: Runtime, load_config: bool = True) -> None:
    """Migrations first, then the reference data from TRIALFLOW_CONFIG_DIR (if it is there)."""
    from trialflow.db.migrate import upgrade
    from trialflow.progress import progress_on_stderr
    from trialflow.services.reference import load_reference_data

    with progress_on_stderr() as progress:
        upgrade(rt.settings.database_url, progress=progress)
    config_dir = Path(rt.settings.config_dir)
    if load_config and not (config_dir / "accounts.csv").exists():
        _log().warning("no reference data at %s (TRIALFLOW_CONFIG_DIR): every signup will go to triage until "
                       "`trialflow config load --dir DIR` is run", config_dir.resolve())
    if load_config and (config_dir / "accounts.csv").exists():
        # With Salesforce the accounts are its own (config load --from salesforce, hourly), not the file's.
        report = load_reference_data(rt.session_factory, config_dir, rt.clock.now(),
                                     keep_accounts=rt.settings.salesforce_configured)
        _log().info("reference data loaded from %s: %s accounts, %s staff, %s instances",
                    config_dir, report.accounts, report.staff, report.instances)
        for w in report.warnings:
            _log().warning(w)
        from trialflow.services.coverage import reassign_from_inactive
        for moved in reassign_from_inactive(rt):
            _log().warning("reassigned: %s", moved.line())


@app.callback()
def _everything(log_json: Annotated[bool, _flag("--log-json", "log one JSON object per line")] = False,
                ) -> None:
    from trialflow.logs import configure_logging
    configure_logging(json_lines=log_json)


@app.command()
def serve(host: Annotated[str, typer.Option(help="address to listen on; anything but loopback needs staff "
                                                 "sign-in or API tokens")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8000) -> int:
    """API + delivery + scheduler (migrates the database first)."""
    import uvicorn

    from trialflow.api.clients import is_loopback_host
    from trialflow.delivery.wiring import start_delivery
    from trialflow.services.spooled_signups import SpoolReplayer
    from workers.tasks import dispatch

    rt = _runtime()
    if not is_loopback_host(host) and not rt.settings.staff_auth_configured:
        print(f"error: refusing to serve on {host}: trial data would be open to anyone who can reach it. "
              "Set staff sign-in (TRIALFLOW_OIDC_ISSUER, TRIALFLOW_OIDC_CLIENT_ID, TRIALFLOW_OIDC_CLIENT_SECRET, "
              "TRIALFLOW_PUBLIC_URL, TRIALFLOW_SESSION_SECRET) and/or machine tokens (TRIALFLOW_API_TOKENS), "
              "or serve on 127.0.0.1.", file=sys.stderr)
        return 2
    if not is_loopback_host(host) and rt.settings.metrics_token is None:
        _log().warning("/metrics answers this machine only: set TRIALFLOW_METRICS_TOKEN for a Prometheus elsewhere")
    prepare_database(rt)
    stop = start_delivery(rt, with_scheduler=True, send_to_workers=dispatch)
    stop_spool = SpoolReplayer(rt).start()  # signups kept on disk while the database was away
    # The API's web stack (FastAPI, Authlib, the docs) costs ~1.5 s to import: only serve pays it.
    from trialflow.api.app import create_app

    web = create_app(rt)
    mode = "Celery via " + rt.settings.broker_url.split("@")[-1] if rt.settings.broker_url else "in-process"
    _log().info("trialflow on http://%s:%s (database %s, delivery %s)", host, port,
                rt.engine.url.render_as_string(hide_password=True), mode)
    try:
        # log_config=None: uvicorn's lines go through our handler (JSON when asked, secrets masked).
        uvicorn.run(web, host=host, port=port, log_level="info", access_log=False, log_config=None)
    finally:
        stop_spool()
        stop()
    return 0


@app.command()
def migrate() -> int:
    """Bring the database schema up to date."""
    prepare_database(_runtime(), load_config=False)
    print("database schema is up to date")
    return 0


@config_app.command("load")
def config_load(directory: Annotated[Path | None, typer.Option(
        "--dir", help="directory with accounts.csv, staff.csv, instances.csv",
        show_default="TRIALFLOW_CONFIG_DIR")] = None,
                source: Annotated[Literal["files", "salesforce"], typer.Option(
        "--from", help="salesforce: the accounts are Salesforce's named and pre-qualified accounts instead of "
                       "accounts.csv (staff.csv and instances.csv still from --dir)")] = "files") -> int:
    """Load accounts, staff and instances from CSV files, or the accounts from Salesforce (all or nothing)."""
    from trialflow.db.migrate import upgrade
    from trialflow.errors import ConfigError, DeliveryError
    from trialflow.progress import progress_on_stderr
    from trialflow.services.crm_accounts import load_from_salesforce
    from trialflow.services.reference import load_reference_data

    rt = _runtime()
    folder = directory or Path(rt.settings.config_dir)
    where = str(folder)
    with progress_on_stderr() as progress:
        upgrade(rt.settings.database_url, progress=progress)
        try:
            if source == "salesforce":
                report, where = load_from_salesforce(rt, folder, progress)
            else:
                report = load_reference_data(rt.session_factory, folder, rt.clock.now(), progress=progress)
        except (ConfigError, DeliveryError) as exc:
            print(f"error: {exc}\nnothing was imported.", file=sys.stderr)
            return 2
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"loaded {report.accounts:,} accounts, {report.staff:,} staff, {report.instances:,} instances "
          f"({report.pool_added} new in the pool) from {where}")
    print(f"accounts: {len(report.added):,} added, {len(report.removed):,} removed, {len(report.changed):,} changed")
    for email in report.away_kept:
        print(f"kept: {email} is away (set with /trial away; staff.csv's away_until is blank)")
    # Open trials of people staff.csv now marks inactive go to the rotation; their new owners are told.
    from trialflow.services.coverage import reassign_from_inactive
    moved = reassign_from_inactive(rt)
    for line in moved:
        print(f"reassigned: {line.line()}")
    if moved:
        print(f"{len(moved)} assignment(s) moved off inactive staff; the new owners were told in Slack")
    return 0


@app.command("sweep")
def sweep_cmd(at: Annotated[str | None, typer.Option(help="sweep as of this ISO-8601 time",
                                                     show_default="now")] = None,
              dry_run: Annotated[bool, _flag("--dry-run", "print what would happen; change nothing")]
              = False) -> int:
    """Run the 15/30-day clock and the queues once."""
    from trialflow.progress import progress_on_stderr
    from trialflow.services.sweep import sweep

    when = _parse_when(at) if at else None
    rt = _runtime()
    prepare_database(rt, load_config=False)
    with progress_on_stderr() as progress:
        report = sweep(rt, at=when, dry_run=dry_run, progress=progress)
    head = "would do" if dry_run else "did"
    print(f"sweep at {report.at.isoformat()} {head} {len(report.actions)} thing(s) "
          f"({report.timers_fired} timer(s), {report.promoted} promoted) in {report.seconds * 1000:.1f} ms")
    for action in report.actions:
        print(f"  {action}")
    return 0


def _print_spooled(rt: Runtime, limit: int = 100) -> None:
    """The signups waiting in the spool for the database (read from disk: shown even while it is down)."""
    from trialflow.services.spooled_signups import spool_of
    from trialflow.spool import SpooledSignup

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


@spool_app.callback(invoke_without_command=True)
def spool(ctx: typer.Context, limit: SpoolLimit = 100) -> int:
    if ctx.invoked_subcommand is None:
        return spool_list(limit)
    return 0


@spool_app.command("list")
def spool_list(limit: SpoolLimit = 100) -> int:
    """Show the spooled signups (read from disk: works while the database is down)."""
    from trialflow.services.spooled_signups import spool_of

    rt = _runtime()
    _print_spooled(rt, limit)
    if not spool_of(rt.settings).count():
        print("no spooled signups")
    return 0


@spool_app.command("replay")
def spool_replay() -> int:
    """Route the spooled signups now; exits 1 if some are left (the database is still away)."""
    from trialflow.services.spooled_signups import replay

    report = replay(_runtime())
    print(f"routed {len(report.routed)} spooled signup(s), {len(report.to_support)} kept for support, "
          f"{report.left} left" + (f" ({report.stopped})" if report.stopped else ""))
    for record_id, trial_id, created in report.routed:
        print(f"  {record_id} → {trial_id}{'' if created else ' (already there)'}")
    return 1 if report.left else 0


@outbox_app.callback(invoke_without_command=True)
def outbox(ctx: typer.Context, status: OutboxStatus = "open", limit: OutboxLimit = 100) -> int:
    if ctx.invoked_subcommand is None:
        return outbox_list(status, limit)
    return 0


@outbox_app.command("list")
def outbox_list(status: OutboxStatus = "open", limit: OutboxLimit = 100) -> int:
    """List effects (and the signups spooled on disk, if any)."""
    from sqlalchemy import select, true

    from trialflow.db import tables
    from trialflow.services.outbox import redact

    rt = _runtime()
    _print_spooled(rt)
    statuses = ("pending", "delivering", "failed") if status == "open" else (status,)
    # Not delivered: read through the partial index of those (ix_outbox_open), not all ever stored.
    open_only = tables.outbox.c.status != "delivered" if status != "delivered" else true()
    with rt.session_factory() as s:
        rows = s.execute(select(tables.outbox).where(tables.outbox.c.status.in_(statuses), open_only)
                         .order_by(tables.outbox.c.id).limit(limit)).all()
    if not rows:
        print(f"no {status} effects")
    for r in rows:
        summary = redact(r.payload)
        what = summary.get("text") or summary.get("title") or summary.get("template") or summary.get("name") or ""
        print(f"{r.id:>6}  {r.status:<10} {r.kind:<14} attempts={r.attempts:<2} trial={r.trial_id or '-':<20} "
              f"{str(what)[:70]}")
        if r.last_error:
            print(f"        last error: {r.last_error[:160]}")
    return 0


@outbox_app.command("retry")
def outbox_retry(effect_id: Annotated[int, typer.Argument(metavar="ID", help="the effect's id (first column "
                                                                               "of `trialflow outbox`)")]) -> int:
    """Queue a failed effect again."""
    from trialflow.delivery.core import retry

    if not retry(_runtime(), effect_id):
        print(f"effect {effect_id} is not failed or pending (or does not exist)", file=sys.stderr)
        return 1
    print(f"effect {effect_id} re-queued")
    return 0


@outbox_app.command("prune")
def outbox_prune(dry_run: Annotated[bool, _flag("--dry-run", "count what would go, by kind; change nothing")] = False,
                 batch: Annotated[int | None, typer.Option(min=1, max=10000, help="rows per transaction",
                                                           show_default="TRIALFLOW_PRUNE_BATCH_SIZE")] = None) -> int:
    """Prune delivered effects past TRIALFLOW_OUTBOX_RETENTION_DAYS now, in batches (the sweep
    prunes a few batches each time); progress on stderr."""
    from trialflow.services.prune import cli_prune
    return cli_prune(_runtime(), dry_run=dry_run, batch=batch)


@outbox_app.command("drain")
def outbox_drain() -> int:
    """Deliver every due effect now, in this process; prints the counts as JSON."""
    from trialflow.delivery.wiring import build_deliverer

    print(json.dumps(build_deliverer(_runtime()).drain_all()))
    return 0


@trials_app.command("list")
def trials_list(state: Annotated[TrialState | None, typer.Option(help="only trials in this state", show_default="any")]
                = None,
                limit: Annotated[int, typer.Option(min=1, help="show at most this many, newest first")] = 50,
                as_json: Json = False) -> int:
    """List trials, newest first (and the signups spooled on disk, if any)."""
    from sqlalchemy import select

    from trialflow.api.serialize import trial_summary
    from trialflow.db import tables
    from trialflow.domain.trial import Trial

    rt = _runtime()
    if not as_json:
        _print_spooled(rt)
    with rt.session_factory() as s:
        stmt = select(Trial).order_by(tables.trials.c.created_at.desc()).limit(limit)
        if state:
            stmt = stmt.where(tables.trials.c.state == state)
        trials = [trial_summary(t) for t in s.scalars(stmt)]
    if as_json:
        print(json.dumps(trials, indent=2))
        return 0
    for t in trials:
        print(f"{t['trial_id']:<20} {t['state']:<20} {t['case'] or '-':<22} {t['email']}")
    return 0


@trials_app.command("show")
def trials_show(trial_id: Annotated[str, typer.Argument(metavar="TRIAL_ID", help="the trial's id")],
                as_json: Json = False) -> int:
    """One trial: its state, people, instance and timeline."""
    from trialflow.api.serialize import trial_detail
    from trialflow.domain.trial import Trial
    from trialflow.timeline import print_timeline

    rt = _runtime()
    with rt.session_factory() as s:
        trial = s.get(Trial, trial_id)
        if trial is None:
            print(f"no trial {trial_id}", file=sys.stderr)
            return 1
        detail = trial_detail(s, trial)
    if as_json:
        print(json.dumps(detail, indent=2))
    else:
        print_timeline(detail)
    return 0


@app.command()
def reconcile(as_json: Json = False) -> int:
    """List where trials, claims, instances, GitHub and the instances' APIs disagree (changes nothing)."""
    from trialflow.delivery.wiring import run_reconcile

    rt = _runtime()
    prepare_database(rt, load_config=False)
    report = run_reconcile(rt)
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
        return 0
    print(f"reconcile at {report.at.isoformat()}: {len(report.findings)} finding(s), "
          f"{report.instances_asked} instance(s) asked; nothing was changed")
    for line in report.lines():
        print(f"  {line}")
    return 0


@app.command()
def demo(keep: Annotated[bool, _flag("--keep", "keep the demo database and print its path")]
         = False) -> int:
    """Play the seed's story on a throw-away database."""
    from trialflow.demo import run_demo
    return run_demo(keep=keep)


@app.command()
def worker(concurrency: Annotated[int, typer.Option(min=1, help="Celery worker processes")] = 2,
           queues: Annotated[str | None, typer.Option(help="comma-separated Celery queues to consume",
                                                      show_default="all of trialflow's")] = None,
           name: Annotated[str, typer.Option(help="this worker's name on the machine (its liveness files)")]
           = "worker",
           check: Annotated[bool, _flag("--check", "exit 0 if the worker of this --name is alive, "
                                                                "1 if not (a health check)")] = False,
           no_supervisor: Annotated[bool, _flag("--no-supervisor", "run the Celery worker in this "
                                                       "process; nothing replaces it if it dies")] = False) -> int:
    """Celery worker, supervised: replaced when it dies or hangs (needs TRIALFLOW_BROKER_URL)."""
    from workers.commands import cmd_worker
    return cmd_worker(argparse.Namespace(concurrency=concurrency, queues=queues, name=name, check=check,
                                         no_supervisor=no_supervisor))


@app.command()
def beat(check: Annotated[bool, _flag("--check", "exit 0 if beat saved its schedule lately, 1 if not")]
         = False) -> int:
    """Celery beat: relay and sweeps on a schedule."""
    from workers.commands import cmd_beat
    return cmd_beat(argparse.Namespace(check=check))


@app.command()
def report(as_json: Json = False,
           weeks: Annotated[int, typer.Option(min=1, max=520, help="weekly cohorts to show")] = 12,
           as_csv: Annotated[bool, _flag("--csv", "CSV: a line per week (and all) of each group")] = False,
           by: Annotated[Literal["source", "case", "ae", "ce", "reason"] | None,
                         typer.Option(help="split by this", show_default="no split")] = None) -> int:
    """The funnel: requests (joiners apart), starts, activation, conversion, time in each step."""
    from trialflow.funnel import cli_report
    return cli_report(_runtime(), argparse.Namespace(json=as_json, weeks=weeks, csv=as_csv, by=by))


@app.command()
def graph(output: Annotated[str | None, typer.Option("--output", "-o", help="file to write",
                                                     show_default="stdout")] = None,
          fmt: Annotated[Literal["mermaid", "dot"], typer.Option("--format", help="diagram language")] = "mermaid") -> int:
    """Write the lifecycle diagram from the table the machine runs on."""
    from trialflow.graph import cli_graph
    return cli_graph(argparse.Namespace(output=output, format=fmt))


@license_app.command("rotated")
def license_rotated() -> int:
    """Record that the trial license key was rotated now."""
    from sqlalchemy import CursorResult

    from trialflow.db import tables

    rt = _runtime()
    now = rt.clock.now().isoformat()
    with rt.session_factory() as s, s.begin():
        updated = s.execute(tables.kv.update().where(tables.kv.c.key == "license_rotated_at").values(value=now))
        if not cast(CursorResult, updated).rowcount:
            s.execute(tables.kv.insert().values(key="license_rotated_at", value=now))
    print(f"license rotation recorded at {now}")
    return 0


@app.command()
def doctor(instance: Annotated[str | None, typer.Option(metavar="HOST", help="the instance whose admin API to try",
                                                       show_default="one from the database")] = None,
           only: Annotated[list[str] | None, typer.Option(metavar="SYSTEM",
                                                          help="check only this system (repeatable): database, "
                                                               "broker, slack, github, smtp, instances, salesforce",
                                                          show_default="all")] = None) -> int:
    """Check every configured system, one line each: ok, or what is wrong and how to fix it.
    Reads only; exits 1 if something configured is broken."""
    from functools import partial

    from trialflow.doctor import CHECKS, Check, check_instance_api, run
    from trialflow.settings import get_settings

    unknown = sorted(set(only or ()) - set(CHECKS))
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)}: the systems are {', '.join(CHECKS)}", param_hint="'--only'")
    checks: dict[str, Check] = {**CHECKS, "instances": partial(check_instance_api, host=instance)} \
        if instance else CHECKS
    findings = run(get_settings(), only, checks)
    for finding in findings:
        print(finding.line())
    broken = [f for f in findings if f.ok is False]
    print(f"\n{len(broken)} problem(s)" if broken else "\nall configured systems answer as trialflow needs")
    return 1 if broken else 0


@app.command("slack-manifest")
def slack_manifest(url: Annotated[str | None, typer.Option(help="where Slack reaches trialflow: an https:// URL",
                                                         show_default="TRIALFLOW_PUBLIC_URL")] = None,
                   name: Annotated[str, typer.Option(help="the app's and its bot's name in Slack")] = "trialflow",
                   ) -> int:
    """Print the Slack app manifest (YAML) for "Create an app → From a manifest": scopes, /trial, App Home."""
    from urllib.parse import urlsplit

    from trialflow.slack_app import manifest, to_yaml

    if url is None:
        from trialflow.settings import get_settings
        url = get_settings().public_url
    if not url:
        raise usage.UsageError("give --url (or set TRIALFLOW_PUBLIC_URL): where Slack reaches trialflow")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise typer.BadParameter(f"{url!r}: Slack sends its requests to https:// URLs only", param_hint="'--url'")
    print(to_yaml(manifest(url, name)))
    return 0


# What each kind of setting expects, by pydantic's error type: said without the value given (it may
# be a token or a secret).
_EXPECTS = {
    "int_parsing": "a whole number", "int_from_float": "a whole number", "float_parsing": "a number",
    "bool_parsing": "true or false", "path_type": "a path", "string_type": "text", "url_parsing": "a URL",
    "greater_than_equal": "a number ≥ {ge}", "greater_than": "a number > {gt}",
    "less_than_equal": "a number ≤ {le}", "less_than": "a number < {lt}",
}


def settings_problems(exc: ValidationError) -> list[str]:
    """One line per wrong setting, naming its environment variable and what it expects."""
    lines = []
    for problem in exc.errors(include_url=False, include_input=False):
        message = problem["msg"].removeprefix("Value error, ")
        field = str(problem["loc"][0]) if problem["loc"] else ""
        if not field:  # a check across settings: its message names them
            lines.append(message)
            continue
        expects = _EXPECTS.get(problem["type"])
        said = expects.format(**problem.get("ctx", {})) if expects else message[:1].lower() + message[1:]
        variable = f"TRIALFLOW_{field.upper()}"
        lines.append(message if variable in message else f"{variable} expects {said}")
    return lines


def resolve(argv: list[str]) -> tuple[str, dict]:
    """The command ``argv`` names (``"trialflow worker"``) and the options it would be given, without
    running it; a usage error raises as it would on the command line (compose's commands are checked so)."""
    ctx = typer.main.get_command(app).make_context("trialflow", list(argv))
    while ctx._protected_args or ctx.args:
        name, sub, rest = ctx.command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])  # type: ignore[attr-defined]
        ctx = sub.make_context(name, rest, parent=ctx)
    return ctx.command_path, dict(ctx.params)


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="trialflow", standalone_mode=False)
    except usage.NoArgsIsHelpError as exc:
        text = exc.ctx.get_help() if exc.ctx else exc.format_message()  # Rich prints it itself: ""
        if text.strip():
            print(text, file=sys.stderr)
        return 2
    except usage.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "trialflow"
        reason = exc.format_message().replace("Value error, ", "")
        print(f"error: {reason} (see `{where} --help`)", file=sys.stderr)
        return 2
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - explained below, or raised again
        return _explain(exc)
    return code if isinstance(code, int) else 0


def _explain(exc: Exception) -> int:
    """A known failure in a line or two and its exit code; anything else is raised again.
    (Imported here: pydantic and SQLAlchemy cost ~0.7 s, which ``--help`` need not pay.)"""
    from pydantic import ValidationError
    from sqlalchemy.exc import DBAPIError

    from trialflow.errors import ConfigError, TrialflowError

    if isinstance(exc, ValidationError):  # settings: say what is wrong, never echo the values (tokens, secrets)
        for line in settings_problems(exc):
            print(f"error: {line}", file=sys.stderr)
        return 2
    if isinstance(exc, DBAPIError):
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        hint = " (run `trialflow migrate` first?)" if "no such table" in reason or "does not exist" in reason else ""
        print(f"error: database: {reason}{hint}", file=sys.stderr)
        return 1
    if isinstance(exc, (ConfigError, ValueError)):
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, TrialflowError):
        print(f"error: {exc}", file=sys.stderr)
        return 1
    raise exc


if __name__ == "__main__":
    sys.exit(main())
