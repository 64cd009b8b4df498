"""Logging: one line per event, JSON when asked, the trial id on every line that has one.

Where a line's trial id comes from, first found wins: ``extra={"trial_id": ...}`` on the call; the
trial bound to the current context (``with bind_trial(trial_id): ...``, which reaches every line
logged inside, from any module); a trial id (``tr_`` + 16 hex digits) named in the message, as in
an effect key ``tr_…:3:qualify:alert``.

Secrets never reach a log line: settings hold them as SecretStr, effect payloads are redacted
before they are logged, and the filter below masks, as a last line of defence, every configured
secret (``register_secrets``), token-shaped strings (Slack, GitHub), passwords in URLs,
Authorization headers and password-reset links. The filter sits on the handler, so it also
covers lines from libraries and exception text.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from trialflow.settings import get_settings

REDACTED = "[redacted]"
_TOKEN = re.compile(
    r"(xox[abeprs]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]+"
    r"|sgp_[A-Za-z0-9_]{16,}"                                      # Sourcegraph access tokens
    r"|(?<=[?&]code=)[A-Za-z0-9_\-]+|(?<=password-reset\?)[^\s\"'<>]+"
    r"|(?<=://)[^\s/:@\"']+:[^\s/@\"']+(?=@)"                      # user:password@ in a URL
    r"|(?i:(?<=authorization: )(?:bearer |token |basic )?[^\s\"']+)"
    r"|(?i:(?<=bearer )[A-Za-z0-9._~+/=-]{8,}))")
_TRIAL_ID = re.compile(r"\btr_[0-9a-f]{16}\b")
_current_trial: contextvars.ContextVar[str | None] = contextvars.ContextVar("trialflow_trial_id", default=None)
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
# Shorter strings would mask ordinary words; real tokens and passwords are longer.
MIN_SECRET_LENGTH = 6
# A URL's password is masked wherever a URL is logged (the regex); elsewhere only a long one is
# masked, so a default such as "trialflow" does not blank out the product's own name.
MIN_URL_PASSWORD_LENGTH = 10


def register_secret(value: str | None, min_length: int = MIN_SECRET_LENGTH) -> None:
    if value and len(value) >= min_length:
        with _secrets_lock:
            _secrets.add(value)


def register_secrets(settings) -> None:
    """Mask every secret these settings hold (tokens, signing secrets, passwords in URLs)."""
    from pydantic import SecretStr
    from sqlalchemy.engine import make_url

    for _name, value in settings:
        if isinstance(value, SecretStr):
            register_secret(value.get_secret_value())
        elif isinstance(value, str) and "://" in value and "@" in value:
            # Not a URL SQLAlchemy knows: the regex still masks user:pass@.
            with contextlib.suppress(Exception):
                register_secret(make_url(value).password, MIN_URL_PASSWORD_LENGTH)
    for token in getattr(settings, "instance_tokens", {}).values():  # the per-host tokens file's
        register_secret(token.get_secret_value())
    # The whole TRIALFLOW_API_TOKENS value is masked above; each token is masked on its own too.
    for _name, token in getattr(settings, "api_token_pairs", list)():
        register_secret(token)


def scrub(text: str) -> str:
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _TOKEN.sub(REDACTED, text)


@contextmanager
def bind_trial(trial_id: str | None) -> Iterator[None]:
    """Every line logged inside (this thread or task) carries ``trial_id``."""
    token = _current_trial.set(trial_id)
    try:
        yield
    finally:
        _current_trial.reset(token)


def trial_id_for(record: logging.LogRecord, message: str) -> str | None:
    given = getattr(record, "trial_id", None)
    if given:
        return given
    bound = _current_trial.get()
    if bound:
        return bound
    found = _TRIAL_ID.search(message)
    return found.group(0) if found else None


class _Scrub(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.trial_id = trial_id_for(record, message)
        record.msg = scrub(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def _error_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_text:
        return scrub(record.exc_text)
    if record.exc_info:
        return scrub(formatter.formatException(record.exc_info))
    return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
               "trial_id": getattr(record, "trial_id", None)}
        kind = getattr(record, "effect_kind", None)
        if kind:
            doc["effect_kind"] = kind
        error = _error_text(self, record)
        if error is not None:
            doc["error"] = error
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable, still one line per event: newlines (tracebacks included) are escaped."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        base = self.formatMessage(record)
        trial = getattr(record, "trial_id", None)
        line = f"{base} trial={trial}" if trial else base
        error = _error_text(self, record)
        if error is not None:
            line += " error=" + json.dumps(error, ensure_ascii=False)
        return line.replace("\r", "\\r").replace("\n", "\\n")


def make_handler(json_lines: bool, stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.addFilter(_Scrub())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def configure_logging(json_lines: bool | None = None, level: str | None = None, settings=None) -> None:
    """Root logging for every trialflow process. ``json_lines`` unset or False: TRIALFLOW_LOG_JSON decides."""
    if not json_lines:
        json_lines = os.environ.get("TRIALFLOW_LOG_JSON", "").strip().lower() in ("1", "true", "yes", "on")
    if settings is None:
        try:
            settings = get_settings()
        except Exception:  # noqa: BLE001 - bad settings are reported by the command that needs them
            settings = None
    if settings is not None:
        register_secrets(settings)
    root = logging.getLogger()
    root.handlers[:] = [make_handler(bool(json_lines))]
    root.setLevel(level or os.environ.get("TRIALFLOW_LOG_LEVEL", "INFO"))
    for noisy in ("httpx", "urllib3", "github", "alembic", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Servers and workers bring their own handlers; send their lines through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "celery.worker"):
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
