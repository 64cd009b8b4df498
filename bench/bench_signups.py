"""Signups per second over real HTTP, against a floor server measured in the same run.

Real pieces: PostgreSQL (database ``trialflow_bench``, created if missing, rebuilt each run),
trialflow's app under uvicorn (``--workers``, httptools, uvloop) as a separate process tree, and a
load generator in its own process speaking raw HTTP/1.1 keep-alive over asyncio (httpx would cost
more CPU than the server on this 2-core machine, and the generator shares those cores).

The floor: the same uvicorn command (workers, loop, HTTP parser, backlog, keep-alive) serving a
bare ASGI app that answers each ``POST /api/signups`` with one INSERT into ``floor_trials``, a
copy of ``trials`` with the same columns and indexes (``LIKE trials INCLUDING ALL``), through
psycopg ``AsyncConnection``s in autocommit, at most 8 per process (as trialflow's signup path
uses them). It parses the same JSON body and answers JSON; it routes nothing and writes no
history, effects or timers. Nothing built on this stack, this machine and this PostgreSQL can
write a signup for less, so trialflow's rate as a fraction of the floor's says how much the
service itself costs, and holds better than signups/s when the machine is slower or shared.
Both servers run at once (the idle one costs nothing); the closed loop alternates between them
in short rounds (ABBA), so a change in the machine's load falls on both.

What is measured is the API: each signup routes, writes its trial, history and outbox rows and
commits (synchronous_commit as configured on the server, normally on). Effect delivery is not
running, as with ``TRIALFLOW_BROKER_URL`` set, where Celery workers elsewhere deliver them.

The mix of emails (per generator, seeded): 70 % new company domains (triage, case 3), 10 % public
mailbox addresses (triage), 10 % addresses at 200 of the 3,000 pre-qualified accounts (the first
signup of an account claims a pool instance, its colleagues join it: case 2 then case 1), 10 %
repeats of an address already sent (answered 200 with the same trial). The 200 claims (each
serialises on the capacity lock) are made before measuring, one signup per account: a fixed
number of them would otherwise weigh on a short run by how fast it is (with the earlier single
20 s run at ~3,000/s they all fell in its warm-up). The floor gets the same mix.

    .venv/bin/python bench/bench_signups.py [--workers 2] [--connections 32] [--seconds 20]
                                            [--rounds 2] [--rate 200] [--latency-seconds 15]
                                            [--no-floor] [--write-results]

About 100 s with the defaults; each phase is printed as it ends.

Targets: trialflow >= 0.5 of the floor's signups/s and >= 1,500 signups/s sustained; p99 < 10 ms
at 200 signups/s open loop. Answers other than 200/201 (a 202 is the failsafe catching a routing
failure) count as errors. CPU per signup (server, PostgreSQL backends, load generator) is printed
for both: unlike signups/s it barely moves when other work shares the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from machine import cpu_seconds as _cpu_seconds  # noqa: E402
from machine import describe  # noqa: E402
from machine import processes as _processes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DB_NAME = "trialflow_bench"
DB_URL = os.environ.get("TRIALFLOW_BENCH_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}")
RESULTS = ROOT / "bench" / "RESULTS-signups.md"
ACCOUNTS = 3000          # pre-qualified accounts in accounts.csv (one in five named)
SIGNING_UP_ACCOUNTS = 200  # the accounts whose people sign up during a run (a campaign's targets)
POOL = 300               # pre-provisioned instances: more than the accounts that claim one, so none waits
MIX = (("new_company", 70), ("public", 10), ("prequalified", 10), ("repeat", 10))
TARGET_RATE = 1500.0
TARGET_FLOOR_FRACTION = 0.5
TARGET_P99_MS = 10.0
MAX_OPEN_LOOP_CONNECTIONS = 256  # beyond this, scheduled signups queue (and the queueing counts as latency)
FLOOR_TABLE = "floor_trials"
FLOOR_CONNECTIONS = 8    # per process, as trialflow's LoopConnections (api/app.py: SIGNUP_THREADS)
SERVER_FLAGS = ["--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
                "--backlog", "2048", "--timeout-keep-alive", "30"]
STARTED = time.monotonic()


def say(message: str) -> None:
    """Progress, as each phase ends (the run takes a minute or two)."""
    print(f"[{time.monotonic() - STARTED:5.1f} s] {message}", flush=True)


def make_app():
    """uvicorn --factory entry point: trialflow's app on the settings in the environment."""
    from trialflow.api.app import create_app
    from trialflow.runtime import Runtime
    return create_app(Runtime())


