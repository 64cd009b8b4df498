"""Finding the test services. Locally a missing PostgreSQL or Redis skips its tests; under
CI=true it fails them, so a green CI always means they ran."""
from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get("TRIALFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/trialflow_test")
REDIS_URL = os.environ.get("TRIALFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def unavailable(what: str, why: object) -> None:
    message = f"{what} is not available: {why}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: tests that need it must run, not skip)", pytrace=False)
    pytest.skip(message)


def ensure_postgres_database(url: str = POSTGRES_URL) -> str:
    """Create the test database if it is missing; returns the URL. Skips/fails when unreachable."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = dict(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres", dbname="postgres",
                 connect_timeout=3)
    if u.password:
        admin["password"] = u.password
    try:
        with psycopg.connect(**admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (u.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{u.database}"')
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
    return url


def ensure_redis(url: str = REDIS_URL) -> str:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    return url
