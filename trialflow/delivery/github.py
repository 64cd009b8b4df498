"""GitHub effects through PyGithub: issues for the cloud team and comments on them.

Exactly once: every issue body ends with a hidden marker ``<!-- trialflow-effect:<effect key> -->``.
When an earlier attempt may have created the issue before its worker died
(``effect.maybe_delivered``), the repository is searched for the marker first: the search API
(with the ``repo:`` qualifier), then the issues created since that first attempt started (newest
first, every page back to then), because the search index lags behind a just-created issue and
may be unavailable. Comments carry the same marker and are looked for among the issue's comments
since then.

Rate limits are the Deliverer's business: PyGithub's retry (``GithubRetry``, which sleeps
through secondary limits and 5xx inside the call) is switched off, so a limit surfaces here at
once and becomes ``RetryLater`` with GitHub's own delay: ``retry-after`` when sent, else the time
until ``x-ratelimit-reset`` when ``x-ratelimit-remaining`` is 0, else a minute.

Not every call is an effect: ``issue_comments`` reads an issue's comments while a webhook delivery
is being answered (the URL of an "instance ready" signal may be in an earlier comment).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from github import Auth, Github, GithubException

from trialflow.errors import PayloadRefused, PermanentFailure, RetryLater

log = logging.getLogger("trialflow.delivery.github")

TIMEOUT_SECONDS = 15
RECENT_ISSUES = 100           # how many of the newest issues a retry scans when it cannot tell since when
# Our clock and GitHub's may disagree: the look-back for an earlier attempt starts this much earlier.
CLOCK_SKEW = timedelta(minutes=5)
SECONDARY_LIMIT_DEFAULT_WAIT = 60.0   # GitHub: "otherwise, wait for at least one minute"
MAX_WAIT = 3600.0
READ_TIMEOUT_SECONDS = 5      # a read while GitHub waits for the webhook's answer


def marker(effect_key: str) -> str:
    return f"<!-- trialflow-effect:{effect_key} -->"


class GitHubTransport:
    def __init__(self, settings, client: Github | None = None, seconds_between_writes: float | None = None):
        """``seconds_between_writes`` is PyGithub's own pause between POSTs, which GitHub asks
        integrations to keep (one second) to stay clear of secondary limits; by default it is
        ``settings.github_seconds_between_writes``."""
        if seconds_between_writes is None:
            seconds_between_writes = settings.github_seconds_between_writes
        self.repo_name = settings.github_repo
        self.client = client or Github(
            auth=Auth.Token(settings.github_token.get_secret_value()), base_url=settings.github_api_url.rstrip("/"),
            timeout=TIMEOUT_SECONDS, retry=None, seconds_between_requests=None,
            seconds_between_writes=seconds_between_writes, lazy=True)

    @property
    def repo(self):
        return self.client.get_repo(self.repo_name)  # lazy: no request until it is used

    def deliver(self, effect) -> dict[str, Any]:
        handlers = {"github.issue": self._issue, "github.comment": self._comment}
        handler = handlers.get(effect.kind)
        if handler is None:
            raise PermanentFailure(f"the GitHub transport does not know effect kind {effect.kind}")
        try:
            return handler(effect)
        except GithubException as exc:
            raise self._translate(exc, effect) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryLater(f"GitHub unreachable: {type(exc).__name__}") from None

    # --- github.issue --------------------------------------------------------------------------

    def _issue(self, effect) -> dict[str, Any]:
        payload = effect.payload
        tag = marker(effect.key)
        if effect.maybe_delivered:
            earlier = self._find_issue(tag, effect.first_attempt_at)
            if earlier is not None:
                log.info("effect %s already opened issue #%s: not opening another", effect.key, earlier.number,
                         extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
                return _issue_result(earlier)
        body = f"{payload.get('body') or ''}\n\n{tag}"
        issue = self.repo.create_issue(title=payload["title"], body=body, labels=list(payload.get("labels") or []))
        return _issue_result(issue)

    def _find_issue(self, tag: str, since: datetime | None):
        phrase = tag.removeprefix("<!-- ").removesuffix(" -->")
        try:
            found = self.client.search_issues(f'"{phrase}"', repo=self.repo_name, type="issue", **{"in": "body"})
            for issue in _first(found, 30):
                if tag in (issue.body or ""):
                    return issue
        except GithubException as exc:
            if exc.status == 401:
                raise
            # The search API has its own, tighter limit and may be down; the issue list is the truth anyway.
            log.info("issue search unavailable (%s); scanning the newest issues instead", exc.status)
        # Not (yet) in the search index: a just-created issue takes a while to be indexed.
        if since is None:
            for issue in _first(self.repo.get_issues(state="all", sort="created", direction="desc"), RECENT_ISSUES):
                if tag in (issue.body or ""):
                    return issue
            return None
        cutoff = since - CLOCK_SKEW
        # ``since`` filters on the last update, which an issue created after it has too.
        for issue in self.repo.get_issues(state="all", sort="created", direction="desc", since=cutoff):
            if issue.created_at < cutoff:
                return None
            if tag in (issue.body or ""):
                return issue
        return None

    # --- github.comment ------------------------------------------------------------------------

    def _comment(self, effect) -> dict[str, Any]:
        payload = effect.payload
        target = effect.results.result_for_ref(payload["ref"])
        if target is None:
            raise RetryLater(f"the GitHub issue {payload['ref']} is not opened yet")
        if not target.get("number"):
            raise PermanentFailure(f"the GitHub issue {payload['ref']} was never opened on GitHub "
                                   "(delivered by the dry-run sink)")
        issue = self.repo.get_issue(int(target["number"]))
        tag = marker(effect.key)
        if effect.maybe_delivered:
            since = effect.first_attempt_at - CLOCK_SKEW if effect.first_attempt_at else None
            for comment in issue.get_comments(since=since) if since else issue.get_comments():
                if tag in (comment.body or ""):
                    return {"number": int(target["number"]), "comment_id": comment.id, "url": comment.html_url}
        comment = issue.create_comment(f"{payload.get('body') or ''}\n\n{tag}")
        return {"number": int(target["number"]), "comment_id": comment.id, "url": comment.html_url}

    # --- errors --------------------------------------------------------------------------------

    def _translate(self, exc: GithubException, effect) -> Exception:
        status = exc.status
        message = _message(exc)
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        if _is_rate_limited(exc):
            wait = _rate_limit_wait(headers)
            return RetryLater(f"GitHub rate limit ({status}): {message}; retry after {wait:g}s", wait)
        if status >= 500:
            return RetryLater(f"GitHub failed for now ({status}): {message}")
        what = {"github.issue": f"open an issue in {self.repo_name}",
                "github.comment": f"comment on the issue {effect.payload.get('ref')} in {self.repo_name}",
                }.get(effect.kind, effect.kind)
        hint = {401: "is TRIALFLOW_GITHUB_TOKEN valid?",
                403: "does the token have write access to issues?",
                404: "do TRIALFLOW_GITHUB_REPO and TRIALFLOW_GITHUB_API_URL name a repository the token can see?",
                410: "are issues enabled on the repository?",
                422: "GitHub rejected the content trialflow built: the same content would be rejected again"
                }.get(status, "")
        refused = PayloadRefused if status == 422 else PermanentFailure  # Validation Failed: about what we sent
        return refused(f"GitHub refused to {what}: {status} {message}" + (f" ({hint})" if hint else ""))


def issue_comments(settings, repo: str, number: int) -> list[tuple[str, str]]:
    """The issue's comments as (author login, body), oldest first; none when GitHub cannot be read."""
    try:
        client = Github(auth=Auth.Token(settings.github_token.get_secret_value()), base_url=settings.github_api_url,
                        timeout=READ_TIMEOUT_SECONDS, retry=None, lazy=True)
        issue = client.get_repo(repo).get_issue(number)
        return [((c.user.login if c.user else "") or "", c.body or "") for c in issue.get_comments()]
    except (GithubException, OSError) as exc:
        log.warning("could not read the comments of %s#%s: %s", repo, number, type(exc).__name__)
        return []


