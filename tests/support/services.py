"""Finding the test services. Locally a missing PostgreSQL or Redis skips its tests; under
CI=true it fails them, so a green CI always means they ran.

Each test run (one pytest process) has services of its own, so two runs on one machine never
meet: its own PostgreSQL database, created on the server of TRIALFLOW_TEST_POSTGRES_URL and named
after that URL's database (``trialflow_test_<unix time>_<pid>_<random>``), dropped when the run
ends; and its own Redis database number on the server of TRIALFLOW_TEST_REDIS_URL, claimed with a
key in db 0 and given back at the end. A run that was killed leaves its database behind: the next
run drops it (a live run keeps a connection named after its database open; a dead one does not),
and takes over its Redis claim (the claim names host and pid) or the claim expires by itself.
"""
from __future__ import annotations

import os
import re
import secrets
import socket
import time

import pytest

from workers.liveness import process_alive

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The server (and the name prefix) of each run's database; the run's own URL is POSTGRES_URL.
POSTGRES_BASE_URL = os.environ.get("TRIALFLOW_TEST_POSTGRES_URL",
                                   "postgresql+psycopg://postgres@127.0.0.1:5432/trialflow_test")
# The Redis server; its database number is not used: each run claims a free one (claim_redis_db).
REDIS_BASE_URL = os.environ.get("TRIALFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

RUN_STARTED = int(time.time())
RUN_TAG = f"{RUN_STARTED}_{os.getpid()}_{secrets.token_hex(3)}"


def unavailable(what: str, why: object) -> None:
    message = f"{what} is not available: {why}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: tests that need it must run, not skip)", pytrace=False)
    pytest.skip(message)


# --- PostgreSQL ---------------------------------------------------------------------------------

def _run_database_prefix(base_url: str) -> str:
    from sqlalchemy.engine import make_url
    return (make_url(base_url).database or "trialflow_test")[: 63 - len(RUN_TAG) - 1]


def _run_postgres_url(base_url: str) -> str:
    from sqlalchemy.engine import make_url
    name = f"{_run_database_prefix(base_url)}_{RUN_TAG}"
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


# This run's database (it exists once create_run_database() has made it).
POSTGRES_URL = _run_postgres_url(POSTGRES_BASE_URL)


def _admin_connection(url: str, application_name: str = "trialflow-tests"):
    """An autocommit connection to the server's `postgres` database; skips/fails when unreachable."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = dict(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres", dbname="postgres",
                 connect_timeout=3, application_name=application_name)
    if u.password:
        admin["password"] = u.password
    try:
        return psycopg.connect(**admin, autocommit=True)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", str(exc).strip().splitlines()[0] if str(exc).strip() else exc)


def _drop(conn, name: str) -> None:
    import psycopg
    from psycopg import sql

    try:  # PostgreSQL 13+: ends the connections a killed worker or a leaked pool left open
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.errors.SyntaxError:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


# A run keeps one connection open for as long as it lives, named after its database: a run
# database without it belongs to a run that died (killed, crashed) before its teardown.
ORPHAN_GRACE_SECONDS = 300
STALE_SECONDS = 6 * 3600  # no run takes this long: its database is dropped even if its keeper hangs on
_keeper = None


def drop_stale_run_databases(conn, prefix: str, now: float | None = None) -> list[str]:
    """Drop the run databases of `prefix` whose run is gone (no keeper connection; older than
    ORPHAN_GRACE_SECONDS) or that are older than STALE_SECONDS."""
    now = time.time() if now is None else now
    pattern = re.compile(rf"{re.escape(prefix)}_(\d{{10}})_\d+_[0-9a-f]{{6}}")
    rows = conn.execute("SELECT d.datname, EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = d.datname) "
                        "FROM pg_database d").fetchall()
    dropped = []
    for name, kept in rows:
        match = pattern.fullmatch(name)
        if not match:
            continue
        age = now - int(match.group(1))
        if (not kept and age > ORPHAN_GRACE_SECONDS) or age > STALE_SECONDS:
            try:
                _drop(conn, name)
                dropped.append(name)
            except Exception:  # another run may be dropping it right now; the next run tries again
                pass
    return dropped


def create_run_database(base_url: str = POSTGRES_BASE_URL) -> str:
    """Create this run's own empty database (dropping those of runs that died); returns its URL.
    The connection that created it stays open, named after it, until drop_run_database()."""
    global _keeper
    from psycopg import sql
    from sqlalchemy.engine import make_url

    url = _run_postgres_url(base_url)
    name = make_url(url).database
    conn = _admin_connection(base_url, application_name=name)
    try:
        drop_stale_run_databases(conn, _run_database_prefix(base_url))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except BaseException:
        conn.close()
        raise
    _keeper = conn
    return url


def drop_run_database(url: str = POSTGRES_URL) -> None:
    """Drop this run's database, whoever is still connected to it, and close its keeper."""
    global _keeper
    from sqlalchemy.engine import make_url

    keeper, _keeper = _keeper, None
    conn = keeper if keeper is not None and not keeper.closed else _admin_connection(url)
    with conn:
        _drop(conn, make_url(url).database)


