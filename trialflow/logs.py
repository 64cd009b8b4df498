"""Logging: one line per event, JSON when asked, the trial id on every line that has one.

Secrets never reach a log line: settings hold them as SecretStr, effect payloads are redacted
before they are logged, and the filter below masks token-shaped strings as a last line of defence.
"""
from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timezone

_TOKEN = re.compile(r"(xox[abprs]-[A-Za-z0-9-]+|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]+|"
                    r"(?<=[?&]code=)[A-Za-z0-9_\-]+|(?<=password-reset\?)[^\s\"']+)")


def scrub(text: str) -> str:
    return _TOKEN.sub("[redacted]", text)


class _Scrub(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = ()
        if not hasattr(record, "trial_id"):
            record.trial_id = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"at": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
               "trial_id": getattr(record, "trial_id", None)}
        kind = getattr(record, "effect_kind", None)
        if kind:
            doc["effect_kind"] = kind
        if record.exc_info:
            doc["error"] = scrub(self.formatException(record.exc_info))
        return json.dumps(doc)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        trial = getattr(record, "trial_id", None)
        return f"{base} trial={trial}" if trial else base


def configure_logging(json_lines: bool | None = None, level: str | None = None) -> None:
    if json_lines is None or json_lines is False:
        json_lines = json_lines or os.environ.get("TRIALFLOW_LOG_JSON", "").lower() in ("1", "true", "yes")
    handler = logging.StreamHandler()
    handler.addFilter(_Scrub())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("TRIALFLOW_LOG_LEVEL", "INFO"))
    for noisy in ("httpx", "urllib3", "github", "alembic", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
