"""Email effects over SMTP (smtplib), rendered from the plain-text templates in trialflow/templates.

``TRIALFLOW_SMTP_URL`` is ``smtp://[user:pass@]host[:port]`` (STARTTLS whenever the server offers
it, and required when the URL has credentials: a password never goes out in clear) or
``smtps://[user:pass@]host[:port]`` (TLS from the first byte).

SMTP cannot be asked "did you already get this?", so exactly-once ends at the server: the
Message-ID is derived from the effect's idempotency key, and a resend after a worker died
mid-call carries the same Message-ID, which mail systems and people can recognise as a duplicate.

Password-reset links are secrets meant for one person: they go into the message body and
nowhere else (not the logs, not the delivery result, not an exception text).
"""
from __future__ import annotations

import hashlib
import logging
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import unquote, urlsplit

from trialflow.errors import PermanentFailure, RetryLater
from trialflow.inert import plain
from trialflow.services import prospect_policies

log = logging.getLogger("trialflow.delivery.email")

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TIMEOUT_SECONDS = 20.0
DEFAULT_PORTS = {"smtp": 25, "smtps": 465}

# Context values people typed (the failsafe's ``signup`` is the whole request they sent): made
# inert for a mail client, which links whatever looks like an address or a URL.
TYPED = frozenset({"name", "company", "source", "note", "reason", "signup", "colleague_name"})
# Values a template may use when the effect's context leaves them empty.
_FALLBACKS: dict[str, dict[str, str]] = {
    "welcome": {"ce_name": "your customer engineer", "ae_name": "your account executive"},
    # The prospect's emails: a trial without a CE yet is signed by the team.
    **{name: {"ce_name": "The Sourcegraph team", "ae_name": "your account executive",
              "instance_url": "your Sourcegraph instance"}
       for name in prospect_policies.TEMPLATES},
}


class SmtpUrl:
    """A parsed ``TRIALFLOW_SMTP_URL``. ``str()`` never shows the password."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise ValueError(f"TRIALFLOW_SMTP_URL must start with smtp:// or smtps://, not {parts.scheme or '(nothing)'}://")
        if not parts.hostname:
            raise ValueError("TRIALFLOW_SMTP_URL needs a host, like smtp://mail.example.com:587")
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or DEFAULT_PORTS[parts.scheme]
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None

    def __str__(self) -> str:
        who = f"{self.username}@" if self.username else ""
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{who}{self.host}:{self.port}"


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


def load_template(name: str, overrides: Path | None = None) -> str:
    """The template ``name``: ``overrides/<name>.txt`` when there is one (the config directory's
    ``templates/``), else trialflow's own."""
    if not name.replace("_", "").isalnum():
        raise PermanentFailure(f"there is no email template {name!r}")
    for folder in (overrides, TEMPLATES):
        if folder is not None and (folder / f"{name}.txt").is_file():
            return (folder / f"{name}.txt").read_text(encoding="utf-8")
    raise PermanentFailure(f"there is no email template {name!r} (looked for trialflow/templates/{name}.txt)")


def render(name: str, context: dict[str, Any], overrides: Path | None = None) -> Rendered:
    """Fill the template's ``$placeholders`` from ``context``. The first line is ``Subject: ...``."""
    values = {k: "" if v is None else str(v) for k, v in (context or {}).items()}
    for key in TYPED & values.keys():
        values[key] = plain(values[key], one_line=key != "signup")
    for key, fallback in _FALLBACKS.get(name, {}).items():
        if not values.get(key):
            values[key] = fallback
    values.setdefault("greeting", f"Hi {values['name']}," if values.get("name") else "Hello,")
    text = load_template(name, overrides)
    head, _, body = text.partition("\n\n")
    if not head.startswith("Subject:"):
        raise PermanentFailure(f"email template {name!r} must start with a 'Subject:' line and a blank line")
    try:
        subject = Template(head[len("Subject:"):].strip()).substitute(values)
        body = Template(body).substitute(values)
    except KeyError as exc:
        # Sending "$ce_email" to a prospect is worse than not sending: park it and say which value is missing.
        raise PermanentFailure(f"email template {name!r} needs {exc.args[0]!r}, which the effect's context does not have") from None
    except ValueError as exc:
        raise PermanentFailure(f"email template {name!r} is malformed: {exc}") from None
    return Rendered(" ".join(subject.split()), body)


def message_id(effect_key: str) -> str:
    return f"<{hashlib.sha256(effect_key.encode('utf-8')).hexdigest()[:32]}@trialflow>"


