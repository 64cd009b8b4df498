"""The ``/trial`` slash command (``POST /slack/commands``; the route has verified the signature).

``status``, ``mine`` and ``queue`` only read; ``domain`` takes the ``request_domain_change``
step through ``slack_steps.run_command``, once per Slack trigger. Answers are ephemeral, and
only active staff (staff.csv, by Slack user id) get one.
"""
from __future__ import annotations

import logging
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.normalize import normalize_domain, normalize_email
from trialflow.domain.trial import Trial
from trialflow.errors import InvalidSignup
from trialflow.services import fit as limits
from trialflow.services.app_home import open_trials_of, triage_queue
from trialflow.services.calendar import calendar_for
from trialflow.services.directory import Directory, Person, set_away
from trialflow.services.slack_steps import esc, run_command
from trialflow.services.timers import deadlines
from trialflow.services.uow import App

log = logging.getLogger("trialflow.interactions")

HELP = """*/trial* — cloud trials from Slack (answers are only visible to you)
• `/trial status <email|domain>` — where a trial is, who owns it, what is next
• `/trial mine` — open trials where you are the SDR, AE or CE, soonest deadline first
• `/trial queue` — the triage queue, highest lead score first
• `/trial domain <trial id|email> <new-subdomain>` — request a vanity domain (GitHub issue with the checklist; the AE is told)
• `/trial away <YYYY-MM-DD>` — you are away through that date: the rotation skips you, your backup (or the trial's AE) gets your prompts
• `/trial back` — you are back
• `/trial help` — this"""

QUEUE_LIMIT = 20
LIST_LIMIT = 20


def handle_slash_command(rt: App, form: dict[str, str]) -> dict[str, Any]:
    user_id = form.get("user_id", "")
    words = (form.get("text") or "").split()
    sub = words[0].lower() if words else "help"
    args = words[1:]
    with rt.session_factory() as session:
        person = Directory(session).by_slack_id(user_id)
        if person is None or not person.active:
            log.warning("refused: /trial %s from %s, who is not active staff", sub, user_id)
            return _answer(":no_entry: `/trial` is for the trials team: your Slack user is not an active member "
                           "of staff.csv. Ask an admin to add you.")
        if sub == "help":
            return _answer(HELP)
        if sub == "status":
            if len(args) != 1:
                return _answer("Usage: `/trial status <email|domain>`, like `/trial status bob@acme-corp.com`.")
            return _answer(_status(session, args[0]))
        if sub == "mine":
            return _answer(_mine(session, person))
        if sub == "queue":
            return _answer(_queue(session))
        if sub in ("away", "back"):
            return _answer(_away(rt, session, person, sub, args))
    if sub == "domain":
        if len(args) != 2:
            return _answer("Usage: `/trial domain <trial id|email> <new-subdomain>`, like `/trial domain bob@acme-corp.com acme-corp`.")
        return _answer(_domain_change(rt, form, user_id, args[0], args[1]))
    return _answer(f"I do not know `/trial {esc(sub)}`.\n{HELP}")


def _answer(text: str) -> dict[str, Any]:
    # Slack truncates a text past 40,000 characters wherever it falls; we cut between escapes and mentions.
    return {"response_type": "ephemeral", "text": limits.clip(text, limits.SLACK_MESSAGE_TEXT)}


def _deadline_text(session: Session, trial: Trial) -> str:
    upcoming = deadlines(session, trial.id)
    if not upcoming:
        return ""
    kind, due = next(iter(upcoming.items()))
    return f" · next: {kind.replace('_', ' ')} on {due[:10]}"


def _trial_line(session: Session, trial: Trial) -> str:
    people = Directory(session)
    bits = [f"*{esc(trial.email)}* (`{trial.id}`) — *{trial.state.replace('_', ' ')}*",
            f"{esc(trial.account_name or trial.domain)}"]
    if trial.instance_url:
        bits.append(trial.instance_url)
    line = " · ".join(bits)
    owners = f"SDR {people.mention(trial.sdr)} · AE {people.mention(trial.ae)} · CE {people.mention(trial.ce)}"
    score = f"MQL {trial.mql_points or 0} pts · PQL {trial.pql_grade or '-'}"
    activity = f" · last activity {trial.last_activity_at:%Y-%m-%d}" if trial.last_activity_at else ""
    return f"{line}\n      {owners} · {score}{activity}{_deadline_text(session, trial)}"


