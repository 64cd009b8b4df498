"""Shared fixtures. Database-backed tests run on SQLite and on PostgreSQL (``db_url`` is
parametrised). PostgreSQL: each run (pytest session) creates a database of its own, migrates it
once, truncates it between tests and drops it at the end, so two runs on one machine never meet;
Redis likewise hands each run a database number of its own (``redis_url``)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.support.config import write_config

# The local servers that answer like Slack, GitHub, Salesforce, Sourcegraph instances and an SMTP relay, as fixtures for every test.
from tests.support.fake_github import fake_github, github  # noqa: F401
from tests.support.fake_salesforce import fake_salesforce, salesforce_key  # noqa: F401
from tests.support.fake_slack import fake_slack  # noqa: F401
from tests.support.fake_sourcegraph import fake_sourcegraph  # noqa: F401
from tests.support.services import claim_redis_db, create_run_database, drop_run_database, release_redis_db
from tests.support.smtp import smtp_server  # noqa: F401
from tests.support.world import world  # noqa: F401
from trialflow.clock import ManualClock
from trialflow.db.engine import make_engine
from trialflow.db.migrate import upgrade
from trialflow.db.tables import metadata
from trialflow.settings import Settings

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(autouse=True)
def own_spool(tmp_path, monkeypatch) -> Path:
    """Each test spools signups into a directory of its own (subprocesses too: ``trialflow_env``),
    never into the user's data directory, where another run's server could replay them."""
    spool = tmp_path / "spool"
    monkeypatch.setenv("TRIALFLOW_SPOOL_DIR", str(spool))
    return spool


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.exists():
        pytest.fail(f"../shared/fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_migrated():
    """This run's own PostgreSQL database, migrated; dropped (with whatever is still connected to
    it) when the run ends."""
    url = create_run_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_run_database(url)


@pytest.fixture(scope="session")
def redis_url():
    """A Redis database number no other run holds, empty; emptied and given back at the end."""
    url = claim_redis_db()
    yield url
    release_redis_db(url)


def truncate_all(url: str) -> None:
    engine = make_engine(url)
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        target = tmp_path / "trialflow.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    url = request.getfixturevalue("postgres_migrated")
    truncate_all(url)
    return url


@pytest.fixture
def sqlite_url(sqlite_template, tmp_path) -> str:
    """SQLite alone, for a test whose subject does not depend on the database (a command line's
    report, a long simulation whose queries other tests run on both)."""
    target = tmp_path / "trialflow-sqlite.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def pg_url(postgres_migrated) -> str:
    """PostgreSQL only (races, SKIP LOCKED)."""
    truncate_all(postgres_migrated)
    return postgres_migrated


@pytest.fixture
def config_dir(tmp_path) -> Path:
    return write_config(tmp_path / "config")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


# The TestClient's own default peer ("testclient") is no address at all; the embedded default's
# staff surfaces answer loopback clients, as a person on the machine would be.
LOOPBACK_CLIENT = ("127.0.0.1", 50000)
# Tests of other things send many signups from one address; the limits' own tests set real ones.
UNLIMITED = "1000000/second"

EVENTS_TOKEN = "events-token-for-tests"
EVENTS_AUTH = {"Authorization": f"Bearer {EVENTS_TOKEN}"}


def make_settings(db_url: str, config_dir: Path, **overrides) -> Settings:
    values = dict(database_url=db_url, config_dir=config_dir, broker_url=None, slack_bot_token=None,
                  slack_signing_secret=None, github_token=None, github_webhook_secret=None, smtp_url=None,
                  activity_secret=None, events_token=EVENTS_TOKEN, signup_rate_per_ip=UNLIMITED,
                  signup_rate_per_domain=UNLIMITED, _env_file=None)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(db_url, config_dir) -> Settings:
    return make_settings(db_url, config_dir)


@pytest.fixture
def runtime(settings, clock):
    from trialflow.runtime import Runtime
    from trialflow.services.reference import load_reference_data
    rt = Runtime(settings, clock=clock)
    load_reference_data(rt.session_factory, settings.config_dir, clock.now())
    yield rt
    rt.close()


@pytest.fixture
def client(runtime):
    from fastapi.testclient import TestClient

    from trialflow.api.app import create_app
    with TestClient(create_app(runtime), raise_server_exceptions=False, client=LOOPBACK_CLIENT) as c:
        yield c
