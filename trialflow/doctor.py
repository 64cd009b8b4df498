"""``trialflow doctor``: is every system trialflow is configured for reachable, and does it answer
as trialflow needs? One line for each thing checked: ok, or what is wrong and how to fix it.

It reads and never writes: no message is posted, no issue opened, no mail sent, no migration run,
no file created (a SQLite database is opened read-only, and only if it exists).

``CHECKS`` is the registry: one function per system, taking the settings and returning its
findings (an empty list: not configured, said as such). A new system is one function and one
line in ``CHECKS``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trialflow.settings import Settings

TIMEOUT_SECONDS = 10
WORKER_PING_SECONDS = 2.0  # Celery's ping waits this long for every answer, always


@dataclass(frozen=True)
class Finding:
    system: str
    ok: bool | None          # None: not configured (not a failure)
    text: str

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "-   "}[self.ok]
        return f"{mark}  {self.system:<10} {self.text}"


def ok(system: str, text: str) -> Finding:
    return Finding(system, True, text)


def broken(system: str, text: str) -> Finding:
    return Finding(system, False, text)


def not_configured(system: str, text: str) -> Finding:
    return Finding(system, None, text)


def _reason(exc: BaseException) -> str:
    """The cause in a few words: the OS's own ("[Errno 111] Connection refused") when it is in there."""
    text = str(getattr(exc, "reason", None) or exc).strip()
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return errno.group(0).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# --- the database ---------------------------------------------------------------------------------

def check_database(settings: Settings) -> list[Finding]:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from trialflow.db.engine import normalize_url
    from trialflow.db.migrate import head_revisions

    url = make_url(normalize_url(settings.database_url))
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if not url.database or url.database == ":memory:":
            return [broken("database", f"{shown} is in memory: set TRIALFLOW_DATABASE_URL to a file or PostgreSQL")]
        if not path.is_file():
            return [broken("database", f"no database at {path}: run `trialflow migrate` (or set "
                                       "TRIALFLOW_DATABASE_URL / TRIALFLOW_DATA_DIR to where it is)")]
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    else:
        engine = create_engine(url, connect_args={"connect_timeout": TIMEOUT_SECONDS})
    try:
        from alembic.runtime.migration import MigrationContext
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return [broken("database", f"{shown}: cannot connect ({reason}): check TRIALFLOW_DATABASE_URL "
                                   "and that the server is up")]
    finally:
        engine.dispose()
    heads = set(head_revisions())
    if current == heads:
        return [ok("database", f"{shown}, migrations at head ({', '.join(sorted(heads))})")]
    if not current:
        return [broken("database", f"{shown} has no trialflow tables yet: run `trialflow migrate`")]
    return [broken("database", f"{shown} is at migration {', '.join(sorted(current))}, not at head "
                               f"{', '.join(sorted(heads))}: run `trialflow migrate`")]


# --- the broker and a worker ----------------------------------------------------------------------

def check_broker(settings: Settings) -> list[Finding]:
    if not settings.broker_url:
        return [not_configured("broker", "TRIALFLOW_BROKER_URL unset: effects are delivered inside `trialflow "
                                         "serve` (no worker needed)")]
    import redis

    where = settings.broker_url.split("@")[-1]
    try:
        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=TIMEOUT_SECONDS,
                             socket_timeout=TIMEOUT_SECONDS).ping()
    except redis.RedisError as exc:
        return [broken("broker", f"Redis at {where} does not answer ({_reason(exc)}): check TRIALFLOW_BROKER_URL "
                                 "and that Redis is up")]
    from workers.celery_app import make_celery_app

    app = make_celery_app(settings.broker_url)
    try:
        replies = app.control.ping(timeout=WORKER_PING_SECONDS) or []
    finally:
        app.close()
    found = [ok("broker", f"Redis at {where} answers")]
    if not replies:
        return [*found, broken("worker", f"no worker answered a ping within {WORKER_PING_SECONDS:g} s: start "
                                         "`trialflow worker` (compose: the worker service) with the same "
                                         "TRIALFLOW_BROKER_URL")]
    names = sorted(name for reply in replies for name in reply)
    return [*found, ok("worker", f"{len(names)} worker(s) answered: {', '.join(names)}")]


# --- Slack ----------------------------------------------------------------------------------------