# --- the floor server -----------------------------------------------------------------------

_FLOOR_INSERT = (f'INSERT INTO {FLOOR_TABLE} (id, email, domain, name, company, source, "case", state, '
                 "created_at, updated_at, kept, mql_points) "
                 "VALUES (%s, %s, %s, %s, %s, %s, 'manual_qualification', 'triage', %s, %s, false, 0) "
                 "ON CONFLICT (email) DO NOTHING RETURNING id")
_FLOOR_MESSAGE = "Thanks! Our team will get back to you by email shortly."


class FloorApp:
    """The least a signup can cost on this stack: read the JSON body, one INSERT ... ON CONFLICT
    (email) DO NOTHING into a table shaped and indexed like trials, answer JSON (201 new, 200 a
    repeat). Bare ASGI, as trialflow answers its signup route; psycopg AsyncConnections in
    autocommit, made on first use and kept, at most ``size`` in use per process."""

    def __init__(self, url: str, size: int = FLOOR_CONNECTIONS):
        from sqlalchemy.engine import make_url
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.size = size
        self.idle: list = []
        self.slots: asyncio.Semaphore | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    idle, self.idle = self.idle, []
                    for conn in idle:
                        await conn.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] == "POST" and scope["path"] == "/api/signups":
            body = b""
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
            try:
                status, content = await self.signup(body)
            except Exception as exc:  # noqa: BLE001 - counted as an error by the load generator
                status, content = 500, {"error": f"{type(exc).__name__}: {exc}"}
        elif scope["path"] == "/healthz":
            status, content = 200, {"status": "ok"}
        else:
            status, content = 404, {"error": "not found"}
        payload = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    async def signup(self, body: bytes) -> tuple[int, dict]:
        data = json.loads(body)
        email = data["email"].strip().lower()
        domain = email.rpartition("@")[2]
        trial_id = "tr_" + os.urandom(8).hex()
        now = datetime.now(UTC)
        conn = await self.acquire()
        try:
            cursor = await conn.execute(_FLOOR_INSERT, (trial_id, email, domain, data.get("name"),
                                                        data.get("company"), data.get("source"), now, now))
            created = await cursor.fetchone() is not None
        finally:
            self.release(conn)
        return (201 if created else 200), {"trial_id": trial_id if created else None, "case": "manual_qualification",
                                           "state": "triage", "redirect_url": None, "message": _FLOOR_MESSAGE}

    async def acquire(self):
        if self.slots is None:
            self.slots = asyncio.Semaphore(self.size)
        await self.slots.acquire()
        try:
            if self.idle:
                return self.idle.pop()
            import psycopg
            return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except BaseException:
            self.slots.release()
            raise

    def release(self, conn) -> None:
        if conn.broken or conn.closed:
            conn.pgconn.finish()
        else:
            self.idle.append(conn)
        self.slots.release()


def make_floor_app():
    """uvicorn --factory entry point for the floor server."""
    return FloorApp(DB_URL)


# --- the database and reference data --------------------------------------------------------

