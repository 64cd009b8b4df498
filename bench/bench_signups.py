"""Signups per second over real HTTP, and signup latency at a fixed open-loop rate.

Real pieces: PostgreSQL (database ``trialflow_bench``, created if missing, rebuilt each run),
trialflow's app under uvicorn (``--workers``, httptools, uvloop) as a separate process tree, and a
load generator in its own process speaking raw HTTP/1.1 keep-alive over asyncio (httpx would cost
more CPU than the server on this 2-core machine, and the generator shares those cores).

What is measured is the API: each signup routes, writes its trial, history and outbox rows and
commits (synchronous_commit as configured on the server, normally on). Effect delivery is not
running, as with ``TRIALFLOW_BROKER_URL`` set, where Celery workers elsewhere deliver them.

The mix of emails (per generator, seeded): 70 % new company domains (triage, case 3), 10 % public
mailbox addresses (triage), 10 % addresses at 200 of the 3,000 pre-qualified accounts (the first
signup of an account claims a pool instance, its colleagues join it: case 2 then case 1; each run
has up to 200 claims, and every claim serialises on the capacity lock), 10 % repeats of an
address already sent (answered 200 with the same trial).

    .venv/bin/python bench/bench_signups.py [--workers 2] [--connections 32] [--seconds 20]
                                            [--rate 200] [--latency-seconds 20] [--write-results]

Targets (issue 2): >= 1,000 signups/s sustained; p99 < 25 ms at 200 signups/s open loop.
Answers other than 200/201 (a 202 is the failsafe catching a routing failure) count as errors.
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
from datetime import datetime, timezone
from pathlib import Path
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DB_NAME = "trialflow_bench"
DB_URL = os.environ.get("TRIALFLOW_BENCH_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}")
RESULTS = ROOT / "bench" / "RESULTS-signups.md"
ACCOUNTS = 3000          # pre-qualified accounts in accounts.csv (one in five named)
SIGNING_UP_ACCOUNTS = 200  # the accounts whose people sign up during a run (a campaign's targets)
POOL = 300               # pre-provisioned instances: more than the accounts that claim one, so none waits
MIX = (("new_company", 70), ("public", 10), ("prequalified", 10), ("repeat", 10))
TARGET_RATE = 1000.0
MAX_OPEN_LOOP_CONNECTIONS = 256  # beyond this, scheduled signups queue (and the queueing counts as latency)
TARGET_P99_MS = 25.0


def make_app():
    """uvicorn --factory entry point: trialflow's app on the settings in the environment."""
    from trialflow.api.app import create_app
    from trialflow.runtime import Runtime
    return create_app(Runtime())


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
    from sqlalchemy import func, select

    from trialflow.db import tables
    from trialflow.db.engine import make_engine
    engine = make_engine(DB_URL)
    with engine.connect() as conn:
        counts = {name: conn.scalar(select(func.count()).select_from(t)) for name, t in (
            ("trials", tables.trials), ("failed_signups", tables.failed_signups), ("outbox", tables.outbox))}
        counts["claimed"] = conn.scalar(select(func.count()).select_from(tables.instances)
                                        .where(tables.instances.c.trial_id.is_not(None)))
    engine.dispose()
    return counts