def ensure_postgres_database(url: str) -> str:
    """Create the database of `url` if it is missing (the benchmarks' fixed databases); returns the URL.
    Tests use create_run_database() instead. Skips/fails when PostgreSQL is unreachable."""
    from psycopg import sql
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    with _admin_connection(url) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url


# --- Redis --------------------------------------------------------------------------------------

CLAIM_KEY = "trialflow-test:claim:db:{}"
CLAIM_TTL_SECONDS = 6 * 3600  # no run takes this long; a live run gives its claim back sooner
_CLAIM_OWNER = f"{socket.gethostname()}:{os.getpid()}:{RUN_TAG}"
# Take a claim over only while it still names the dead run we looked at (atomic).
_TAKE_OVER = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def _left_by_dead_run(owner: bytes | None) -> bool:
    if not owner:
        return False
    host, _, rest = owner.decode(errors="replace").partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))


def _redis_databases(admin) -> int:
    try:
        return int(admin.config_get("databases").get("databases", 16))
    except Exception:  # CONFIG may be disabled; 16 is Redis's default
        return 16


def claim_redis_db(base_url: str = REDIS_BASE_URL) -> str:
    """Claim a Redis database number no other run holds (SET NX on a key in db 0, with an expiry),
    empty it, and return this run's Redis URL. release_redis_db() gives it back."""
    import redis

    admin = redis.Redis.from_url(_redis_url(base_url, 0), socket_connect_timeout=2)  # (a URL's db beats db=)
    try:
        admin.ping()
        for db in range(_redis_databases(admin) - 1, 0, -1):
            key = CLAIM_KEY.format(db)
            claimed = admin.set(key, _CLAIM_OWNER, nx=True, ex=CLAIM_TTL_SECONDS)
            if not claimed:
                owner = admin.get(key)
                claimed = _left_by_dead_run(owner) and admin.eval(_TAKE_OVER, 1, key, owner, _CLAIM_OWNER,
                                                                   CLAIM_TTL_SECONDS)
            if claimed:
                url = _redis_url(base_url, db)
                redis.Redis.from_url(url, socket_connect_timeout=2).flushdb()
                return url
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    finally:
        admin.close()
    unavailable("Redis", "every database number is claimed by another test run (keys trialflow-test:claim:db:* in db 0)")


def release_redis_db(url: str) -> None:
    import redis

    db = redis.Redis.from_url(url).connection_pool.connection_kwargs.get("db", 0)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).flushdb()
        redis.Redis.from_url(_redis_url(url, 0), socket_connect_timeout=2).eval(_RELEASE, 1, CLAIM_KEY.format(db),
                                                                               _CLAIM_OWNER)
    except redis.RedisError:
        pass  # the claim expires by itself


def _redis_url(base_url: str, db: int) -> str:
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(base_url)
    query = [p for p in parts.query.split("&") if p and not p.startswith("db=")]
    if parts.scheme == "unix":  # the path is the socket's: the number goes in the query
        return urlunsplit(parts._replace(query="&".join([*query, f"db={db}"])))
    return urlunsplit(parts._replace(path=f"/{db}", query="&".join(query)))


def ensure_redis(url: str) -> str:
    """Check that the Redis server of `url` answers; skips/fails when it does not."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    return url
