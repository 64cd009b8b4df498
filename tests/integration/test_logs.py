"""Logs: one line per event, JSON when asked, the trial id on the lines about a trial, no secrets."""
from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import make_settings
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.instance import InstanceTransport
from trialflow.delivery.sourcegraph import SourcegraphAdmin
from trialflow.delivery.wiring import build_deliverer
from trialflow.errors import PermanentFailure
from trialflow.logs import bind_trial, configure_logging
from trialflow.services.instance_sync import InstanceRecorder

# Configured secrets: Slack's documented signing-secret example, GitHub's webhook example, made-up tokens.
BOT_TOKEN = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"
GITHUB_TOKEN = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
WEBHOOK_SECRET = "It's a Secret to Everybody"
ACTIVITY_SECRET = "instance-activity-shared-key-7"
SMTP_PASSWORD = "mail-pass-5521"


@pytest.fixture
def settings(db_url, config_dir, fake_sourcegraph):
    return make_settings(db_url, config_dir, slack_bot_token=BOT_TOKEN, github_token=GITHUB_TOKEN,
                         github_repo="acme/cloud", slack_signing_secret=SIGNING_SECRET,
                         github_webhook_secret=WEBHOOK_SECRET, activity_secret=ACTIVITY_SECRET,
                         smtp_url=f"smtp://trialflow:{SMTP_PASSWORD}@127.0.0.1:2525", **fake_sourcegraph.settings())


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class CarelessSlack:
    """A Slack client whose error message echoes the request, token included, as some libraries do."""

    def __init__(self):
        self.failed = False

    def deliver(self, effect):
        if not self.failed:
            self.failed = True
            raise ConnectionError(f"POST https://slack.com/api/chat.postMessage failed; headers "
                                  f"{{'Authorization': 'Bearer {BOT_TOKEN}'}}")
        return {"ok": True}


class BouncingMail:
    """An SMTP server that refuses the message and quotes it back, reset link and all."""

    def deliver(self, effect):
        if effect.kind == "email" and effect.payload.get("template") == "password_reset":
            raise PermanentFailure(f"550 rejected: {effect.payload['context']['reset_link']} "
                                   f"(smtp://trialflow:{SMTP_PASSWORD}@127.0.0.1:2525)")
        return {}


def lines_of(captured: str) -> list[dict]:
    return [json.loads(line) for line in captured.splitlines() if line.strip()]


def test_delivery_logs_carry_the_trial_id_and_never_a_secret(client, runtime, settings, capsys, fake_sourcegraph):
    configure_logging(json_lines=True, settings=settings)
    trial_id = client.post("/api/signups", json={"email": "bob@acme-corp.com"}).json()["trial_id"]
    slack, mail = CarelessSlack(), BouncingMail()
    deliverer = build_deliverer(runtime, transports={
        "slack": slack, "github": DryRunTransport("github"), "email": mail,
        "instance": InstanceTransport(SourcegraphAdmin(settings), mail, InstanceRecorder(runtime), runtime.clock.now)})
    deliverer.drain_all()
    runtime.clock.advance(minutes=5)           # past the retry backoff of the Slack failure
    deliverer.drain_all()
    [reset_link] = fake_sourcegraph.reset_links  # the link the instance made, which the mail server quoted back
    captured = capsys.readouterr().err
    logged = lines_of(captured)                # every line is one JSON document
    assert slack.failed and any("chat.postMessage failed" in line["message"] for line in logged)
    assert any("parked as failed" in line["message"] for line in logged)
    for secret in (BOT_TOKEN, GITHUB_TOKEN, SIGNING_SECRET, WEBHOOK_SECRET, ACTIVITY_SECRET, SMTP_PASSWORD,
                   reset_link, reset_link.split("code=")[1], fake_sourcegraph.token):
        assert secret not in captured
    assert "[redacted]" in captured
    about_trial = [line for line in logged if trial_id in line["message"] or "parked" in line["message"]
                   or line["logger"] == "trialflow.dryrun"]
    assert about_trial and all(line["trial_id"] == trial_id for line in about_trial)


def test_every_line_logged_inside_bind_trial_carries_its_id(capsys):
    configure_logging(json_lines=True)
    log = logging.getLogger("trialflow.test")
    with bind_trial("tr_00000000000000aa"):
        log.info("reminder posted")
        log.warning("from another module", extra={})
    log.info("no trial here")
    log.info("named in the message: effect tr_00000000000000bb:3:qualify:alert delivered")
    log.info("given explicitly", extra={"trial_id": "tr_00000000000000cc"})
    ids = [line["trial_id"] for line in lines_of(capsys.readouterr().err)]
    assert ids == ["tr_00000000000000aa", "tr_00000000000000aa", None, "tr_00000000000000bb", "tr_00000000000000cc"]


def test_a_traceback_stays_on_one_line_and_is_scrubbed_in_text_mode(capsys, monkeypatch):
    monkeypatch.delenv("TRIALFLOW_LOG_JSON", raising=False)
    configure_logging(json_lines=False)
    log = logging.getLogger("trialflow.test")
    try:
        raise RuntimeError(f"Slack said invalid_auth for {BOT_TOKEN}\nsecond line")
    except RuntimeError:
        log.exception("delivery failed for tr_00000000000000dd")
    out = capsys.readouterr().err
    assert out.count("\n") == 1
    assert "delivery failed for tr_00000000000000dd trial=tr_00000000000000dd error=" in out
    assert "Traceback" in out and BOT_TOKEN not in out and "invalid_auth for [redacted]" in out


def test_trialflow_log_json_in_the_environment_switches_to_json(capsys, monkeypatch):
    monkeypatch.setenv("TRIALFLOW_LOG_JSON", "true")
    configure_logging()
    logging.getLogger("trialflow.test").info("hello")
    (line,) = lines_of(capsys.readouterr().err)
    assert (line["level"], line["logger"], line["message"], line["trial_id"]) == ("info", "trialflow.test", "hello", None)


def test_a_short_default_database_password_does_not_blank_out_ordinary_words(config_dir, capsys):
    settings = make_settings("postgresql+psycopg://trialflow:trialflow@db:5432/trialflow", config_dir,
                             smtp_url=f"smtp://trialflow:{SMTP_PASSWORD}@mail:587")
    configure_logging(json_lines=True, settings=settings)
    log = logging.getLogger("trialflow.test")
    log.info("trialflow on http://0.0.0.0:8000 (database postgresql+psycopg://trialflow:trialflow@db:5432/trialflow)")
    log.info(f"SMTP said 535 authentication failed for password {SMTP_PASSWORD}")
    first, second = (line["message"] for line in lines_of(capsys.readouterr().err))
    assert first == "trialflow on http://0.0.0.0:8000 (database postgresql+psycopg://[redacted]@db:5432/trialflow)"
    assert second == "SMTP said 535 authentication failed for password [redacted]"