def fresh_database(config_dir: Path) -> None:
    from sqlalchemy import text

    from tests.support.services import ensure_postgres_database
    from trialflow.clock import SystemClock
    from trialflow.db.engine import make_engine, make_session_factory
    from trialflow.db.migrate import upgrade
    from trialflow.services.reference import load_reference_data

    ensure_postgres_database(DB_URL)
    engine = make_engine(DB_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    upgrade(DB_URL)
    load_reference_data(make_session_factory(engine), config_dir, SystemClock().now())
    with engine.begin() as conn:
        # The floor's table: the same columns, keys and indexes as trials (no foreign keys point at it).
        conn.execute(text(f"CREATE TABLE {FLOOR_TABLE} (LIKE trials INCLUDING ALL)"))
    engine.dispose()


def account_domains() -> list[str]:
    return [f"account{i:05d}.example" for i in range(ACCOUNTS)]


def write_config(directory: Path) -> Path:
    from tests.support.config import STAFF
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["domain,account_name,prequalified,named_account,named_sdr,owner_ae,owner_ce"]
    for i, domain in enumerate(account_domains()):
        if i % 5 == 0:
            lines.append(f"{domain},Account {i},true,true,nina.named@example.com,alice.ae@example.com,carol.ce@example.com")
        else:
            lines.append(f"{domain},Account {i},true,false,,,")
    (directory / "accounts.csv").write_text("\n".join(lines) + "\n")
    (directory / "staff.csv").write_text(STAFF)
    (directory / "instances.csv").write_text("host,admin_email,status\n" + "".join(
        f"pool-{i:05d}.sourcegraph.example,,pool\n" for i in range(POOL)))
    return directory


def database_counts() -> dict[str, int]:
    from sqlalchemy import func, select, table

    from trialflow.db import tables
    from trialflow.db.engine import make_engine
    engine = make_engine(DB_URL)
    with engine.connect() as conn:
        counts = {name: conn.scalar(select(func.count()).select_from(t)) for name, t in (
            ("trials", tables.trials), ("failed_signups", tables.failed_signups), ("outbox", tables.outbox),
            (FLOOR_TABLE, table(FLOOR_TABLE)))}
        counts["claimed"] = conn.scalar(select(func.count()).select_from(tables.instances)
                                        .where(tables.instances.c.trial_id.is_not(None)))
    engine.dispose()
    return counts


def stack() -> str:
    """What the run ran on, so a later run can tell a changed library or server setting apart."""
    import importlib.metadata as md

    import psycopg
    from sqlalchemy.util import has_compiled_ext

    from trialflow.db.engine import make_engine

    def v(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "missing"

    engine = make_engine(DB_URL)
    with engine.connect() as conn:
        pg = {name: conn.exec_driver_sql(f"SHOW {name}").scalar()
              for name in ("server_version", "synchronous_commit", "autovacuum", "jit", "fsync")}
    engine.dispose()
    return (f"uvicorn {v('uvicorn')}, uvloop {v('uvloop')}, httptools {v('httptools')}, "
            f"psycopg {v('psycopg')} ({psycopg.pq.__impl__}), SQLAlchemy {v('SQLAlchemy')} "
            f"(C extensions {'on' if has_compiled_ext() else 'off'}), starlette {v('starlette')}, "
            f"fastapi {v('fastapi')}; PostgreSQL {pg['server_version']} (synchronous_commit {pg['synchronous_commit']}, "
            f"fsync {pg['fsync']}, autovacuum {pg['autovacuum']}, jit {pg['jit']})")


# --- the servers ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, workers: int, config_dir: Path, factory: str = "bench_signups:make_app",
                 url: str = DB_URL) -> subprocess.Popen:
    env = {**os.environ, "TRIALFLOW_DATABASE_URL": url, "TRIALFLOW_CONFIG_DIR": str(config_dir),
           "TRIALFLOW_INSTANCE_CAP": "1000000", "TRIALFLOW_BROKER_URL": "", "PYTHONPATH": str(ROOT),
           # Every request comes from this one machine: the limits are counted (their cost is in
           # the numbers) but set where they never refuse.
           "TRIALFLOW_SIGNUP_RATE_PER_IP": "1000000/second", "TRIALFLOW_SIGNUP_RATE_PER_DOMAIN": "1000000/second"}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", factory, "--app-dir", str(ROOT / "bench"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), *SERVER_FLAGS]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)


def wait_healthy(server: subprocess.Popen, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"uvicorn exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    stop_server(server)
    raise SystemExit(f"uvicorn did not answer /healthz within {timeout:g} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def workers_of(server_pid: int) -> list[int]:
    """The uvicorn worker processes: the server's children that run the app (Linux)."""
    found = []
    for pid, ppid, _name in _processes():
        if ppid == server_pid:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmdline:
                found.append(pid)
    return sorted(found)


def loaded_natively(pid: int) -> dict[str, bool]:
    """Whether uvloop's event loop and httptools' parser are mapped into a worker (they are C
    extensions: a worker running asyncio's own loop or h11 would not have them)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return {}
    return {"uvloop": "uvloop/loop.cpython" in maps, "httptools": "httptools/parser/parser.cpython" in maps}


# --- the load generator (runs in its own process) -------------------------------------------

class Emails:
    def __init__(self, seed: int, tag: str):
        self.random = random.Random(seed)
        self.tag = tag
        self.sent: list[str] = []
        self.n = 0
        self.accounts = account_domains()[:SIGNING_UP_ACCOUNTS]
        self.kinds = [kind for kind, weight in MIX for _ in range(weight)]

    def next(self) -> str:
        self.n += 1
        kind = self.random.choice(self.kinds)
        if kind == "repeat" and self.sent:
            return self.random.choice(self.sent)
        if kind == "public":
            email = f"{self.tag}.{self.n}@{self.random.choice(('gmail.com', 'outlook.com', 'yahoo.com'))}"
        elif kind == "prequalified":
            email = f"{self.tag}.{self.n}@{self.random.choice(self.accounts)}"
        else:
            email = f"lead{self.n}@{self.tag}-startup{self.n}.example"
        self.sent.append(email)
        return email


def request_bytes(port: int, email: str) -> bytes:
    body = json.dumps({"email": email, "name": "Bench Lead", "source": "bench"}).encode()
    return (f"POST /api/signups HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def connect(port: int):
    return await asyncio.open_connection("127.0.0.1", port)


async def exchange(conn: list, port: int, payload: bytes) -> int:
    """One request on a keep-alive connection; reconnects once if the server had closed it idle."""
    for attempt in (1, 2):
        try:
            return await _exchange(conn[0], conn[1], payload)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            if attempt == 2:
                raise
            conn[1].close()
            conn[0], conn[1] = await connect(port)
    raise AssertionError("unreachable")


async def _exchange(reader, writer, payload: bytes) -> int:
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def closed_loop(port: int, connections: int, warmup: float, seconds: float, emails: Emails) -> dict:
    """Each connection sends its next signup as soon as the last is answered."""
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    statuses: dict[int, int] = {}
    done = 0

    async def one_connection():
        nonlocal done
        conn = list(await connect(port))
        while True:
            status = await exchange(conn, port, request_bytes(port, emails.next()))
            now = time.perf_counter()
            if now >= stop_at:
                break
            if now >= measure_from:
                done += 1
                statuses[status] = statuses.get(status, 0) + 1
        conn[1].close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return {"completed": done, "seconds": seconds, "statuses": statuses, "sent": emails.n}


async def prime(port: int, connections: int) -> dict:
    """The first signup of each account that signs up during the run: each claims a pool
    instance (its colleagues later join it). Claims serialise on the capacity lock and run in a
    transaction in a thread, and there is a fixed number of them, so in a short measured run
    they would weigh by how fast the run is; they are made here, before measuring."""
    todo = [f"prime.{i}@{domain}" for i, domain in enumerate(account_domains()[:SIGNING_UP_ACCOUNTS])]
    statuses: dict[int, int] = {}

    async def one_connection():
        conn = list(await connect(port))
        while todo:
            status = await exchange(conn, port, request_bytes(port, todo.pop()))
            statuses[status] = statuses.get(status, 0) + 1
        conn[1].close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return {"statuses": statuses, "sent": sum(statuses.values())}


async def open_loop(port: int, rate: float, warmup: float, seconds: float, emails: Emails) -> dict:
    """Signups at a fixed schedule, whatever the answers do: latency counts from the scheduled
    send time, so a slow answer cannot hide the requests queued behind it."""
    idle: list[list] = []
    opened = 0
    limit = asyncio.Semaphore(MAX_OPEN_LOOP_CONNECTIONS)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter() + 0.05
    total = int((warmup + seconds) * rate)
    warm = int(warmup * rate)

    async def one(i: int, scheduled: float):
        nonlocal opened
        async with limit:
            if idle:
                conn = idle.pop()
            else:
                conn = list(await connect(port))
                opened += 1
            status = await exchange(conn, port, request_bytes(port, emails.next()))
            latency = time.perf_counter() - scheduled
            idle.append(conn)
        if i >= warm:
            latencies.append(latency)
            statuses[status] = statuses.get(status, 0) + 1

    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, scheduled)))
    await asyncio.gather(*tasks)
    measured = time.perf_counter() - (start + warm / rate)  # from the first measured send to the last answer
    for _, writer in idle:
        writer.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {"completed": len(latencies), "statuses": statuses, "p50": pct(50), "p95": pct(95), "p99": pct(99),
            "max": latencies[-1] * 1000, "mean": statistics.fmean(latencies) * 1000, "rate": rate,
            "achieved": len(latencies) / measured, "connections": opened}


def generator(mode: str, port: int, args: dict, seed: int, tag: str, out) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    emails = Emails(seed, tag)
    cpu_start = time.process_time()
    try:
        if mode == "closed":
            result = asyncio.run(closed_loop(port, args["connections"], args["warmup"], args["seconds"], emails))
        elif mode == "prime":
            result = asyncio.run(prime(port, args["connections"]))
        else:
            result = asyncio.run(open_loop(port, args["rate"], args["warmup"], args["seconds"], emails))
    except Exception as exc:  # noqa: BLE001 - reported by the parent, which must not wait forever
        result = {"failed": f"{type(exc).__name__}: {exc}"}
    result["cpu_seconds"] = time.process_time() - cpu_start
    out.put(result)


def run_generator(mode: str, port: int, seed: int, tag: str, **args) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    process = ctx.Process(target=generator, args=(mode, port, args, seed, tag, out))
    process.start()
    result = out.get(timeout=args.get("warmup", 0) + args.get("seconds", 0) + 120)
    process.join()
    if "failed" in result:
        raise SystemExit(f"the {mode}-loop load generator failed: {result['failed']}")
    return result


# --- CPU accounting -------------------------------------------------------------------------

def machine() -> str:
    return describe()


def cpu_snapshot(server_pid: int) -> dict:
    """CPU seconds used so far by the server's processes (and each worker) and by PostgreSQL's
    backends, so the run can report CPU per signup: unlike signups/s, that does not change with
    what else the machine runs. Backends of every client of the benchmark database count: while
    one server is measured the other is idle."""
    processes = _processes()
    children: dict[int, list[int]] = {}
    for pid, ppid, _name in processes:
        children.setdefault(ppid, []).append(pid)
    server, todo = [], [server_pid]
    while todo:
        pid = todo.pop()
        server.append(pid)
        todo.extend(children.get(pid, []))
    postgres = exited = 0.0
    for pid, ppid, name in processes:
        if name != "postgres":
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if DB_NAME.encode() + b" " in cmdline:
            postgres += _cpu_seconds(pid)
        elif ppid == 1 or b" -D " in cmdline.replace(b"\0", b" "):
            # The postmaster: backends that have exited (connections closed) add their CPU to
            # its children's total. Other databases' backends count there too, so this is an upper bound.
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                exited += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                pass
    return {"server": sum(_cpu_seconds(pid) for pid in server), "postgres": postgres, "exited backends": exited,
            "workers": {pid: _cpu_seconds(pid) for pid in workers_of(server_pid)}}


def errors(statuses: dict) -> int:
    return sum(n for status, n in statuses.items() if status not in (200, 201))


# --- the run --------------------------------------------------------------------------------

FACTORIES = {"trialflow": "bench_signups:make_app", "floor": "bench_signups:make_floor_app"}


def _empty() -> dict:
    return {"completed": 0, "seconds": 0.0, "sent": 0, "statuses": {}, "server": 0.0, "postgres": 0.0,
            "exited backends": 0.0, "generator": 0.0, "workers": {}}


def _add(total: dict, result: dict, before: dict, after: dict) -> dict:
    """Adds one closed-loop round to ``total``; returns the round's own CPU per signup (ms)."""
    sent = result["sent"] or 1
    total["completed"] += result["completed"]
    total["seconds"] += result["seconds"]
    total["sent"] += result["sent"]
    for status, n in result["statuses"].items():
        total["statuses"][status] = total["statuses"].get(status, 0) + n
    spent = {k: after[k] - before[k] for k in ("server", "postgres", "exited backends")}
    spent["generator"] = result["cpu_seconds"]
    for k, v in spent.items():
        total[k] += v
    for pid, cpu in after["workers"].items():
        total["workers"][pid] = total["workers"].get(pid, 0.0) + cpu - before["workers"].get(pid, 0.0)
    return {k: 1000 * v / sent for k, v in spent.items()}


def cpu_per_signup(total: dict) -> dict:
    sent = total["sent"] or 1
    return {k: 1000 * total[k] / sent for k in ("server", "postgres", "exited backends", "generator")}


def busiest_share(workers: dict) -> float:
    """The busiest worker's share of the workers' CPU: uvicorn's workers share the listening
    socket, and one may have taken most of the connections."""
    spent = sum(workers.values())
    return max(workers.values()) / spent if spent else 0.0


def rate(total: dict) -> float:
    return total["completed"] / total["seconds"] if total["seconds"] else 0.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (each server)")
    parser.add_argument("--connections", type=int, default=32, help="closed-loop concurrent connections")
    parser.add_argument("--warmup", type=float, default=2.0, help="closed-loop warm-up before each round")
    parser.add_argument("--seconds", type=float, default=20.0, help="closed-loop measuring time per server")
    parser.add_argument("--rounds", type=int, default=2,
                        help="closed-loop rounds the measuring time is split into, alternating the servers")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop signups per second")
    parser.add_argument("--latency-seconds", type=float, default=15.0, help="open-loop measuring time per server")
    parser.add_argument("--no-floor", action="store_true", help="measure trialflow alone")
    parser.add_argument("--write-results", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    names = ["trialflow"] if args.no_floor else ["trialflow", "floor"]
    per_round = args.seconds / args.rounds

    load1 = os.getloadavg()[0]
    say(f"machine: {machine()}; load average {load1:.2f}")
    with tempfile.TemporaryDirectory(prefix="trialflow-bench-") as tmp:
        config_dir = write_config(Path(tmp) / "config")
        fresh_database(config_dir)
        say(f"database {DB_NAME} rebuilt: {ACCOUNTS:,} accounts, {POOL} pool instances, {FLOOR_TABLE} like trials")
        versions = stack()
        say(f"stack: {versions}")
        servers: dict[str, tuple[subprocess.Popen, int]] = {}
        try:
            for name in names:
                port = free_port()
                servers[name] = (start_server(port, args.workers, config_dir, FACTORIES[name]), port)
            for process, port in servers.values():
                wait_healthy(process, port)
            native = {name: [loaded_natively(pid) for pid in workers_of(process.pid)]
                      for name, (process, _port) in servers.items()}
            native_ok = all(all(found.values()) and found for workers in native.values() for found in workers)
            say("servers up: " + ", ".join(
                f"{name} on :{port} ({len(native[name])} workers, uvloop {'and httptools ' if native_ok else ''}"
                f"{'loaded' if native_ok else 'NOT loaded: ' + str(native[name])})"
                for name, (_process, port) in servers.items()))

            started = time.monotonic()
            primed = run_generator("prime", servers["trialflow"][1], 0, "p", connections=args.connections)
            say(f"trialflow primed: the first signup of each of the {SIGNING_UP_ACCOUNTS} accounts that sign up "
                f"claimed its instance ({time.monotonic() - started:.1f} s, not measured); answers {primed['statuses']}")
            closed = {name: _empty() for name in names}
            seed = 1
            for r in range(args.rounds):
                for name in (names if r % 2 == 0 else names[::-1]):  # ABBA: drift falls on both
                    process, port = servers[name]
                    before = cpu_snapshot(process.pid)
                    result = run_generator("closed", port, seed, f"{name[0]}{r}", connections=args.connections,
                                           warmup=args.warmup, seconds=per_round)
                    after = cpu_snapshot(process.pid)
                    seed += 1
                    cpu = _add(closed[name], result, before, after)
                    say(f"closed loop {r + 1}/{args.rounds}, {name}: {result['completed'] / per_round:,.0f}/s; CPU per "
                        f"signup: server {cpu['server']:.2f} ms, PostgreSQL {cpu['postgres']:.2f} ms, "
                        f"generator {cpu['generator']:.2f} ms; answers {result['statuses']}")
            latency = {}
            for name in names:
                _process, port = servers[name]
                latency[name] = run_generator("open", port, seed, f"{name[0]}l", rate=args.rate, warmup=2.0,
                                              seconds=args.latency_seconds)
                seed += 1
                lat = latency[name]
                say(f"open loop at {args.rate:g}/s, {name}: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, "
                    f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms ({lat['completed']} signups, "
                    f"{lat['connections']} connections); answers {lat['statuses']}")
        finally:
            for process, _port in servers.values():
                stop_server(process)
        counts = database_counts()
    load_end = os.getloadavg()[0]

    report = Report(args, names, closed, latency, counts, versions, load1, load_end, primed)
    print()
    print("\n".join(report.lines()))
    bad = report.bad()
    if bad:
        print(f"ERRORS: {bad} answers other than 200/201 or failsafe rows", file=sys.stderr)
    if args.write_results:
        write_results(report)
    return 1 if bad else 0


class Report:
    def __init__(self, args, names, closed, latency, counts, versions, load_start, load_end, primed):
        self.args, self.names, self.closed, self.latency, self.primed = args, names, closed, latency, primed
        self.counts, self.versions, self.load_start, self.load_end = counts, versions, load_start, load_end

    def fraction(self) -> float | None:
        if "floor" not in self.closed or not rate(self.closed["floor"]):
            return None
        return rate(self.closed["trialflow"]) / rate(self.closed["floor"])

    def bad(self) -> int:
        return (sum(errors(c["statuses"]) for c in self.closed.values())
                + sum(errors(lat["statuses"]) for lat in self.latency.values()) + errors(self.primed["statuses"])
                + self.counts["failed_signups"])

    def lines(self) -> list[str]:
        a = self.args
        met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
        cells = lambda fn: " | ".join(fn(name) for name in self.names)  # noqa: E731
        tf = self.closed["trialflow"]
        fraction = self.fraction()

        def cpu(name: str) -> str:
            c = cpu_per_signup(self.closed[name])
            return f"{c['server']:.2f} + {c['postgres']:.2f} + {c['generator']:.2f} ms"

        def pcts(name: str) -> str:
            lat = self.latency[name]
            return f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} ms"

        header = "| measure | " + " | ".join(self.names) + " | target | |"
        rows = [
            header,
            "| --- |" + " ---: |" * len(self.names) + " --- | --- |",
            f"| signups/s, closed loop ({a.connections} connections, {a.rounds} x {a.seconds / a.rounds:g} s) | "
            + cells(lambda n: f"{rate(self.closed[n]):,.0f}/s")
            + f" | >= {TARGET_RATE:,.0f}/s | {met(rate(tf) >= TARGET_RATE)} |",
        ]
        if fraction is not None:
            rows.append(f"| trialflow as a fraction of the floor | {fraction:.2f} | 1 | >= {TARGET_FLOOR_FRACTION:g} "
                        f"| {met(fraction >= TARGET_FLOOR_FRACTION)} |")
        rows += [
            f"| latency p50 / p95 / p99 at {a.rate:g}/s open loop | " + cells(pcts)
            + f" | p99 < {TARGET_P99_MS:g} ms | {met(self.latency['trialflow']['p99'] < TARGET_P99_MS)} |",
            "| CPU per signup: server + PostgreSQL backends + load generator | " + cells(cpu) + " | | |",
            "| busiest worker's share of the server's CPU | "
            + cells(lambda n: f"{100 * busiest_share(self.closed[n]['workers']):.0f} %") + " | | |",
            "| answers other than 200/201 | "
            + cells(lambda n: str(errors(self.closed[n]["statuses"]) + errors(self.latency[n]["statuses"])))
            + f" | 0 | {met(not self.bad())} |",
        ]
        exited = cpu_per_signup(tf)["exited backends"]
        return rows + [
            "",
            f"machine: {machine()}; load average {self.load_start:.2f} at the start, {self.load_end:.2f} at the end",
            f"stack: {self.versions}",
            f"setup: uvicorn, {a.workers} workers each, httptools + uvloop; PostgreSQL `{DB_NAME}` on this machine; "
            "load generator in its own process (raw HTTP/1.1 keep-alive, asyncio + uvloop); effect delivery not running",
            f"CPU per signup is over each closed loop's signups, warm-up included (trialflow's PostgreSQL figure leaves "
            f"out up to {exited:.2f} ms in backends that exited, any database's)",
            f"database afterwards: {self.counts['trials']:,} trials, {self.counts['claimed']:,} claimed instances, "
            f"{self.counts['outbox']:,} outbox rows, {self.counts['failed_signups']} failsafe rows, "
            f"{self.counts[FLOOR_TABLE]:,} floor rows",
        ]


def write_results(report: Report) -> None:
    a = report.args
    command = ("bench/bench_signups.py --workers {w} --connections {c} --seconds {s:g} --rounds {n} --rate {r:g} "
               "--latency-seconds {l:g}{f}").format(w=a.workers, c=a.connections, s=a.seconds, n=a.rounds, r=a.rate,
                                                    l=a.latency_seconds, f=" --no-floor" if a.no_floor else "")
    text = RESULTS.read_text() if RESULTS.exists() else ""
    marker = "<!-- bench_signups -->"
    lines = report.lines()
    table, notes = lines[:lines.index("")], lines[lines.index("") + 1:]
    section = "\n".join([
        marker,
        "## Signups over HTTP (`bench/bench_signups.py`)",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `.venv/bin/python {command}`",
        *(f"- {line}" for line in notes),
        f"- mix: 70 % new company domains, 10 % public mailboxes, 10 % colleagues at {SIGNING_UP_ACCOUNTS} of the "
        f"{ACCOUNTS:,} pre-qualified accounts (first one claims a pool instance, the rest join it), 10 % repeats",
        "- floor: the same uvicorn command serving a bare ASGI app that writes each signup as one INSERT into a "
        "copy of trials (same columns and indexes), psycopg async connections in autocommit",
        "",
        *table,
        marker,
    ])
    if marker in text:
        head, _, rest = text.partition(marker)
        _, _, tail = rest.partition(marker)
        text = head + section + tail
    else:
        text = (text or "# Signup benchmarks\n\n") + section + "\n"
    RESULTS.write_text(text)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    raise SystemExit(main())
