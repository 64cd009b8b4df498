"""The issue's Redis scenario in full: Redis restarted six times, 15 s apart, while effects are
committed and delivered; every effect must be delivered within 60 s of the last restart, none
twice, with no human action.

It runs the CI chaos test (tests/integration/test_celery_delivery.py, which restarts Redis 3
times 4 s apart to keep the suite short) with the full numbers: a private redis-server, two
supervised `trialflow worker` processes, `trialflow beat`, the local Slack, GitHub and SMTP
servers, PostgreSQL (a database of the run's own). About two and a half minutes.

    .venv/bin/python bench/chaos_redis.py [--restarts 6] [--interval 15]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/integration/test_celery_delivery.py::test_redis_restarted_repeatedly_under_load_loses_nothing_doubles_nothing_and_needs_no_one"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=6)
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between restarts")
    args = parser.parse_args()
    env = {**os.environ, "CI": "true", "TRIALFLOW_CHAOS_RESTARTS": str(args.restarts),
           "TRIALFLOW_CHAOS_INTERVAL": str(args.interval)}
    print(f"Redis restarted {args.restarts} times, {args.interval:g}s apart, under load:", flush=True)
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", TEST], cwd=ROOT,
                           env=env)


if __name__ == "__main__":
    sys.exit(main())
