"""GitHub signals (``POST /github/webhooks``; the route has verified the signature): the cloud
team's "instance ready" signal on the instance-request issue trialflow filed, and (through
``services.cloud_loop``) their other requests closed or marked ``/done``.

Everything in an instance-request issue's body that trialflow did not write is the lead's (name,
company), so nothing in the body is trusted: the trial is the one whose issue trialflow recorded
filing (the delivered github.issue effect's number), and the instance URL comes only from a
comment written by an authorised cloud/admin member (``/ready <url>`` or an ``Instance: <url>``
line). No URL: nothing is guessed; the issue is asked for one.

A delivery is processed once: its ``X-GitHub-Delivery`` id and its content's ``fingerprint`` are
recorded (``github_deliveries``) in the same transaction as what it causes, so a redelivered
webhook, or a signed body replayed under a fresh delivery id, changes nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.domain import lifecycle as lc
from trialflow.domain.normalize import normalize_domain
from trialflow.errors import InvalidSignup, NotAllowed, NotFound, TransitionRefused
from trialflow.services import outbox
from trialflow.services.cloud_loop import DoneSignal, complete_request
from trialflow.services.directory import Directory, Person
from trialflow.services.trials import CLOUD_ROLES, Command, authorize, get_trial, handle
from trialflow.services.uow import App, UnitOfWork

log = logging.getLogger("trialflow.interactions")

# (repository, issue number) → the issue's comments as (author login, body), oldest first.
IssueComments = Callable[[str, int], list[tuple[str, str]]]

READY_LABEL = "instance-ready"
_MARKER = re.compile(r"<!--\s*trialflow:(tr_[0-9a-f]+):instance-request\s*-->")
_READY_COMMAND = re.compile(r"^[ \t]*/ready\b[ \t]*(\S+)?", re.MULTILINE)
_INSTANCE_LINE = re.compile(r"^[ \t>*_-]*instance[*_]*[ \t]*:[ \t]*<?(\S+?)>?[ \t]*$", re.IGNORECASE | re.MULTILINE)
# The cloud team's other requests (``services.cloud_loop``): the effect marker trialflow ends each issue with.
_EFFECT_MARKER = re.compile(r"<!-- trialflow-effect:(\S+?) -->")
_DONE_COMMAND = re.compile(r"^[ \t]*/done\b", re.MULTILINE)
_NOT_INSTANCES = ("github.com", "githubusercontent.com", "github.io", "githubassets.com", "ghe.com")


# Events whose payloads trialflow reads; any other event is recorded and ignored, its body unread.
READ_EVENTS = ("issues", "issue_comment", "ping")


class _GitHub(BaseModel):
    """The fields of a webhook payload trialflow reads, typed as GitHub documents them; the rest is kept, unread."""
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class GitHubUser(_GitHub):
    login: str | None = None


class GitHubIssue(_GitHub):
    number: int | None = Field(default=None, ge=1)
    body: str | None = None


class GitHubRepository(_GitHub):
    full_name: str | None = None


class GitHubLabel(_GitHub):
    name: str | None = None


class GitHubComment(_GitHub):
    body: str | None = None
    user: GitHubUser | None = None


class Delivery(_GitHub):
    """An ``issues``, ``issue_comment`` or ``ping`` delivery (docs.github.com, "Webhook events and payloads")."""
    action: str | None = None
    issue: GitHubIssue | None = None
    comment: GitHubComment | None = None
    label: GitHubLabel | None = None
    sender: GitHubUser | None = None
    repository: GitHubRepository | None = None
    zen: str | None = None


@dataclass
class ReadySignal:
    trial_id: str
    login: str                  # who labelled the issue or wrote the /ready comment
    issue_number: int | None
    repo: str | None
    comment_body: str | None    # the /ready comment itself (written by ``login``)


def ready_signal(event: str, payload: Delivery | None) -> ReadySignal | str:
    """The signal in a delivery, or why the delivery is not one (``payload`` None: an event trialflow does not read)."""
    if payload is None:
        return f"{event} events are not instance-ready signals"
    issue = payload.issue or GitHubIssue()
    body = issue.body or ""
    login = (payload.sender.login if payload.sender else None) or ""
    repo = payload.repository.full_name if payload.repository else None
    comment_body = None
    if event == "issues" and payload.action == "labeled":
        label = payload.label.name if payload.label else None
        if (label or "").lower() != READY_LABEL:
            return f"label {label!r} is not {READY_LABEL!r}"
    elif event == "issue_comment" and payload.action == "created":
        comment = payload.comment or GitHubComment()
        comment_body = comment.body or ""
        if not _READY_COMMAND.search(comment_body):
            return "the comment is not a /ready command"
        login = (comment.user.login if comment.user else None) or ""
    else:
        return f"{event}.{payload.action} is not an instance-ready signal"
    # trialflow appends its marker at the very end; an earlier one is someone's text (a name).
    markers = _MARKER.findall(body)
    if not markers:
        return "the issue is not a trialflow instance request"
    return ReadySignal(markers[-1], login, issue.number, repo, comment_body)


def done_signal(event: str, payload: Delivery | None) -> DoneSignal | None:
    """A closed issue, or a ``/done`` comment, on an issue trialflow opened; None otherwise."""
    if payload is None or payload.issue is None:
        return None
    if event == "issues" and payload.action == "closed":
        login, how = (payload.sender.login if payload.sender else None) or "", "closed"
    elif event == "issue_comment" and payload.action == "created" and payload.comment is not None \
            and _DONE_COMMAND.search(payload.comment.body or ""):
        login, how = (payload.comment.user.login if payload.comment.user else None) or "", "/done"
    else:
        return None
    markers = _EFFECT_MARKER.findall(payload.issue.body or "")
    number = payload.issue.number
    if not markers or number is None:
        return None
    return DoneSignal(markers[-1], number, login, payload.repository.full_name if payload.repository else None, how)


def url_in_comment(text: str) -> str | None:
    """The instance URL a comment gives: ``/ready <url>``, else an ``Instance: <url>`` line."""
    command = _READY_COMMAND.search(text)
    if command and command.group(1):
        return command.group(1)
    line = _INSTANCE_LINE.search(text)
    return line.group(1) if line else None


def instance_host(url: str) -> str:
    """The host of an instance URL; InvalidSignup unless it is https on a valid, non-GitHub host name."""
    text = url.strip().strip("<>")
    wrong = InvalidSignup(f"`{text[:200]}` is not an instance URL: give it as https://<instance host>", "host")
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise wrong from None
    if parts.scheme.lower() != "https" or not parts.hostname or "@" in parts.netloc or port is not None:
        raise wrong
    try:
        host = normalize_domain(parts.hostname)
    except InvalidSignup:
        raise wrong from None
    if any(host == h or host.endswith("." + h) for h in _NOT_INSTANCES):
        raise InvalidSignup(f"`{host}` is a GitHub address, not the instance", "host")
    return host


def fingerprint(event: str, payload: dict[str, Any]) -> str | None:
    """What a delivery is about, whatever its X-GitHub-Delivery: the event, the action, the comment
    (or else the issue) it concerns, when that changed, and the label. A replay of a signed body
    has the same one; a new comment, or the label added again later, has another."""
    raw_comment, raw_issue = payload.get("comment"), payload.get("issue")
    comment: dict[str, Any] = raw_comment if isinstance(raw_comment, dict) else {}
    issue: dict[str, Any] = raw_issue if isinstance(raw_issue, dict) else {}
    if comment.get("id") is not None:
        subject, at = f"comment:{comment['id']}", comment.get("updated_at") or comment.get("created_at")
    elif issue.get("id") is not None:
        subject, at = f"issue:{issue['id']}", issue.get("updated_at")
    else:
        return None  # a ping, or nothing trialflow acts on: the delivery id alone
    label = (payload.get("label") or {}).get("name") if isinstance(payload.get("label"), dict) else None
    content = json.dumps([event, payload.get("action"), subject, at, label], default=str)
    return hashlib.sha256(content.encode()).hexdigest()


def handle_github_delivery(rt: App, delivery_id: str, event: str, payload: Delivery | None,
                           document: dict[str, Any], comments: IssueComments) -> dict[str, Any]:
    """One webhook delivery, processed once. Returns what the answer says.

    ``payload`` is the delivery as typed (None for an event trialflow does not read,
    ``READ_EVENTS``: it is recorded and ignored), ``document`` the JSON it came from (its
    ``fingerprint`` recognises a replay). ``comments(repo, number)`` reads an issue's comments
    (``trialflow.delivery.github.issue_comments``)."""
    signal = ready_signal(event, payload) if event != "ping" else "ping"
    # A closed issue or a /done comment on one of the cloud team's other requests (services.cloud_loop).
    done: DoneSignal | None = None if isinstance(signal, ReadySignal) else done_signal(event, payload)
    # (author login, comment) that may give the URL, newest first; authors are checked later.
    sources: list[tuple[str, str]] = []
    if isinstance(signal, ReadySignal):
        expected_repo = rt.settings.github_repo
        if expected_repo and signal.repo and signal.repo.lower() != expected_repo.lower():
            signal = f"the issue is in {signal.repo}, not the cloud team's repository {expected_repo}"
        else:
            if signal.comment_body is not None:
                sources.append((signal.login, signal.comment_body))
            no_url_yet = signal.comment_body is None or url_in_comment(signal.comment_body) is None
            if no_url_yet and signal.issue_number and rt.settings.github_token is not None and signal.repo:
                sources.extend(reversed(comments(signal.repo, signal.issue_number)))
    now = rt.clock.now()
    with rt.uow() as uow:
        session = uow.session
        if not insert_ignore(session, tables.github_deliveries,
                             {"delivery_id": delivery_id[:64], "event": (event or "?")[:64], "received_at": now,
                              "fingerprint": fingerprint(event, document)}):
            return {"status": "duplicate", "delivery": delivery_id}
        if signal == "ping":
            uow.commit()
            return {"status": "pong", "zen": payload.zen if payload else None}
        if done is not None:
            result = complete_request(rt, uow, done, delivery_id, now)
            uow.commit()
            return result
        if not isinstance(signal, ReadySignal):
            uow.commit()
            return {"status": "ignored", "reason": signal}
        result = _mark_ready(rt, uow, signal, sources, delivery_id, now)
        uow.commit()
        return result


def recorded_request_issues(session: Session, trial_id: str) -> set[int]:
    """The numbers of the instance-request issues trialflow filed for this trial (delivered effects)."""
    o = tables.outbox
    rows = session.execute(select(o.c.payload, o.c.result).where(
        o.c.trial_id == trial_id, o.c.kind == "github.issue", o.c.status == "delivered"))
    ref = f"instance-request:{trial_id}"
    return {int(result["number"]) for payload, result in rows
            if (payload or {}).get("ref") == ref and isinstance(result, dict) and isinstance(result.get("number"), int)}


def _may_signal(person: Person | None) -> bool:
    return person is not None and person.active and person.role in CLOUD_ROLES


def _comment(uow: UnitOfWork, signal: ReadySignal, delivery_id: str, now: datetime, slot: str, body: str) -> None:
    outbox.enqueue(uow, key=f"github-{slot}:{delivery_id}", kind="github.comment", now=now, trial_id=signal.trial_id,
                   payload={"ref": f"instance-request:{signal.trial_id}", "body": body})


def _mark_ready(rt: App, uow: UnitOfWork, signal: ReadySignal, sources: list[tuple[str, str]], delivery_id: str, now: datetime) -> dict[str, Any]:
    session = uow.session
    people = Directory(session)
    person = people.by_github_login(signal.login) if signal.login else None
    try:
        with session.begin_nested():
            trial = get_trial(uow, signal.trial_id, lock=True)
            filed = recorded_request_issues(session, trial.id)
            if signal.issue_number not in filed:
                log.warning("ignored an instance-ready signal on %s#%s: trialflow filed %s for trial %s",
                            signal.repo, signal.issue_number, sorted(filed) or "no issue (yet)", trial.id,
                            extra={"trial_id": trial.id})
                return {"status": "ignored", "trial_id": trial.id,
                        "reason": f"issue #{signal.issue_number} is not the instance request trialflow filed for this trial"}
            authorize(trial, lc.MARK_INSTANCE_READY, person, signal.login or "unknown")
            if not trial.can(lc.MARK_INSTANCE_READY):
                raise TransitionRefused(lc.MARK_INSTANCE_READY, trial.state)
            url = next((u for author, text in sources
                        if _may_signal(person if author == signal.login else people.by_github_login(author))
                        for u in [url_in_comment(text)] if u), None)
            if url is None:
                _comment(uow, signal, delivery_id, now, "needs-url",
                         "trialflow did not mark this instance ready: it needs the instance's URL. Comment "
                         "`/ready https://<instance host>` (from a cloud-team login listed in staff.csv).")
                return {"status": "needs_url", "trial_id": trial.id,
                        "reason": "no instance URL: comment /ready <url>"}
            host = instance_host(url)
            handle(uow, rt.settings, now, Command(trial.id, lc.MARK_INSTANCE_READY, signal.login or "unknown", person,
                                                  {"host": host}))
    except NotFound:
        return {"status": "ignored", "reason": f"no trial {signal.trial_id}"}
    except TransitionRefused as exc:
        return {"status": "ignored", "reason": f"the trial is {exc.state}: nothing to mark ready", "trial_id": signal.trial_id}
    except NotAllowed as exc:
        log.warning("refused: GitHub user %s may not mark trial %s ready: %s", signal.login, signal.trial_id, exc,
                    extra={"trial_id": signal.trial_id})
        _comment(uow, signal, delivery_id, now, "refused",
                 f"trialflow did not mark this instance ready: {exc}. The signal must come from a GitHub login listed "
                 f"in staff.csv with role `cloud` or `admin`, with the label `{READY_LABEL}` or a comment `/ready <url>`.")
        return {"status": "refused", "reason": str(exc), "trial_id": signal.trial_id}
    except InvalidSignup as exc:
        log.warning("refused an instance-ready signal from %s for trial %s: %s", signal.login, signal.trial_id,
                    exc.message, extra={"trial_id": signal.trial_id})
        _comment(uow, signal, delivery_id, now, "refused",
                 f"trialflow did not mark this instance ready: {exc.message}. Comment `/ready https://<instance host>`.")
        return {"status": "refused", "reason": exc.message, "trial_id": signal.trial_id}
    return {"status": "instance_ready", "trial_id": trial.id, "host": trial.instance_host}
