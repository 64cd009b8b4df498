"""`trialflow doctor` against the local servers: each system working, and broken the ways an
operator breaks it (a wrong token, a missing scope or permission, an unreachable host), each
said in one line with the fix; and a deployment configured as the README says, all green."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.support.processes import TrialflowProcess, trialflow_env
from tests.support.smtp import SmtpServer
from trialflow import doctor
from trialflow.clock import SystemClock
from trialflow.db.migrate import upgrade
from trialflow.runtime import Runtime
from trialflow.services.reference import load_reference_data

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_URL = "https://trialflow.example.com"
HOOK_SECRET = "webhook-secret-for-the-doctor-tests-0123"


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lines(findings: list[doctor.Finding]) -> list[tuple[str, bool | None, str]]:
    return [(f.system, f.ok, f.text) for f in findings]


def only_line(findings: list[doctor.Finding], ok: bool | None) -> str:
    """The one line a check gave, asserting it is ``ok`` (and one line, shown as one line)."""
    assert len(findings) >= 1
    assert all("\n" not in f.line() for f in findings)
    wrong = [f for f in findings if f.ok is not ok]
    assert wrong == [] or ok is True and all(f.ok for f in findings), lines(findings)
    return " | ".join(f.text for f in findings)


@pytest.fixture
def sqlite(tmp_path, sqlite_template) -> str:
    target = tmp_path / "trialflow.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


# --- the database ----------------------------------------------------------------------------------

def test_a_migrated_database_is_ok_and_the_check_writes_nothing(sqlite, config_dir):
    path = Path(sqlite.removeprefix("sqlite:///"))
    before = path.read_bytes()
    text = only_line(doctor.check_database(make_settings(sqlite, config_dir)), ok=True)
    assert "migrations at head" in text
    # Opened read-only: the file is byte for byte the same (SQLite's -shm index of a WAL aside).
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def test_a_missing_database_is_not_created_and_says_run_migrate(tmp_path, config_dir):
    missing = tmp_path / "nowhere" / "trialflow.db"
    text = only_line(doctor.check_database(make_settings(f"sqlite:///{missing}", config_dir)), ok=False)
    assert "run `trialflow migrate`" in text
    assert not missing.parent.exists()


def test_a_database_behind_its_migrations_says_run_migrate(tmp_path, config_dir):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0004")
    text = only_line(doctor.check_database(make_settings(url, config_dir)), ok=False)
    assert "is at migration 0004, not at head" in text and "run `trialflow migrate`" in text


def test_an_unreachable_database_server_is_named(config_dir):
    url = f"postgresql+psycopg://trialflow:secret-pw@127.0.0.1:{closed_port()}/trialflow"
    text = only_line(doctor.check_database(make_settings(url, config_dir)), ok=False)
    assert "cannot connect" in text and "secret-pw" not in text


# --- Slack -----------------------------------------------------------------------------------------

SIGNING_SECRET = "slack-signing-secret-for-the-doctor-tests"


def slack_settings(sqlite, config_dir, slack, **extra):
    return make_settings(sqlite, config_dir, **{**slack.settings(), "slack_signing_secret": SIGNING_SECRET, **extra})


def test_slack_working(fake_slack, sqlite, config_dir):
    text = only_line(doctor.check_slack(slack_settings(sqlite, config_dir, fake_slack)), ok=True)
    assert "signed in as trialflow in Acme Cloud" in text
    assert "#cloud-trial-alerts reachable" in text
    assert [r.method for r in fake_slack.requests] == ["auth.test", "conversations.list"]  # reads only


def test_slack_with_a_wrong_token(fake_slack, sqlite, config_dir):
    settings = slack_settings(sqlite, config_dir, fake_slack, slack_bot_token="xoxb-not-the-one")
    text = only_line(doctor.check_slack(settings), ok=False)
    assert text.startswith("auth.test refused: invalid_auth") and "TRIALFLOW_SLACK_BOT_TOKEN" in text


def test_slack_with_a_missing_scope_names_it(fake_slack, sqlite, config_dir):
    fake_slack.scopes -= {"users:read.email", "channels:join"}
    findings = doctor.check_slack(slack_settings(sqlite, config_dir, fake_slack))
    scope_line = [f for f in findings if "scope" in f.text]
    assert [f.ok for f in scope_line] == [False]
    assert "lacks the scope(s) channels:join, users:read.email" in scope_line[0].text
    assert "reinstall the app" in scope_line[0].text


def test_slack_unreachable(sqlite, config_dir):
    settings = make_settings(sqlite, config_dir, slack_api_url=f"http://127.0.0.1:{closed_port()}/api/",
                             slack_bot_token="xoxb-1111-2222-trialflowtests")
    text = only_line(doctor.check_slack(settings), ok=False)
    assert "cannot reach Slack" in text and "Connection refused" in text


@pytest.mark.parametrize("arrange, says", [
    (lambda slack: slack.channels.clear(), "does not exist or is private without the bot"),
    (lambda slack: slack.channel_named("cloud-trial-alerts").__setattr__("is_archived", True), "is archived"),
])
def test_slack_alerts_channel_unreachable(fake_slack, sqlite, config_dir, arrange, says):
    arrange(fake_slack)
    findings = doctor.check_slack(slack_settings(sqlite, config_dir, fake_slack))
    assert [f.ok for f in findings] == [True, True, False]
    assert says in findings[-1].text


def test_slack_without_its_signing_secret(fake_slack, sqlite, config_dir):
    findings = doctor.check_slack(make_settings(sqlite, config_dir, **fake_slack.settings()))
    assert [f.ok for f in findings] == [True, False, True, True]
    assert "TRIALFLOW_SLACK_SIGNING_SECRET unset" in findings[1].text


# --- GitHub ----------------------------------------------------------------------------------------

def github_settings(sqlite, config_dir, github, **extra):
    values = dict(github.settings(), github_webhook_secret=HOOK_SECRET, public_url=PUBLIC_URL)
    values.update(extra)
    return make_settings(sqlite, config_dir, **values)


def test_github_working_with_its_webhook(fake_github, sqlite, config_dir):
    fake_github.permissions["admin"] = True
    fake_github.add_hook(PUBLIC_URL + "/github/webhooks")
    text = only_line(doctor.check_github(github_settings(sqlite, config_dir, fake_github)), ok=True)
    assert "can open and label issues in acme-cloud/cloud-trials" in text
    assert f"the webhook posts to {PUBLIC_URL}/github/webhooks" in text
    assert {r.method for r in fake_github.requests} == {"GET"}  # reads only


def test_github_without_admin_the_webhook_is_left_to_the_operator(fake_github, sqlite, config_dir):
    text = only_line(doctor.check_github(github_settings(sqlite, config_dir, fake_github)), ok=True)
    assert "webhook not checked" in text and f"{PUBLIC_URL}/github/webhooks" in text


def test_github_with_a_wrong_token(fake_github, sqlite, config_dir):
    settings = github_settings(sqlite, config_dir, fake_github, github_token="ghp_wrongwrongwrong")
    text = only_line(doctor.check_github(settings), ok=False)
    assert "wrong or expired (401)" in text


def test_github_a_token_that_may_only_read_cannot_open_labelled_issues(fake_github, sqlite, config_dir):
    fake_github.permissions.update(push=False, triage=False)
    findings = doctor.check_github(github_settings(sqlite, config_dir, fake_github))
    assert findings[0].ok is False and "give it triage (or write) access" in findings[0].text


def test_github_a_repository_the_token_cannot_see(fake_github, sqlite, config_dir):
    settings = github_settings(sqlite, config_dir, fake_github, github_repo="acme-cloud/elsewhere")
    assert "not visible to this token (404)" in only_line(doctor.check_github(settings), ok=False)


def test_github_a_webhook_elsewhere_or_none(fake_github, sqlite, config_dir):
    fake_github.permissions["admin"] = True
    fake_github.add_hook("https://old-host.example.com/github/webhooks")
    findings = doctor.check_github(github_settings(sqlite, config_dir, fake_github))
    assert [f.ok for f in findings] == [True, False]
    assert f"no active webhook of acme-cloud/cloud-trials posts to {PUBLIC_URL}/github/webhooks" in findings[1].text
    fake_github.hooks.clear()
    fake_github.add_hook(PUBLIC_URL + "/github/webhooks", events=("push",))
    wrong_events = doctor.check_github(github_settings(sqlite, config_dir, fake_github))
    assert wrong_events[1].ok is False and "not sent issue_comment, issues events" in wrong_events[1].text
    no_secret = doctor.check_github(github_settings(sqlite, config_dir, fake_github, github_webhook_secret=None))
    assert no_secret[1].ok is False and "TRIALFLOW_GITHUB_WEBHOOK_SECRET unset" in no_secret[1].text


def test_github_unreachable(sqlite, config_dir):
    settings = make_settings(sqlite, config_dir, github_token="ghp_trialflowTestToken0000000000000000",
                             github_repo="acme-cloud/cloud-trials", github_api_url=f"http://127.0.0.1:{closed_port()}")
    text = only_line(doctor.check_github(settings), ok=False)
    assert "cannot reach GitHub" in text and "Connection refused" in text


# --- SMTP ------------------------------------------------------------------------------------------

def test_smtp_working_over_starttls_with_a_login_and_nothing_sent(tmp_path, sqlite, config_dir, monkeypatch):
    with SmtpServer(starttls=True, credentials=("trialflow", "mail-pass-0042"), cert_dir=tmp_path) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        text = only_line(doctor.check_smtp(make_settings(sqlite, config_dir, smtp_url=server.url)), ok=True)
        assert "answers, TLS, logged in as trialflow" in text
        assert server.messages == [] and server.logins == [{"login": "trialflow", "tls": True}]


def test_smtp_with_a_wrong_password(tmp_path, sqlite, config_dir, monkeypatch):
    with SmtpServer(starttls=True, credentials=("trialflow", "mail-pass-0042"), cert_dir=tmp_path) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        url = server.url.replace("mail-pass-0042", "guessed")
        text = only_line(doctor.check_smtp(make_settings(sqlite, config_dir, smtp_url=url)), ok=False)
        assert "refused the login (535)" in text and "guessed" not in text


def test_smtp_without_tls_credentials_are_not_sent(sqlite, config_dir):
    with SmtpServer(credentials=("trialflow", "mail-pass-0042")) as server:
        text = only_line(doctor.check_smtp(make_settings(sqlite, config_dir, smtp_url=server.url)), ok=False)
        assert "offers no STARTTLS" in text and server.logins == []


def test_smtp_unreachable(sqlite, config_dir):
    settings = make_settings(sqlite, config_dir, smtp_url=f"smtp://127.0.0.1:{closed_port()}")
    text = only_line(doctor.check_smtp(settings), ok=False)
    assert "cannot reach smtp://127.0.0.1" in text and "Connection refused" in text


# --- the instances' admin API ----------------------------------------------------------------------

def load_config(url: str, config_dir: Path) -> None:
    upgrade(url)
    rt = Runtime(make_settings(url, config_dir))
    try:
        load_reference_data(rt.session_factory, config_dir, SystemClock().now())
    finally:
        rt.close()


@pytest.fixture
def with_instances(sqlite, config_dir):
    load_config(sqlite, config_dir)
    return sqlite


def test_instance_api_working_on_a_live_instance(fake_sourcegraph, with_instances, config_dir):
    text = only_line(doctor.check_instance_api(make_settings(with_instances, config_dir,
                                                             **fake_sourcegraph.settings())), ok=True)
    assert text.startswith("initech.sourcegraph.com (Sourcegraph")
    assert "trialflow-automation is a site admin" in text
    assert fake_sourcegraph.operations() == ["SiteHealth"]


def test_instance_api_with_a_wrong_token(fake_sourcegraph, with_instances, config_dir):
    fake_sourcegraph.revoke("initech.sourcegraph.com")
    text = only_line(doctor.check_instance_api(make_settings(with_instances, config_dir,
                                                             **fake_sourcegraph.settings())), ok=False)
    assert "TRIALFLOW_INSTANCE_TOKEN" in text and fake_sourcegraph.token not in text


def test_instance_api_an_account_that_is_not_site_admin(fake_sourcegraph, with_instances, config_dir):
    fake_sourcegraph.instance("pool-a.sourcegraph.com").users[0].site_admin = False
    text = only_line(doctor.check_instance_api(make_settings(with_instances, config_dir,
                                                             **fake_sourcegraph.settings()),
                                               host="pool-a.sourcegraph.com"), ok=False)
    assert "is not a site admin" in text


def test_instance_api_unreachable(with_instances, config_dir):
    settings = make_settings(with_instances, config_dir, instance_token="sgp_trialflowFakeToken0123456789abcdef",
                             instance_api_url=f"http://127.0.0.1:{closed_port()}/{{host}}/.api/graphql")
    text = only_line(doctor.check_instance_api(settings), ok=False)
    assert text.startswith("initech.sourcegraph.com:")


def test_instance_api_without_an_instance_to_try(fake_sourcegraph, sqlite, config_dir):
    text = only_line(doctor.check_instance_api(make_settings(sqlite, config_dir, **fake_sourcegraph.settings())),
                     ok=False)
    assert "no instance to try" in text


# --- the broker ------------------------------------------------------------------------------------

def test_an_unreachable_broker(sqlite, config_dir):
    settings = make_settings(sqlite, config_dir, broker_url=f"redis://127.0.0.1:{closed_port()}/0")
    text = only_line(doctor.check_broker(settings), ok=False)
    assert "does not answer" in text and "Connection refused" in text


@pytest.mark.redis
def test_redis_without_a_worker(redis_url, sqlite, config_dir):
    findings = doctor.check_broker(make_settings(sqlite, config_dir, broker_url=redis_url))
    assert [(f.system, f.ok) for f in findings] == [("broker", True), ("worker", False)]
    assert "start `trialflow worker`" in findings[1].text


# --- the registry and the command ------------------------------------------------------------------

def test_nothing_configured_is_said_plainly_and_is_no_failure(sqlite, config_dir):
    findings = doctor.run(make_settings(sqlite, config_dir))
    assert [f.system for f in findings] == ["database", "broker", "slack", "github", "smtp", "instances",
                                            "salesforce"]
    assert [f.ok for f in findings] == [True, None, None, None, None, None, None]


def test_one_system_s_surprise_does_not_hide_the_others(sqlite, config_dir):
    def exploding(settings):
        raise RuntimeError("boom")
    findings = doctor.run(make_settings(sqlite, config_dir), checks={"crm": exploding, **doctor.CHECKS})
    assert lines(findings)[0] == ("crm", False, "the check itself failed: RuntimeError: boom")
    assert len(findings) == 1 + len(doctor.CHECKS)


@pytest.mark.redis
@pytest.mark.celery
def test_a_team_deployment_as_the_readme_says_is_all_green(tmp_path, redis_url, fake_slack, fake_github,
                                                           fake_sourcegraph, fake_salesforce, salesforce_key,
                                                           config_dir):
    """Migrations and reference data, a worker on Redis, the Slack app from the manifest, the GitHub
    webhook, SMTP with STARTTLS and a login, the instance automation account, Salesforce's connected
    app: `trialflow doctor`."""
    fake_github.permissions["admin"] = True
    fake_github.add_hook(PUBLIC_URL + "/github/webhooks")
    with SmtpServer(starttls=True, credentials=("trialflow", "mail-pass-0042"), cert_dir=tmp_path) as smtp:
        settings = dict(database_url=f"sqlite:///{tmp_path / 'data' / 'trialflow.db'}", broker_url=redis_url,
                        config_dir=str(config_dir), data_dir=str(tmp_path / "data"), public_url=PUBLIC_URL,
                        github_webhook_secret=HOOK_SECRET, smtp_url=smtp.url, slack_signing_secret=SIGNING_SECRET,
                        **fake_slack.settings(),
                        **fake_github.settings(), **fake_sourcegraph.settings(),
                        **{k: str(v) for k, v in fake_salesforce.settings(salesforce_key).items()})
        env = trialflow_env(**settings)
        env["SSL_CERT_FILE"] = str(smtp.ca_file)
        env["REQUESTS_CA_BUNDLE"] = str(fake_salesforce.ca_bundle)
        # `trialflow migrate` and `trialflow config load`, in this process (their CLI has its own tests).
        load_config(settings["database_url"], config_dir)
        worker = TrialflowProcess(["worker", "--name", "doctor"], env, tmp_path / "worker.log").start()
        try:
            worker.wait_ready("ready", timeout=90)
            done = subprocess.run([sys.executable, "-m", "trialflow.cli", "doctor"], env=env, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=120)
        finally:
            worker.stop()
        assert smtp.messages == []
    checked = done.stdout.strip().splitlines()[:-1]
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split()[:2] for line in checked if line] == [
        ["ok", "database"], ["ok", "broker"], ["ok", "worker"], ["ok", "slack"], ["ok", "slack"], ["ok", "slack"],
        ["ok", "github"], ["ok", "github"], ["ok", "smtp"], ["ok", "instances"], ["ok", "salesforce"]]
    assert done.stdout.strip().endswith("all configured systems answer as trialflow needs")
