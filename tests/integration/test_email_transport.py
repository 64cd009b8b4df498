"""Email effects delivered by the real Deliverer and smtplib to a real SMTP server (aiosmtpd)."""
from __future__ import annotations

import logging
import socket

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.support.outbox import enqueue_effect, outbox_row
from tests.support.smtp import SmtpServer
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.email import EmailTransport, message_id

TRIAL = "tr_emailtransport01"
RESET_LINK = "https://pool-a.sourcegraph.com/password-reset?code=sEcReT-oNe-TiMe-CoDe"


@pytest.fixture
def settings(db_url, config_dir, smtp_server):
    return make_settings(db_url, config_dir, email_from="trials@example.com", **smtp_server.settings())


def deliverer_for(rt, settings) -> Deliverer:
    return Deliverer(rt, {"email": EmailTransport(settings), "slack": DryRunTransport("slack")})


@pytest.fixture
def deliverer(runtime, settings):
    return deliverer_for(runtime, settings)


def enqueue(rt, key: str, payload: dict) -> int:
    return enqueue_effect(rt, key, "email", payload, TRIAL)


row = outbox_row


def email(template: str, to: str = "bob@acme-corp.com", cc=(), sender=None, **context) -> dict:
    return {"template": template, "to": to, "cc": list(cc), "from": sender, "context": context}


TEMPLATES = {
    "self_host": (email("self_host", name="Bob"), "self-hosting", ["Hi Bob,", "https://sourcegraph.com/docs/admin/deploy"]),
    "welcome": (email("welcome", name="Bob", ce_name="Carol CE", ce_email="carol.ce@example.com", ae_name="Alice AE"),
                "meet Carol CE", ["I'm Carol CE", "I've copied Alice AE", "carol.ce@example.com"]),
    "password_reset": (email("password_reset", name="", instance_url="https://pool-a.sourcegraph.com",
                             reset_link=RESET_LINK), "instance is ready", ["Hello,", RESET_LINK]),
    "feedback_request": (email("feedback_request", name="Bob"), "How was your", ["Hi Bob,", "reply to this email"]),
    "support_failsafe": (email("support_failsafe", to="support@example.com", signup='{"email": "bob@acme-corp.com"}',
                               error="OperationalError", failed_signup_id=7),
                         "failed signup #7", ['{"email": "bob@acme-corp.com"}', "OperationalError"]),
}


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_each_template_arrives_rendered_with_its_subject(runtime, deliverer, smtp_server, template):
    payload, subject_part, body_parts = TEMPLATES[template]
    effect_id = enqueue(runtime, f"{TRIAL}:1:{template}", payload)

    assert deliverer.drain() == {"delivered": 1}

    [msg] = smtp_server.messages
    assert subject_part in msg["Subject"]
    assert msg["From"] == "trials@example.com"
    assert msg["To"] == payload["to"]
    body = msg.get_content()
    for part in body_parts:
        assert part in body
    assert "$" not in body and "$" not in msg["Subject"]
    assert row(runtime, effect_id).result["message_id"] == msg["Message-ID"]


def test_the_welcome_email_comes_from_the_ce_with_replies_to_them_and_the_ae_in_copy(runtime, deliverer, smtp_server):
    enqueue(runtime, "k:welcome", email("welcome", cc=["alice.ae@example.com"], sender="carol.ce@example.com",
                                        name="Bob", ce_name="Carol CE", ce_email="carol.ce@example.com",
                                        ae_name="Alice AE"))

    deliverer.drain()

    [msg] = smtp_server.messages
    assert msg["From"] == "carol.ce@example.com"
    assert msg["Reply-To"] == "carol.ce@example.com"
    assert msg["Sender"] == "trials@example.com"
    assert msg["Cc"] == "alice.ae@example.com"
    [envelope] = smtp_server.envelopes
    assert envelope["mail_from"] == "trials@example.com"
    assert envelope["rcpt_tos"] == ["bob@acme-corp.com", "alice.ae@example.com"]


def test_the_message_id_is_derived_from_the_effect_key_so_a_resend_is_recognisable(runtime, deliverer, smtp_server):
    enqueue(runtime, f"{TRIAL}:3:disqualify:self-host", email("self_host", name="Bob"))
    enqueue(runtime, f"{TRIAL}:5:request_feedback:feedback", email("feedback_request", name="Bob"))

    deliverer.drain()

    ids = [m["Message-ID"] for m in smtp_server.messages]
    assert ids == [message_id(f"{TRIAL}:3:disqualify:self-host"), message_id(f"{TRIAL}:5:request_feedback:feedback")]
    assert ids[0] != ids[1]
    assert all(i.startswith("<") and i.endswith("@trialflow>") for i in ids)


def test_the_reset_link_reaches_the_person_and_never_the_logs_or_the_outbox_result(runtime, deliverer, smtp_server,
                                                                                   caplog):
    caplog.set_level(logging.DEBUG)
    effect_id = enqueue(runtime, "k:reset", TEMPLATES["password_reset"][0])

    deliverer.drain()

    assert RESET_LINK in smtp_server.messages[0].get_content()
    # Everything our process logged, minus the test SMTP server's own protocol trace ("mail.log").
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail.log"))
    assert "email k:reset (password_reset) sent to bob@acme-corp.com" in ours
    assert "sEcReT" not in ours
    assert "sEcReT" not in str(row(runtime, effect_id).result)