class EmailTransport:
    def __init__(self, settings):
        self.server = SmtpUrl(settings.smtp_url)
        self.sender = settings.email_from
        # The operators' own wording: TRIALFLOW_CONFIG_DIR/templates/<name>.txt replaces trialflow/templates/<name>.txt.
        self.overrides = Path(settings.config_dir) / "templates"

    def build(self, effect) -> EmailMessage:
        payload = effect.payload
        to = payload.get("to")
        if not to:
            raise PermanentFailure(f"email effect {effect.key} has no recipient")
        rendered = render(payload.get("template") or "", payload.get("context") or {}, self.overrides)
        msg = EmailMessage()
        personal = payload.get("from")
        if personal:
            # Sent on a person's behalf (the CE's welcome): replies go to them, while Sender
            # says which system actually sent it.
            msg["From"] = personal
            msg["Reply-To"] = personal
            if personal.lower() != self.sender.lower():
                msg["Sender"] = self.sender
        else:
            msg["From"] = self.sender
        msg["To"] = to
        cc = [c for c in payload.get("cc") or [] if c and c.lower() != to.lower()]
        if cc:
            msg["Cc"] = ", ".join(cc)
        msg["Subject"] = rendered.subject
        msg["Message-ID"] = message_id(effect.key)
        # Which of trialflow's emails this is, for mail filters (and for telling them apart in the tests).
        msg["X-Trialflow-Template"] = payload.get("template") or ""
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg.set_content(rendered.body)
        return msg

    def deliver(self, effect) -> dict:
        msg = self.build(effect)
        recipients = [msg["To"], *([c.strip() for c in msg["Cc"].split(",")] if msg["Cc"] else [])]
        try:
            refused = self._send(msg, recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            raise _classify_refusals(exc.recipients) from None
        except smtplib.SMTPResponseException as exc:
            raise _classify(exc.smtp_code, exc.smtp_error, self.server) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentFailure(f"SMTP server {self.server}: {exc} (check TRIALFLOW_SMTP_URL)") from None
        except ssl.SSLCertVerificationError as exc:
            raise PermanentFailure(f"SMTP server {self.server}: its TLS certificate is not trusted: {exc.verify_message}") from None
        except smtplib.SMTPServerDisconnected as exc:
            raise RetryLater(f"SMTP server {self.server} hung up: {exc}") from None
        except (ConnectionError, TimeoutError, socket.gaierror, OSError) as exc:
            raise RetryLater(f"SMTP server {self.server} unreachable: {type(exc).__name__}: {exc}") from None
        if refused:
            log.warning("email %s: the server refused some recipients: %s", effect.key,
                        ", ".join(f"{addr} ({code})" for addr, (code, _) in refused.items()),
                        extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
        log.info("email %s (%s) sent to %s", effect.key, effect.payload.get("template"), ", ".join(recipients),
                 extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
        return {"message_id": msg["Message-ID"], "to": recipients,
                "refused": sorted(refused) if refused else []}

    def _send(self, msg: EmailMessage, recipients: list[str]) -> dict:
        with connect(self.server) as smtp:
            return smtp.send_message(msg, from_addr=self.sender, to_addrs=recipients)


def connect(server: SmtpUrl, timeout: float = TIMEOUT_SECONDS) -> smtplib.SMTP:
    """A connection to ``server``, on TLS when it offers it (always with smtps://), logged in when
    the URL has credentials. Credentials are never sent in clear."""
    context = ssl.create_default_context()
    if server.implicit_tls:
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(server.host, server.port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(server.host, server.port, timeout=timeout)
    try:
        smtp.ehlo()
        if not server.implicit_tls and smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
        elif not server.implicit_tls and server.username:
            # The password would cross the network in clear (or the offer was stripped on the way).
            raise PermanentFailure(f"SMTP server {server} offers no STARTTLS, and TRIALFLOW_SMTP_URL has "
                                   "credentials: they are never sent in clear. Use a server that offers "
                                   "STARTTLS, or smtps:// (TLS from the first byte)")
        if server.username:
            smtp.login(server.username, server.password or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


def _classify(code: int, text: bytes | str, server: SmtpUrl) -> Exception:
    reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    if 400 <= code < 500:
        return RetryLater(f"SMTP server {server} said {code} {reply} (temporary)")
    return PermanentFailure(f"SMTP server {server} refused the message: {code} {reply}")


def _classify_refusals(refusals: dict[str, tuple[int, bytes]]) -> Exception:
    described = "; ".join(f"{addr}: {code} {msg.decode('utf-8', 'replace') if isinstance(msg, bytes) else msg}"
                          for addr, (code, msg) in refusals.items())
    if any(400 <= code < 500 for code, _ in refusals.values()):
        return RetryLater(f"SMTP server refused every recipient for now: {described}")
    return PermanentFailure(f"SMTP server refused every recipient: {described}")
