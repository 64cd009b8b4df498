"""How long `trialflow config load` takes for 100,000 accounts, on SQLite and on PostgreSQL.

    .venv/bin/python bench/bench_config_load.py [--accounts 100000] [--runs 3] [--write bench/RESULTS-config.md]

Each run is the real command (`python -m trialflow.cli config load --dir ...`) in a fresh process,
timed from start to exit, so it includes interpreter start-up, CSV validation, and the single
transaction that replaces the accounts. Run 1 loads into an empty database; later runs replace
100,000 existing rows (what a daily re-load does). The target: under 30 s per load. Exit code 1
if any run misses it. PostgreSQL: TRIALFLOW_BENCH_POSTGRES_URL (default: database trialflow_bench_config
on 127.0.0.1; it is dropped and created again).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402

from tests.support.config import write_config  # noqa: E402  (small staff.csv and instances.csv)

TARGET_SECONDS = 30.0
POSTGRES_URL = os.environ.get("TRIALFLOW_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/trialflow_bench_config")
HEADER = "domain,account_name,prequalified,named_account,named_sdr,owner_ae,owner_ce\n"


def write_accounts(directory: Path, n: int) -> Path:
    """n accounts; every tenth a named account with its SDR, AE and CE, every third pre-qualified."""
    write_config(directory)
    with (directory / "accounts.csv").open("w") as fh:
        fh.write(HEADER)
        for i in range(n):
            named = i % 10 == 0
            fh.write(f"account-{i:06d}.example,Account {i},{'true' if named or i % 3 == 0 else 'false'},"
                     f"{'true' if named else 'false'},{'nina.named@example.com' if named else ''},"
                     f"{'alice.ae@example.com' if named else ''},{'carol.ce@example.com' if named else ''}\n")
    return directory


def fresh_postgres(url: str) -> str:
    import psycopg
    from sqlalchemy.engine import make_url
    u = make_url(url)
    with psycopg.connect(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres",
                         password=u.password, dbname="postgres", autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{u.database}"')
        conn.execute(f'CREATE DATABASE "{u.database}"')
    return url


def load(db_url: str, directory: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALFLOW_")}
    env["TRIALFLOW_DATABASE_URL"] = db_url
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "trialflow.cli", "config", "load", "--dir", str(directory)],
                          env=env, capture_output=True, text=True, cwd=directory)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"config load failed on {db_url.split('@')[-1]}:\n{done.stderr}")
    return seconds


def migrate(db_url: str) -> None:
    from trialflow.db.migrate import upgrade
    upgrade(db_url)  # outside the timing: `config load` migrates too, but that is not the import


def machine() -> str:
    cpu = cpu_model()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{os.cpu_count()} CPU(s), {cpu}; Python {platform.python_version()}; {platform.system()} {platform.release()}; "
            f"load average before the runs {load} (other work on the machine slows the runs)")


def postgres_version(url: str) -> str:
    from sqlalchemy import create_engine, text

    from trialflow.db.engine import normalize_url
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar()
    engine.dispose()
    return f"PostgreSQL {version}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--write", help="write the results as Markdown to this file")
    args = p.parse_args()
    results: dict[str, list[float]] = {}
    where = machine()
    with tempfile.TemporaryDirectory(prefix="trialflow-bench-") as tmp:
        directory = write_accounts(Path(tmp) / "config", args.accounts)
        size = (directory / "accounts.csv").stat().st_size
        targets = {"SQLite": f"sqlite:///{tmp}/bench.db", "PostgreSQL": fresh_postgres(POSTGRES_URL)}
        for name, url in targets.items():
            migrate(url)
            results[name] = [load(url, directory) for _ in range(args.runs)]
            print(f"{name:<11} " + "  ".join(f"{s:6.2f} s" for s in results[name]), flush=True)
        pg = postgres_version(targets["PostgreSQL"])
    worst = max(max(v) for v in results.values())
    verdict = "meets" if worst < TARGET_SECONDS else "MISSES"
    lines = [
        "# `trialflow config load`: 100,000 accounts",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `bench/bench_config_load.py --accounts {args.accounts} "
        f"--runs {args.runs}` on {where}; {pg}.",
        "",
        f"accounts.csv: {args.accounts:,} rows, {size / 1e6:.1f} MB. Each run is the real command in a fresh process "
        "(start-up, validation of every row, one transaction that replaces the accounts); run 1 loads into an empty "
        f"database, later runs replace {args.accounts:,} existing rows. Target: under {TARGET_SECONDS:.0f} s per load.",
        "",
        "| database | run 1 (empty) | later runs (replace) | median | rows/s (median) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in results.items():
        median = statistics.median(runs)
        later = ", ".join(f"{s:.2f} s" for s in runs[1:]) or "–"
        lines.append(f"| {name} | {runs[0]:.2f} s | {later} | {median:.2f} s | {args.accounts / median:,.0f} |")
    lines += ["", f"Slowest load: {worst:.2f} s, which {verdict} the {TARGET_SECONDS:.0f} s target.", ""]
    report = "\n".join(lines)
    print(report)
    if args.write:
        Path(args.write).write_text(report)
    return 0 if worst < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