def check_slack(settings: Settings) -> list[Finding]:
    if settings.slack_bot_token is None:
        return [not_configured("slack", "TRIALFLOW_SLACK_BOT_TOKEN unset: Slack messages are dry-run (logged)")]
    from slack_sdk.errors import SlackApiError, SlackClientError

    from trialflow.delivery.slack import SlackTransport, _channel_name
    from trialflow.slack_app import needed_scopes

    transport = SlackTransport(settings)
    client = transport.client
    client.timeout = TIMEOUT_SECONDS
    # slack_sdk logs each failed request at ERROR; the finding below says it once, with the fix.
    logging.getLogger("slack_sdk.web.base_client").setLevel(logging.CRITICAL)
    try:
        me = client.auth_test()
    except SlackApiError as exc:
        error = exc.response.get("error") if exc.response is not None else None
        fix = ("the token is wrong or revoked: copy the Bot User OAuth Token (xoxb-…) from the app's OAuth & "
               "Permissions page into TRIALFLOW_SLACK_BOT_TOKEN") if error in (
            "invalid_auth", "not_authed", "token_revoked", "account_inactive", "token_expired") else \
            "see Slack's auth.test errors"
        return [broken("slack", f"auth.test refused: {error}: {fix}")]
    except (SlackClientError, OSError) as exc:
        return [broken("slack", f"cannot reach Slack at {settings.slack_api_url} ({_reason(exc)}): check "
                                "TRIALFLOW_SLACK_API_URL and the network")]
    findings = [ok("slack", f"signed in as {me.get('user')} in {me.get('team')}")]
    if settings.slack_signing_secret is None:
        findings.append(broken("slack", "TRIALFLOW_SLACK_SIGNING_SECRET unset: every button click and /trial is "
                                        "refused; copy the Signing Secret from the app's Basic Information page"))
    granted_header = {k.lower(): v for k, v in (me.headers or {}).items()}.get("x-oauth-scopes")
    granted_text = granted_header[0] if isinstance(granted_header, list) else granted_header
    if granted_text is None:
        findings.append(broken("slack", "Slack did not say which scopes the token has (no x-oauth-scopes "
                                        "header): is TRIALFLOW_SLACK_API_URL Slack's API?"))
    else:
        granted = {s.strip() for s in granted_text.split(",") if s.strip()}
        missing = [s for s in needed_scopes() if s not in granted]
        findings.append(ok("slack", f"the token has the {len(needed_scopes())} scopes trialflow needs") if not missing
                        else broken("slack", f"the token lacks the scope(s) {', '.join(missing)}: add them under "
                                             "OAuth & Permissions → Bot Token Scopes (or create the app from "
                                             "`trialflow slack-manifest`) and reinstall the app"))
    findings.append(_alerts_channel(settings, transport, _channel_name(settings.alerts_channel), SlackApiError))
    return findings


def _alerts_channel(settings: Settings, transport: Any, name: str, api_error: type[Exception]) -> Finding:
    try:
        channel = transport.find_channel(name)
    except api_error as exc:
        answer = getattr(exc, "response", None)
        error = answer.get("error") if answer is not None else str(exc)
        return broken("slack", f"cannot list channels to find #{name} ({error})")
    if channel is None:
        return broken("slack", f"#{name} (TRIALFLOW_ALERTS_CHANNEL) does not exist or is private without the bot: "
                               f"create it, or /invite the bot to it")
    if channel.get("is_archived"):
        return broken("slack", f"#{name} is archived: unarchive it or set TRIALFLOW_ALERTS_CHANNEL to another")
    if not channel.get("is_member") and channel.get("is_private"):
        return broken("slack", f"the bot is not in the private channel #{name}: /invite it there")
    joins = "" if channel.get("is_member") else " (the bot joins it on the first alert)"
    return ok("slack", f"alerts channel #{name} reachable{joins}")


# --- GitHub ---------------------------------------------------------------------------------------

WEBHOOK_PATH = "/github/webhooks"
WEBHOOK_EVENTS = ("issue_comment", "issues")


