"""``trialflow reconcile``: compare what trialflow believes (trials, domain claims, the instance
inventory, the cloud team's open requests) with what the world answers (each instance's API,
GitHub's issues), and list where they disagree. It lists and does not act: every finding is for a
person to look at. Run by hand (``--json`` for scripts) and once a day, into #cloud-trial-alerts.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.domain import lifecycle as lc
from trialflow.domain.instance_admin import InstanceAdmin
from trialflow.errors import DeliveryError
from trialflow.services import outbox
from trialflow.services import slack_blocks as sb

log = logging.getLogger("trialflow.reconcile")

SILENT_AFTER = timedelta(days=1)
PROBES_AT_ONCE = 8
SLACK_LINES = 15
# (issue numbers) -> their state on GitHub ("open"/"closed"); numbers GitHub does not know are left out.
IssueStates = Callable[[list[int]], dict[int, str]]

LIVE_WITHOUT_TRIAL = "live instance with no trial"
TERMINATED_ANSWERS = "terminated trial whose instance still answers"
SILENT = "trial whose instance has not answered for a day"
STALE_CLAIM = "domain claim on an instance that is not live"
OVERDUE = "cloud request open past its SLA"
CLOSED_NOT_DONE = "issue closed on GitHub, request still open in trialflow"


@dataclass(frozen=True)
class Finding:
    kind: str
    host: str | None
    trial_id: str | None
    detail: str


@dataclass
class Report:
    at: datetime
    instances_asked: int = 0
    findings: list[Finding] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "instances_asked": self.instances_asked,
                "findings": [asdict(f) for f in self.findings]}

    def lines(self) -> list[str]:
        return [f"{f.kind}: {f.host or '-'} (trial {f.trial_id or '-'}): {f.detail}" for f in self.findings]


def _probe(api: InstanceAdmin | None, settings: Any, hosts: list[str]) -> dict[str, str | None]:
    """host -> None when its API answers now, else why not. Hosts trialflow holds no token for are left out."""
    if api is None:
        return {}
    askable = [h for h in hosts if settings.instance_token_for(h) is not None]

    def ask(host: str) -> tuple[str, str | None]:
        try:
            api.site(host)
            return host, None
        except DeliveryError as exc:
            return host, str(exc)
        except Exception as exc:  # noqa: BLE001 - a report lists what it could not learn
            return host, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=PROBES_AT_ONCE) as pool:
        return dict(pool.map(ask, askable))


def reconcile(rt: Any, api: InstanceAdmin | None = None, issue_states: IssueStates | None = None,
              now: datetime | None = None) -> Report:
    now = now or rt.clock.now()
    report = Report(at=now)
    t, c, r = tables.trials.c, tables.domain_claims.c, tables.cloud_requests.c
    with rt.session_factory() as session:
        inventory = {row.host: row for row in session.execute(select(tables.instances))}
        trials = session.execute(select(t.id, t.state, t.instance_host).where(t.instance_host.is_not(None))).all()
        claims = session.execute(select(c.domain, c.instance_host)).all()
        open_requests = session.execute(select(tables.cloud_requests).where(r.completed_at.is_(None))).all()
        opened = {row.key: (row.result or {}).get("number") for row in session.execute(
            select(tables.outbox.c.key, tables.outbox.c.result).where(
                tables.outbox.c.key.in_([q.key for q in open_requests]), tables.outbox.c.status == "delivered"))}
    by_host: dict[str, list[Any]] = {}
    for trial in trials:
        by_host.setdefault(trial.instance_host, []).append(trial)
    live = [h for h, row in inventory.items() if row.status == "live"]
    gone = sorted({tr.instance_host for tr in trials if tr.state == lc.TERMINATED})
    answers = _probe(api, rt.settings, sorted(set(live) | set(gone)))
    report.instances_asked = len(answers)

    for host in sorted(live):
        owners = [tr for tr in by_host.get(host, []) if tr.state not in lc.FINAL_STATES or tr.state == lc.CONVERTED]
        if not owners:
            trial_id = inventory[host].trial_id
            where = "listed in instances.csv" if trial_id is None else f"its trial {trial_id} is over"
            report.findings.append(Finding(LIVE_WITHOUT_TRIAL, host, trial_id, where))
    for host in gone:
        if answers.get(host, "unasked") is None:
            row = inventory.get(host)
            confirmed = row is not None and row.teardown_confirmed_at is not None
            [trial_id] = [tr.id for tr in by_host[host] if tr.state == lc.TERMINATED][:1] or [None]
            report.findings.append(Finding(TERMINATED_ANSWERS, host, trial_id, "the cloud team confirmed it gone"
                                           if confirmed else "its termination is not confirmed yet"))
    for trial in trials:
        if trial.state not in lc.LIVE_TRIAL or rt.settings.instance_token_for(trial.instance_host) is None:
            continue
        if answers.get(trial.instance_host, "unasked") is None:
            continue  # it answers now
        row = inventory.get(trial.instance_host)
        last = row.api_answered_at if row is not None else None
        since = last or (row.claimed_at if row is not None else None)
        if since is None or since < now - SILENT_AFTER:
            seen = f"last answered {last.isoformat()}" if last else "never answered"
            why = answers.get(trial.instance_host) or "no answer recorded for a day"
            report.findings.append(Finding(SILENT, trial.instance_host, trial.id, f"{seen}; {why}"))
    for claim in claims:
        row = inventory.get(claim.instance_host) if claim.instance_host else None
        if claim.instance_host and (row is None or row.status != "live"):
            status = row.status if row is not None else "unknown"
            report.findings.append(Finding(STALE_CLAIM, claim.instance_host, None,
                                           f"{claim.domain} is routed there, but it is {status}"))
    sla = timedelta(hours=rt.settings.cloud_sla_hours)
    numbers = {q.key: n for q, n in ((q, opened.get(q.key)) for q in open_requests) if isinstance(n, int)}
    states = issue_states(sorted(set(numbers.values()))) if issue_states and numbers else {}
    for request in open_requests:
        number = numbers.get(request.key)
        if number is not None and states.get(number) == "closed":
            report.findings.append(Finding(CLOSED_NOT_DONE, None, request.trial_id,
                                           f"{request.kind} #{number}: its webhook never arrived"))
        elif request.requested_at < now - sla:
            hours = int((now - request.requested_at).total_seconds() // 3600)
            report.findings.append(Finding(OVERDUE, None, request.trial_id,
                                           f"{request.kind} {'#' + str(number) if number else '(not opened yet)'}, "
                                           f"open for {hours} h"))
    return report


def post_daily(rt: Any, report: Report) -> bool:
    """Post the report to #cloud-trial-alerts once per day (nothing when all agrees)."""
    with rt.uow() as uow:
        day = {"key": f"reconcile:{report.at.date()}", "value": report.at.isoformat()}
        if not insert_ignore(uow.session, tables.kv, day):
            return False
        if report.findings:
            shown = report.lines()[:SLACK_LINES]
            more = len(report.findings) - len(shown)
            text = (f":mag: Reconcile {report.at.date()}: {len(report.findings)} thing(s) disagree "
                    f"({report.instances_asked} instance(s) asked). Nothing was changed.")
            outbox.enqueue(uow, key=f"reconcile:{report.at.date()}", kind="slack.message", now=report.at, payload={
                "channel": rt.settings.alerts_channel,
                **sb.message(text, sb.section("\n".join(f"• {sb.escape(line)}" for line in shown)
                                              + (f"\n… and {more} more: run `trialflow reconcile`." if more else ""))),
            })
        uow.commit()
    return True


def due_today(rt: Any, now: datetime) -> bool:
    with rt.session_factory() as session:
        return session.scalar(select(tables.kv.c.key).where(tables.kv.c.key == f"reconcile:{now.date()}")) is None
