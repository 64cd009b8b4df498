"""How committed effects get delivered: in-process (embedded default) or through Celery."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

from trialflow.delivery.coalesce import Coalescer
from trialflow.delivery.core import Deliverer
from trialflow.delivery.github import issue_states
from trialflow.delivery.relay import InProcessRelay
from trialflow.delivery.sourcegraph import SourcegraphAdmin
from trialflow.delivery.transports import build_transports
from trialflow.errors import ConfigError, DeliveryError
from trialflow.services import crm_accounts, reconcile, reference
from trialflow.services.app_home import HomeViews
from trialflow.services.instance_sync import InstanceRecorder
from trialflow.services.opportunities import OpportunityRecorder
from trialflow.services.sweep import sweep

log = logging.getLogger("trialflow.delivery")
SWEEP_EVERY_SECONDS = 60.0


def build_deliverer(rt, transports=None, lease_seconds: float | None = None) -> Deliverer:
    return Deliverer(rt, transports or build_transports(rt.settings, InstanceRecorder(rt), rt.clock.now, HomeViews(rt),
                                                        OpportunityRecorder(rt)),
                     lease_seconds=lease_seconds or rt.settings.delivery_lease_seconds)


def run_reconcile(rt) -> reconcile.Report:
    """``trialflow reconcile``: the instances asked through their API, GitHub's issues read when configured."""
    api = SourcegraphAdmin(rt.settings)
    try:
        states = partial(issue_states, rt.settings) if rt.settings.github_token is not None else None
        return reconcile.reconcile(rt, api, states)
    finally:
        api.close()


def reconcile_daily(rt) -> None:
    """Once a day, its report in #cloud-trial-alerts (run from serve's loop and Celery's sweep)."""
    now = rt.clock.now()
    if reconcile.due_today(rt, now):
        reconcile.post_daily(rt, run_reconcile(rt))


def refresh_crm_accounts(rt) -> reference.LoadReport | None:
    """The accounts from Salesforce when an hour has passed (serve's loop and Celery beat). A failed
    read changes nothing and is tried again at the next tick."""
    try:
        return crm_accounts.refresh_accounts(rt)
    except (DeliveryError, ConfigError) as exc:
        log.warning("accounts could not be read from Salesforce: %s", exc)
        return None


def start_delivery(rt, with_scheduler: bool = True, send_to_workers: Callable[..., None] | None = None):
    """Start delivery for ``trialflow serve``; returns a function that stops it.

    With a broker, ``send_to_workers(ids, batch_size=n)`` sends the Celery tasks
    (``workers.tasks.dispatch``, handed in by the caller: the workers import this module).
    """
    if rt.settings.broker_url:
        if send_to_workers is None:
            raise ValueError("TRIALFLOW_BROKER_URL is set: start_delivery needs send_to_workers (workers.tasks.dispatch)")
        # The API sends Celery tasks for committed effects (many commits' effects per task when
        # they come fast); beat relays the rest.
        size = rt.settings.delivery_batch_size
        rt.wake = sender = Coalescer(partial(send_to_workers, batch_size=size), size)
        return sender.stop

    last = {"at": 0.0}
    reconciling = threading.Event()
    reading_accounts = threading.Event()

    def accounts_in_background() -> None:
        try:
            refresh_crm_accounts(rt)
        finally:
            reading_accounts.clear()

    def reconcile_in_background() -> None:
        try:
            reconcile_daily(rt)
        except Exception:  # noqa: BLE001 - a report that failed today is tried again at the next tick
            log.warning("the daily reconcile failed", exc_info=True)
        finally:
            reconciling.clear()

    def tick() -> None:
        if with_scheduler and time.monotonic() - last["at"] >= SWEEP_EVERY_SECONDS:
            last["at"] = time.monotonic()
            report = sweep(rt)
            if report.actions:
                log.info("sweep: %s", "; ".join(report.actions))
            if not reconciling.is_set() and reconcile.due_today(rt, rt.clock.now()):
                # Its probes may take a while: never in the way of delivery.
                reconciling.set()
                threading.Thread(target=reconcile_in_background, name="reconcile", daemon=True).start()
            if rt.settings.salesforce_configured and not reading_accounts.is_set():
                reading_accounts.set()
                threading.Thread(target=accounts_in_background, name="crm-accounts", daemon=True).start()

    relay = InProcessRelay(build_deliverer(rt), rt.settings.relay_interval_seconds, on_tick=tick)
    rt.wake = relay.wake
    relay.start()
    return relay.stop