def check_github(settings: Settings) -> list[Finding]:
    if settings.github_token is None:
        return [not_configured("github", "TRIALFLOW_GITHUB_TOKEN unset: issues for the cloud team are dry-run")]
    import requests
    from github import GithubException

    from trialflow.delivery.github import GitHubTransport

    client = GitHubTransport(settings, seconds_between_writes=0).client
    repo_name = settings.github_repo or ""
    try:
        repo = client.get_repo(repo_name)
        permissions = repo.permissions
        has_issues = repo.has_issues
    except GithubException as exc:
        if exc.status == 401:
            return [broken("github", "the token is wrong or expired (401): set TRIALFLOW_GITHUB_TOKEN to a token "
                                     f"with access to {repo_name}")]
        if exc.status == 404:
            return [broken("github", f"{repo_name} is not visible to this token (404): check TRIALFLOW_GITHUB_REPO, "
                                     "and give the token access to the repository")]
        return [broken("github", f"{repo_name}: GitHub answered {exc.status}: {_github_message(exc)}")]
    except (requests.RequestException, OSError) as exc:
        return [broken("github", f"cannot reach GitHub at {settings.github_api_url} ({_reason(exc)}): check "
                                 "TRIALFLOW_GITHUB_API_URL and the network")]
    if not has_issues:
        findings = [broken("github", f"{repo_name} has issues turned off: turn them on in the repository's settings")]
    elif permissions is None or not (permissions.push or permissions.triage or permissions.maintain
                                     or permissions.admin):
        findings = [broken("github", f"the token may read {repo_name} but not label and assign its issues: give it "
                                     "triage (or write) access, or Issues: read and write on a fine-grained token")]
    else:
        findings = [ok("github", f"the token can open and label issues in {repo_name}")]
    findings.append(_webhook(settings, repo, GithubException))
    return findings


def _webhook(settings: Settings, repo: Any, api_error: type[Exception]) -> Finding:
    if settings.github_webhook_secret is None:
        return broken("github", "TRIALFLOW_GITHUB_WEBHOOK_SECRET unset: GitHub's webhook deliveries (instance ready, "
                                "comments) are refused: set it to the webhook's secret")
    want = settings.public_url.rstrip("/") + WEBHOOK_PATH if settings.public_url else None
    try:
        hooks = [{**hook.config, "_events": hook.events} for hook in repo.get_hooks() if hook.active]
    except api_error as exc:
        status = getattr(exc, "status", "?")
        return ok("github", f"webhook not checked: the token may not read {repo.full_name}'s webhooks ({status}; "
                            f"that takes admin access). Check in its Settings → Webhooks that one posts to "
                            f"{want or '<TRIALFLOW_PUBLIC_URL>' + WEBHOOK_PATH}")
    ours = [c for c in hooks if (c.get("url") == want if want else urlsplit(c.get("url", "")).path == WEBHOOK_PATH)]
    if not ours:
        where = want or f"<TRIALFLOW_PUBLIC_URL>{WEBHOOK_PATH}"
        return broken("github", f"no active webhook of {repo.full_name} posts to {where}: add one (content type "
                                f"application/json, the secret of TRIALFLOW_GITHUB_WEBHOOK_SECRET, events: "
                                f"{', '.join(WEBHOOK_EVENTS)})")
    config = ours[0]
    if config.get("content_type") != "json":
        return broken("github", f"the webhook to {config.get('url')} sends form data: set its content type to "
                                "application/json")
    hook_events = set(config.get("_events") or ())
    missing = [e for e in WEBHOOK_EVENTS if e not in hook_events and "*" not in hook_events]
    if missing:
        return broken("github", f"the webhook to {config.get('url')} is not sent {', '.join(missing)} events: tick "
                                "Issues and Issue comments in its settings")
    return ok("github", f"the webhook posts to {config.get('url')}")


def _github_message(exc: Any) -> str:
    data = exc.data if isinstance(getattr(exc, "data", None), dict) else {}
    return str(data.get("message") or exc)


# --- email ----------------------------------------------------------------------------------------

