"""The Celery app: Redis broker, late acks, prefetch of one, a lost worker's task re-queued.

Tasks take ids and call one service function (``workers.tasks``). The beat schedule runs the
relay (re-dispatches effects whose task was lost, e.g. with a restarted Redis) and the sweep.
On Redis the transport is ``workers.broker``'s, which a Redis restart does not crash; the
``workers.liveness.Heartbeat`` step lets the supervisor (``trialflow worker``) see the loop turn.
"""
from __future__ import annotations

import ssl
from typing import Any

from celery import Celery
from celery.signals import setup_logging

from trialflow.logs import configure_logging
from trialflow.settings import get_settings
from workers.liveness import Heartbeat

REDIS_TRANSPORT = "workers.broker:Transport"


@setup_logging.connect
def _use_trialflow_logging(**_kwargs) -> None:
    # Our handler, not Celery's: one line per event, JSON when asked, trial id on every line,
    # and the secret-scrubbing filter applies to worker output too.
    configure_logging()


def make_celery_app(broker_url: str | None = None) -> Celery:
    settings = get_settings()
    broker = broker_url or settings.broker_url
    if not broker:
        raise SystemExit("TRIALFLOW_BROKER_URL is not set: the embedded default delivers in-process (trialflow serve)")
    app = Celery("trialflow", broker=broker, include=["workers.tasks"])
    app.steps["consumer"].add(Heartbeat)
    app.conf.update(**_transport(broker))
    app.conf.update(
        task_acks_late=True,                  # ack after the work, so a killed worker's task is redelivered
        task_reject_on_worker_lost=True,      # ... including when the worker process dies (SIGKILL)
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,   # Redis restarting is an outage to wait out, not a crash
        # An unacked task (its worker died) comes back after this long. Recovery does not wait for
        # it: the beat relay re-sends effects whose lease expired. It only has to be far above
        # the longest batch (half the delivery lease plus its last call), or Redis would hand a
        # batch still running to a second worker.
        broker_transport_options={"visibility_timeout": 3600},
        # Not cancelling on connection loss: a batch that is running finishes and records its
        # results. Its task cannot be acked on the lost connection and comes back later; the
        # lease (trialflow.delivery.core) turns that second run into a no-op.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_default_queue="trialflow",
        beat_schedule={
            "relay": {"task": "trialflow.relay", "schedule": settings.beat_relay_seconds},
            "sweep": {"task": "trialflow.sweep", "schedule": settings.beat_sweep_seconds},
            # Salesforce's accounts; the task itself keeps to salesforce_accounts_every_hours.
            "crm-accounts": {"task": "trialflow.crm_accounts", "schedule": 300.0},
        },
    )
    return app


def _transport(broker: str) -> dict[str, Any]:
    """Redis through ``workers.broker``. kombu turns TLS on by itself only for its own transport's
    ``rediss://`` name, so here it is asked for, with the server's certificate verified."""
    scheme = broker.split("://", 1)[0].lower()
    if scheme == "redis":
        return {"broker_transport": REDIS_TRANSPORT}
    if scheme == "rediss":
        return {"broker_transport": REDIS_TRANSPORT, "broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}
    return {}


_app: Celery | None = None


def get_app() -> Celery:
    global _app
    if _app is None:
        _app = make_celery_app()
    return _app