# --- the server ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, workers: int, config_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "TRIALFLOW_DATABASE_URL": DB_URL, "TRIALFLOW_CONFIG_DIR": str(config_dir),
           "TRIALFLOW_INSTANCE_CAP": "1000000", "TRIALFLOW_BROKER_URL": "", "PYTHONPATH": str(ROOT),
           # Every request comes from this one machine: the limits are counted (their cost is in
           # the numbers) but set where they never refuse.
           "TRIALFLOW_SIGNUP_RATE_PER_IP": "1000000/second", "TRIALFLOW_SIGNUP_RATE_PER_DOMAIN": "1000000/second"}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "bench_signups:make_app", "--app-dir", str(ROOT / "bench"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--http", "httptools",
           "--loop", "uvloop", "--no-access-log", "--log-level", "warning", "--backlog", "2048",
           "--timeout-keep-alive", "30"]
    server = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"uvicorn exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    stop_server(server)
    raise SystemExit("uvicorn did not answer /healthz within 30 s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


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
    for _, writer in idle:
        writer.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {"completed": len(latencies), "statuses": statuses, "p50": pct(50), "p95": pct(95), "p99": pct(99),
            "max": latencies[-1] * 1000, "mean": statistics.fmean(latencies) * 1000, "rate": rate,
            "connections": opened}


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
    result = out.get(timeout=args["warmup"] + args["seconds"] + 120)
    process.join()
    if "failed" in result:
        raise SystemExit(f"the {mode}-loop load generator failed: {result['failed']}")
    return result


# --- reporting ------------------------------------------------------------------------------

def machine() -> str:
    return describe()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, from /proc (Linux); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command name) of every process (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                before, _, after = (entry / "stat").read_text().rpartition(")")
                found.append((int(entry.name), int(after.split()[1]), before.partition("(")[2]))
            except OSError:
                continue
    return found


def cpu_snapshot(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server's processes and by PostgreSQL's backends, so the run
    can report CPU per signup: unlike signups/s, that does not change with what else the machine runs."""
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
        if DB_NAME.encode() in cmdline:
            postgres += _cpu_seconds(pid)
        elif ppid == 1 or b" -D " in cmdline.replace(b"\0", b" "):
            # The postmaster: backends that have exited (connections closed) add their CPU to
            # its children's total. Other databases' backends count there too, so this is an upper bound.
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                exited += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                pass
    return {"server": sum(_cpu_seconds(pid) for pid in server), "postgres": postgres, "exited backends": exited}


def errors(statuses: dict) -> int:
    return sum(n for status, n in statuses.items() if status not in (200, 201))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--connections", type=int, default=32, help="closed-loop concurrent connections")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="closed-loop measuring time")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop signups per second")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--write-results", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="trialflow-bench-") as tmp:
        config_dir = write_config(Path(tmp) / "config")
        fresh_database(config_dir)
        port = free_port()
        server = start_server(port, args.workers, config_dir)
        try:
            load1 = os.getloadavg()[0]
            cpu_before = cpu_snapshot(server.pid)
            throughput = run_generator("closed", port, 1, "t", connections=args.connections, warmup=args.warmup,
                                       seconds=args.seconds)
            cpu_after = cpu_snapshot(server.pid)
            latency = run_generator("open", port, 2, "l", rate=args.rate, warmup=2.0, seconds=args.latency_seconds)
        finally:
            stop_server(server)
        counts = database_counts()

    rate = throughput["completed"] / throughput["seconds"]
    print(f"machine: {machine()}; load average before the run: {load1:.2f}")
    print(f"throughput: {throughput['completed']} signups in {throughput['seconds']:.0f} s = {rate:,.0f}/s "
          f"({args.connections} connections, {args.workers} workers); answers {throughput['statuses']}")
    print(f"latency at {args.rate:.0f}/s open loop: p50 {latency['p50']:.1f} ms, p95 {latency['p95']:.1f} ms, "
          f"p99 {latency['p99']:.1f} ms, max {latency['max']:.1f} ms over {latency['completed']} signups "
          f"({latency['connections']} connections); answers {latency['statuses']}")
    print(f"database after the run: {counts}")
    # Over the whole closed loop (warm-up included, as are its signups): CPU per signup answered.
    sent = throughput["sent"]
    cpu = {k: 1000 * (cpu_after[k] - cpu_before[k]) / sent for k in cpu_after} if sent else {}
    if cpu:
        cpu["load generator"] = 1000 * throughput["cpu_seconds"] / sent
        print(f"CPU per signup in the closed loop: server {cpu['server']:.2f} ms, PostgreSQL backends "
              f"{cpu['postgres']:.2f} ms (+ {cpu['exited backends']:.2f} ms in backends that exited, any database), "
              f"load generator {cpu['load generator']:.2f} ms")
    bad = errors(throughput["statuses"]) + errors(latency["statuses"]) + counts["failed_signups"]
    if bad:
        print(f"ERRORS: {bad} answers other than 200/201 or failsafe rows", file=sys.stderr)

    if args.write_results:
        write_results(args, rate, throughput, latency, counts, load1)
    return 1 if bad else 0


def write_results(args, rate, throughput, latency, counts, load1) -> None:
    command = ("bench/bench_signups.py --workers {w} --connections {c} --seconds {s:g} --rate {r:g} "
               "--latency-seconds {l:g}").format(w=args.workers, c=args.connections, s=args.seconds, r=args.rate,
                                                 l=args.latency_seconds)
    met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    text = RESULTS.read_text() if RESULTS.exists() else ""
    marker = "<!-- bench_signups -->"
    section = "\n".join([
        marker,
        "## Signups over HTTP (`bench/bench_signups.py`)",
        "",
        f"- machine: {machine()}; load average when it started: {load1:.2f}",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `.venv/bin/python {command}`",
        f"- setup: uvicorn, {args.workers} workers, httptools + uvloop; PostgreSQL `{DB_NAME}` on the same machine; "
        "load generator in its own process (raw HTTP/1.1 keep-alive, asyncio + uvloop); effect delivery not running",
        f"- mix: 70 % new company domains, 10 % public mailboxes, 10 % colleagues at {SIGNING_UP_ACCOUNTS} of the "
        f"{ACCOUNTS:,} pre-qualified accounts (first one claims a pool instance, the rest join it), 10 % repeats",
        "",
        "| measure | result | target | |",
        "| --- | --- | --- | --- |",
        f"| sustained signups/s ({args.connections} connections, closed loop, {args.seconds:g} s) | {rate:,.0f}/s "
        f"| >= {TARGET_RATE:,.0f}/s | {met(rate >= TARGET_RATE)} |",
        f"| latency p50 at {args.rate:g}/s open loop | {latency['p50']:.1f} ms | | |",
        f"| latency p95 at {args.rate:g}/s open loop | {latency['p95']:.1f} ms | | |",
        f"| latency p99 at {args.rate:g}/s open loop | {latency['p99']:.1f} ms | < {TARGET_P99_MS:g} ms "
        f"| {met(latency['p99'] < TARGET_P99_MS)} |",
        f"| answers other than 200/201, failsafe rows | {errors(throughput['statuses']) + errors(latency['statuses'])}, "
        f"{counts['failed_signups']} | 0 | {met(not (errors(throughput['statuses']) + errors(latency['statuses']) + counts['failed_signups']))} |",
        "",
        f"Answers: throughput {throughput['statuses']}, latency {latency['statuses']}; "
        f"database afterwards: {counts['trials']:,} trials, {counts['claimed']:,} claimed instances, "
        f"{counts['outbox']:,} outbox rows.",
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