def check_smtp(settings: Settings) -> list[Finding]:
    if not settings.smtp_url:
        return [not_configured("smtp", "TRIALFLOW_SMTP_URL unset: emails are dry-run (logged)")]
    import smtplib
    import ssl

    from trialflow.delivery.email import SmtpUrl, connect
    from trialflow.errors import PermanentFailure

    server = SmtpUrl(settings.smtp_url)
    try:
        with connect(server, timeout=TIMEOUT_SECONDS) as smtp:
            smtp.noop()
            tls = isinstance(smtp.sock, ssl.SSLSocket)
    except smtplib.SMTPAuthenticationError as exc:
        return [broken("smtp", f"{server} refused the login ({exc.smtp_code}): check the user and password in "
                               "TRIALFLOW_SMTP_URL (URL-encode special characters)")]
    except (smtplib.SMTPException, PermanentFailure) as exc:
        return [broken("smtp", f"{server}: {_reason(exc)}")]
    except OSError as exc:
        return [broken("smtp", f"cannot reach {server} ({_reason(exc)}): check TRIALFLOW_SMTP_URL's host and port, "
                               "and that TLS is trusted (SSL_CERT_FILE)")]
    how = "TLS" if tls else "no TLS (mail crosses the network in clear)"
    who = f", logged in as {server.username}" if server.username else ""
    return [ok("smtp", f"{server} answers, {how}{who}")]


# --- the trial instances' admin API ---------------------------------------------------------------

def check_instance_api(settings: Settings, host: str | None = None) -> list[Finding]:
    if settings.instance_token is None and not settings.instance_tokens:
        return [not_configured("instances", "TRIALFLOW_INSTANCE_TOKEN unset: instance accounts and usage are "
                                            "dry-run (the cloud team is asked instead)")]
    host = host or _an_instance(settings)
    if host is None:
        return [broken("instances", "no instance to try: load instances.csv (`trialflow config load`) or give "
                                    "`trialflow doctor --instance HOST`")]
    if settings.instance_token_for(host) is None:
        return [broken("instances", f"no token for {host}: add it to TRIALFLOW_INSTANCE_TOKENS_FILE or set "
                                    "TRIALFLOW_INSTANCE_TOKEN")]
    from trialflow.delivery.sourcegraph import SourcegraphAdmin
    from trialflow.errors import DeliveryError

    admin = SourcegraphAdmin(settings)
    try:
        site = admin.site(host)
    except DeliveryError as exc:
        return [broken("instances", f"{host}: {exc}")]
    finally:
        admin.close()
    if not site.site_admin:
        return [broken("instances", f"{host}: the automation account {site.username} is not a site admin: make it one "
                                    "(Site admin → Users)")]
    return [ok("instances", f"{host} (Sourcegraph {site.version or '?'}): the automation account {site.username} "
                            "is a site admin")]


def _an_instance(settings: Settings) -> str | None:
    """One instance trialflow knows (a live one first), read from the database; None if it cannot tell."""
    from sqlalchemy import case, create_engine, select
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from trialflow.db import tables
    from trialflow.db.engine import normalize_url

    url = make_url(normalize_url(settings.database_url))
    if url.get_backend_name() == "sqlite":
        if not url.database or not Path(url.database).is_file():
            return None
        url = make_url(f"sqlite:///file:{url.database}?mode=ro&uri=true")
    engine = create_engine(url)
    t = tables.instances
    try:
        with engine.connect() as conn:
            return conn.scalar(select(t.c.host).where(t.c.status.in_(("live", "pool")))
                               .order_by(case((t.c.status == "live", 0), else_=1), t.c.host).limit(1))
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


# --- Salesforce -----------------------------------------------------------------------------------

def check_salesforce(settings: Settings) -> list[Finding]:
    """A JWT login and one query (``trialflow.crm.salesforce.check``): reads only."""
    if not settings.salesforce_configured:
        return [not_configured("salesforce", "TRIALFLOW_SALESFORCE_CLIENT_ID unset: accounts come from accounts.csv "
                                             "and opportunities are kept on the trial")]
    from trialflow.crm.salesforce import check

    result = check(settings)
    return [ok("salesforce", result.detail) if result.ok else broken("salesforce", result.detail)]


# --- the registry ---------------------------------------------------------------------------------

Check = Callable[[Settings], list[Finding]]

CHECKS: dict[str, Check] = {
    "database": check_database,
    "broker": check_broker,
    "slack": check_slack,
    "github": check_github,
    "smtp": check_smtp,
    "instances": check_instance_api,
    "salesforce": check_salesforce,
}


def run(settings: Settings, only: list[str] | None = None, checks: dict[str, Check] | None = None) -> list[Finding]:
    findings: list[Finding] = []
    for name, check in (checks or CHECKS).items():
        if only and name not in only:
            continue
        try:
            findings.extend(check(settings))
        except Exception as exc:  # noqa: BLE001 - one system's surprise must not hide the others' lines
            findings.append(broken(name, f"the check itself failed: {_reason(exc)}"))
    return findings
