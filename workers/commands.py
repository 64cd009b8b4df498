"""The `trialflow worker` and `trialflow beat` commands: the supervised Celery worker and its
liveness check, beat with its schedule in trialflow's data directory and its own check."""
from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

from trialflow.datadir import data_dir
from trialflow.settings import Settings, get_settings
from workers import liveness, supervisor
from workers.celery_app import make_celery_app

BEAT_STALE_SECONDS = 300


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.check:
        alive, why = liveness.check(settings, args.name)
        print(f"worker {args.name}: {'alive' if alive else 'NOT ALIVE'}: {why}")
        return 0 if alive else 1
    if args.no_supervisor:
        return _celery_worker(settings, args)
    return supervisor.Supervisor(settings, args.name, partial(_celery_worker, settings, args)).run()


def _celery_worker(settings: Settings, args: argparse.Namespace) -> int:
    app = make_celery_app()
    app.conf.trialflow_heartbeat_file = str(liveness.worker_files(settings, args.name).heartbeat)
    # No gossip, mingle or heartbeat: trialflow's workers never talk to each other (the database
    # coordinates them), and each is one more thing to re-establish when Redis restarts.
    argv = ["worker", "--loglevel=INFO", f"--concurrency={args.concurrency}", "--prefetch-multiplier=1",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if args.queues:
        argv.append(f"--queues={args.queues}")
    app.worker_main(argv)
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    settings = get_settings()
    schedule = beat_schedule(settings)
    if args.check:
        # Beat saves its schedule at least every 3 minutes while it is ticking; a stale file is a stuck beat.
        saved = [p.stat().st_mtime for p in schedule.parent.glob(schedule.name + "*")]
        fresh = bool(saved) and time.time() - max(saved) < BEAT_STALE_SECONDS
        print(f"beat: {'alive' if fresh else 'NOT ALIVE'}: schedule {schedule} "
              + (f"saved {time.time() - max(saved):.0f}s ago" if saved else "never saved"))
        return 0 if fresh else 1
    app = make_celery_app()
    app.start(["beat", "--loglevel=INFO", f"--schedule={schedule}"])
    return 0


def beat_schedule(settings: Settings) -> Path:
    """Beat's schedule file: in trialflow's private data directory, never at a fixed shared path."""
    return data_dir(settings) / "celerybeat-schedule"