@pytest.mark.parametrize("stage", ["RCPT", "DATA"])
def test_a_temporary_smtp_refusal_is_retried_later(runtime, deliverer, smtp_server, clock, stage):
    smtp_server.refuse(stage, "451 4.3.0 Mailbox temporarily unavailable")
    effect_id = enqueue(runtime, "k:self-host", email("self_host", name="Bob"))

    assert deliverer.drain() == {"retry": 1}
    waiting = row(runtime, effect_id)
    assert waiting.status == "pending" and "451" in waiting.last_error
    assert smtp_server.messages == []

    clock.advance(minutes=5)
    assert deliverer.drain() == {"delivered": 1}
    assert len(smtp_server.messages) == 1


def test_a_permanent_smtp_refusal_parks_the_email_and_alerts(runtime, deliverer, smtp_server):
    smtp_server.refuse("RCPT", "550 5.1.1 No such user here")
    effect_id = enqueue(runtime, "k:self-host", email("self_host", to="nobody@acme-corp.com", name="Bob"))

    assert deliverer.drain() == {"failed": 1}

    parked = row(runtime, effect_id)
    assert parked.attempts == 1
    assert "550" in parked.last_error and "nobody@acme-corp.com" in parked.last_error
    with runtime.session_factory() as s:
        notice = s.execute(select(tables.outbox).where(tables.outbox.c.key == f"delivery-failed:{effect_id}")).one()
    assert "could not deliver `email`" in notice.payload["text"]


def test_an_smtp_server_that_is_down_is_retried_later(runtime, settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens here once the socket closes
    down = make_settings(settings.database_url, settings.config_dir, smtp_url=f"smtp://127.0.0.1:{closed_port}")
    effect_id = enqueue(runtime, "k:self-host", email("self_host", name="Bob"))

    assert deliverer_for(runtime, down).drain() == {"retry": 1}
    assert "unreachable" in row(runtime, effect_id).last_error


def test_a_template_value_the_effect_does_not_have_parks_it_instead_of_sending_a_placeholder(runtime, deliverer,
                                                                                            smtp_server):
    effect_id = enqueue(runtime, "k:reset", email("password_reset", name="Bob", reset_link=RESET_LINK))

    assert deliverer.drain() == {"failed": 1}
    assert "needs 'instance_url'" in row(runtime, effect_id).last_error
    assert smtp_server.messages == []


def test_starttls_is_used_when_the_server_offers_it_and_credentials_are_sent_over_it(runtime, settings, tmp_path,
                                                                                    monkeypatch):
    with SmtpServer(starttls=True, credentials=("trialflow", "p@ss word"), cert_dir=tmp_path) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        url = server.url.replace("p@ss word", "p%40ss%20word")
        effect_id = enqueue(runtime, "k:self-host", email("self_host", name="Bob"))

        assert deliverer_for(runtime, make_settings(settings.database_url, settings.config_dir, smtp_url=url)).drain() \
            == {"delivered": 1}

        assert server.envelopes == [{"mail_from": "trials@example.com", "rcpt_tos": ["bob@acme-corp.com"],
                                     "tls": True, "authenticated": True}]
    assert "p@ss" not in str(row(runtime, effect_id).result)


def test_smtps_speaks_tls_from_the_first_byte(runtime, settings, tmp_path, monkeypatch):
    with SmtpServer(implicit_tls=True, cert_dir=tmp_path) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        enqueue(runtime, "k:self-host", email("self_host", name="Bob"))

        assert deliverer_for(runtime, make_settings(settings.database_url, settings.config_dir,
                                                    smtp_url=server.url)).drain() == {"delivered": 1}
        assert server.url.startswith("smtps://")
        assert server.envelopes[0]["tls"] is True


def test_an_untrusted_tls_certificate_is_a_permanent_failure_not_a_silent_downgrade(runtime, settings, tmp_path):
    with SmtpServer(implicit_tls=True, cert_dir=tmp_path) as server:
        effect_id = enqueue(runtime, "k:self-host", email("self_host", name="Bob"))

        assert deliverer_for(runtime, make_settings(settings.database_url, settings.config_dir,
                                                    smtp_url=server.url)).drain() == {"failed": 1}
        assert server.messages == []
    assert "certificate is not trusted" in row(runtime, effect_id).last_error


def test_credentials_are_never_sent_to_a_server_that_offers_no_starttls(runtime, settings):
    with SmtpServer(credentials=("trialflow", "mail-pass-0042")) as server:
        effect_id = enqueue(runtime, "k:self-host", email("self_host", name="Bob"))

        assert deliverer_for(runtime, make_settings(settings.database_url, settings.config_dir,
                                                    smtp_url=server.url)).drain() == {"failed": 1}
        assert server.logins == [] and server.messages == []
    error = row(runtime, effect_id).last_error
    assert "offers no STARTTLS" in error and "TRIALFLOW_SMTP_URL" in error and "mail-pass-0042" not in error


def test_without_credentials_a_server_without_starttls_still_gets_the_mail(runtime, deliverer, smtp_server):
    enqueue(runtime, "k:self-host", email("self_host", name="Bob"))
    assert deliverer.drain() == {"delivered": 1}
    assert smtp_server.envelopes[0]["tls"] is False and smtp_server.logins == []


def test_smtps_with_credentials_logs_in_over_tls(runtime, settings, tmp_path, monkeypatch):
    with SmtpServer(implicit_tls=True, credentials=("trialflow", "mail-pass-0042"), cert_dir=tmp_path) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        enqueue(runtime, "k:self-host", email("self_host", name="Bob"))

        assert deliverer_for(runtime, make_settings(settings.database_url, settings.config_dir,
                                                    smtp_url=server.url)).drain() == {"delivered": 1}
        assert server.logins == [{"login": "trialflow", "tls": True}]
        assert server.envelopes[0]["authenticated"] is True
