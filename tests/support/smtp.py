"""A real SMTP server (aiosmtpd) for the tests, recording every message it accepts.

Use it from any test module::

    from tests.support.smtp import smtp_server  # noqa: F401  (the pytest fixture)

    def test_...(smtp_server):
        settings = make_settings(db_url, config_dir, **smtp_server.settings())
        # or, for a subprocess: trialflow_env(**smtp_server.settings())
        ...
        assert smtp_server.messages[0]["Subject"] == ...

``SmtpServer(starttls=True)`` offers STARTTLS, ``SmtpServer(implicit_tls=True)`` speaks SMTPS,
``SmtpServer(credentials=("user", "pass"))`` requires AUTH; the TLS certificate is self-signed
for 127.0.0.1 (``.ca_file``: point ``SSL_CERT_FILE`` at it to trust it).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
from collections import deque
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Recorder:
    def __init__(self, server: SmtpServer):
        self.server = server

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refusal = self.server._next_failure("RCPT")
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        refusal = self.server._next_failure("DATA")
        if refusal:
            return refusal
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.server.lock:
            self.server.messages.append(message)
            self.server.envelopes.append({"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                                          "tls": session.ssl is not None
                                          or server.transport.get_extra_info("ssl_object") is not None,
                                          "authenticated": bool(session.authenticated)})
        if self.server.reply_delay:
            # Received and kept, the sender still waiting for the answer: a call in flight.
            await asyncio.sleep(self.server.reply_delay)
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(self, *, starttls: bool = False, implicit_tls: bool = False,
                 credentials: tuple[str, str] | None = None, cert_dir: Path | None = None):
        self.lock = threading.Lock()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[dict[str, Any]] = []
        self._failures: dict[str, deque[str]] = {}
        self.reply_delay = 0.0      # seconds between keeping a message and answering 250 for it
        self.credentials = credentials
        self.logins: list[dict[str, Any]] = []       # every AUTH attempt: who, and whether over TLS
        self.implicit_tls = implicit_tls
        self.host = "127.0.0.1"
        self.port = free_port()
        self.ca_file: Path | None = None
        kwargs: dict[str, Any] = {}
        if starttls or implicit_tls:
            context, self.ca_file = _self_signed_context(cert_dir or Path(_tempdir()))
            kwargs["ssl_context" if implicit_tls else "tls_context"] = context
        if credentials:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        self.controller = Controller(_Recorder(self), hostname=self.host, port=self.port, **kwargs)

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        with self.lock:
            self.logins.append({"login": getattr(auth_data, "login", b"").decode(errors="replace"),
                                "tls": session.ssl is not None
                                or server.transport.get_extra_info("ssl_object") is not None})
        ok = isinstance(auth_data, LoginPassword) and self.credentials == (
            auth_data.login.decode(), auth_data.password.decode())
        # handled=False: aiosmtpd answers (535 on a refusal); its default, True, means "already answered".
        return AuthResult(success=ok, handled=False)

    @property
    def url(self) -> str:
        user = f"{self.credentials[0]}:{self.credentials[1]}@" if self.credentials else ""
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{user}{self.host}:{self.port}"

    def settings(self) -> dict[str, str]:
        """Settings overrides pointing trialflow here: ``make_settings(..., **s)`` or ``trialflow_env(**s)``."""
        return {"smtp_url": self.url}

    def refuse(self, stage: str, reply: str, times: int = 1) -> None:
        """The next ``times`` RCPT or DATA commands are answered with ``reply`` (e.g. "451 4.3.0 Try later")."""
        with self.lock:
            self._failures.setdefault(stage, deque()).extend([reply] * times)

    def _next_failure(self, stage: str) -> str | None:
        with self.lock:
            pending = self._failures.get(stage)
            return pending.popleft() if pending else None

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if address in (m["To"] or "")]

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _tempdir() -> str:
    import tempfile
    return tempfile.mkdtemp(prefix="trialflow-smtp-")


def _self_signed_context(directory: Path) -> tuple[ssl.SSLContext, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trialflow test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


@pytest.fixture
def smtp_server():
    """A running plain SMTP server (no TLS, no AUTH) for one test."""
    with SmtpServer() as server:
        yield server