def _status(session: Session, query: str) -> str:
    query = query.strip().strip("<>")
    if query.startswith("mailto:"):
        query = query.split("|", 1)[0][len("mailto:"):]
    try:
        if "@" in query:
            address = normalize_email(query).address
            trials = session.scalars(select(Trial).where(tables.trials.c.email == address)).all()
        else:
            domain = normalize_domain(query.split("|", 1)[-1])
            trials = session.scalars(select(Trial).where(tables.trials.c.domain == domain)
                                     .order_by(tables.trials.c.created_at.desc()).limit(LIST_LIMIT)).all()
    except InvalidSignup as exc:
        return f":warning: {esc(exc.message)}"
    if not trials:
        return f"No trial for `{esc(query)}`."
    return "\n".join(_trial_line(session, t) for t in trials)


def _mine(session: Session, person: Person) -> str:
    trials, total = open_trials_of(session, person.email, LIST_LIMIT)
    if not trials:
        return f"No open trials where you ({esc(person.name)}) are the SDR, AE or CE."
    shown = f", first {LIST_LIMIT} shown" if total > LIST_LIMIT else ""
    head = f"*Your open trials* ({total}, soonest deadline first{shown}):"
    return "\n".join([head, *(_trial_line(session, trial) for trial, _due in trials)])


def _queue(session: Session) -> str:
    trials = triage_queue(session)
    waiting = session.scalar(select(func.count()).select_from(tables.trials)
                             .where(tables.trials.c.state == lc.WAITING_FOR_CAPACITY))
    total = session.scalar(select(func.count()).select_from(tables.trials).where(tables.trials.c.state == lc.TRIAGE))
    if not trials:
        text = "The triage queue is empty."
    else:
        lines = [f"*Triage queue* ({total}, highest lead score first):"]
        for n, trial in enumerate(trials, 1):
            mql = trial.mql_points or 0
            lines.append(f"{n}. MQL {mql}{' (MQL)' if mql >= 15 else ''} · PQL {trial.pql_grade or '-'} · "
                         f"*{esc(trial.name or trial.email)}* {esc(trial.email)} ({esc(trial.company or trial.domain)}) · "
                         f"since {trial.created_at:%Y-%m-%d} · `{trial.id}`")
        text = "\n".join(lines)
    if waiting:
        text += f"\n{waiting} qualified trial(s) wait for capacity; they proceed by themselves."
    return text


def _away(rt: App, session: Session, person: Person, sub: str, args: list[str]) -> str:
    today = calendar_for(rt.settings).today(rt.clock.now())
    if sub == "back":
        if args:
            return "Usage: `/trial back`."
        set_away(session, person.email, None)
        session.commit()
        log.info("%s is back", person.email)
        return ":wave: Welcome back: you are in the rotation again, and your prompts come to you."
    try:
        if len(args) != 1:
            raise ValueError
        until = date.fromisoformat(args[0])
    except ValueError:
        return "Usage: `/trial away <YYYY-MM-DD>` (the last day you are away), like `/trial away 2026-12-08`."
    if until < today:
        return f":warning: {until} is in the past (today is {today})."
    set_away(session, person.email, until)
    session.commit()
    log.info("%s is away until %s", person.email, until)
    backup = Directory(session).by_email(person.backup)
    covered = (f"your backup {esc(backup.name)}" if backup is not None and backup.active
               else "each trial's AE (no backup is set for you in staff.csv)")
    return (f":palm_tree: You are away through {until}: the rotation skips you until then, and while you are away "
            f"prompts for your trials as CE go to {covered}. `/trial back` when you return.")


def _domain_change(rt: App, form: dict[str, str], user_id: str, target: str, subdomain: str) -> str:
    with rt.session_factory() as session:
        if target.startswith("tr_"):
            trial_id = target
        else:
            try:
                address = normalize_email(target.strip("<>").removeprefix("mailto:").split("|", 1)[0]).address
            except InvalidSignup as exc:
                return f":warning: {esc(exc.message)}"
            found: str | None = session.scalar(select(tables.trials.c.id).where(tables.trials.c.email == address))
            if found is None:
                return f"No trial for `{esc(address)}`."
            trial_id = found
    outcome = run_command(rt, key=f"command:{form.get('trigger_id') or ''}:{trial_id}" if form.get("trigger_id") else None,
                          trial_id=trial_id, action=lc.REQUEST_DOMAIN_CHANGE, actor=user_id,
                          detail={"subdomain": subdomain}, person_of=lambda people: people.by_slack_id(user_id),
                          keep_key_on_invalid=False)
    if outcome.status == "duplicate":
        return "That request was already handled."
    if outcome.status == "invalid":
        return f":warning: {esc(outcome.text)}"
    if outcome.status == "done":
        return (f":white_check_mark: Domain change to `{esc(subdomain.lower())}` requested: the cloud team gets a GitHub "
                "issue with the checklist (SSO, permission syncing, webhooks, hard-coded links), and the AE is told.")
    return outcome.text