def issue_states(settings, numbers: list[int]) -> dict[int, str]:
    """The state ("open" or "closed") of each issue GitHub can show; a read, for ``trialflow reconcile``."""
    states: dict[int, str] = {}
    try:
        repo = Github(auth=Auth.Token(settings.github_token.get_secret_value()), base_url=settings.github_api_url,
                      timeout=READ_TIMEOUT_SECONDS, retry=None, lazy=True).get_repo(settings.github_repo)
        for number in numbers:
            states[number] = repo.get_issue(number).state
    except (GithubException, OSError) as exc:
        log.warning("could not read issue states from GitHub: %s", type(exc).__name__)
    return states


def _issue_result(issue) -> dict[str, Any]:
    return {"number": issue.number, "url": issue.html_url}


def _first(paginated, limit: int):
    for i, item in enumerate(paginated):
        if i >= limit:
            return
        yield item


def _message(exc: GithubException) -> str:
    data = exc.data if isinstance(exc.data, dict) else {}
    text = data.get("message") or exc.message or ""
    details = "; ".join(
        e.get("message") or f"{e.get('resource', '')}.{e.get('field', '')} {e.get('code', '')}".strip()
        for e in data.get("errors") or [] if isinstance(e, dict))
    return f"{text} ({details})" if details else text


def _is_rate_limited(exc: GithubException) -> bool:
    """GitHub's rule: a 403 or 429 with retry-after, x-ratelimit-remaining 0, or a rate-limit message."""
    if exc.status not in (403, 429):
        return False
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    if "retry-after" in headers or headers.get("x-ratelimit-remaining") == "0":
        return True
    text = _message(exc).lower()
    return exc.status == 429 or "rate limit" in text or "abuse detection" in text


def _rate_limit_wait(headers: dict[str, str]) -> float:
    retry_after = headers.get("retry-after")
    if retry_after:
        try:
            return min(max(float(retry_after), 0.0), MAX_WAIT)
        except ValueError:
            try:  # an HTTP date is allowed too
                return min(max(parsedate_to_datetime(retry_after).timestamp() - _server_now(headers), 0.0), MAX_WAIT)
            except (TypeError, ValueError):
                pass
    if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset"):
        try:
            # Measured against the server's Date, so a skewed local clock cannot shorten the wait.
            return min(max(float(headers["x-ratelimit-reset"]) - _server_now(headers), 1.0), MAX_WAIT)
        except ValueError:
            pass
    return SECONDARY_LIMIT_DEFAULT_WAIT


def _server_now(headers: dict[str, str]) -> float:
    date = headers.get("date")
    if date:
        try:
            return parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()
