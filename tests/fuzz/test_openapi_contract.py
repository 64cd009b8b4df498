"""schemathesis, with every one of its checks and all of its phases (examples, coverage, fuzzing,
stateful), against the OpenAPI document trialflow serves, as ``schemathesis run`` would: each
operation gets requests generated from what the document says it takes, valid and broken, and
every answer must be documented (status, content type, headers, body schema), no 5xx, broken
input refused, valid input accepted.

Slack, GitHub and instance requests are signed and schemathesis cannot sign: with the secrets
set, what it sends is refused with the documented 401 (or 400 where the body is unreadable before
the signature matters), which is what this checks for those endpoints; the fuzz suites beside this
file sign theirs. Seeded and bounded so it takes seconds in CI.

(schemathesis's pytest plugin, ``schemathesis.pytest.from_fixture``, does not run on pytest 9:
it reads ``Function._nodeid``, which pytest 9 removed. Its engine is what the CLI runs anyway.)
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events
from schemathesis.engine import from_schema as engine_for

from tests.conftest import EVENTS_TOKEN, LOOPBACK_CLIENT, make_settings
from tests.fuzz.conftest import EXAMPLES
from tests.support.signed import signing_settings
from trialflow.api.app import create_app
from trialflow.clock import parse_instant
from trialflow.runtime import Runtime
from trialflow.services.reference import load_reference_data

CONFIG = {
    **({} if os.environ.get("TRIALFLOW_FUZZ_RANDOM") else {"seed": 20260105}),
    "generation": {"max-examples": max(EXAMPLES // 4, 1), "database": "none"},
    "checks": {"enabled": True},
    "phases": {"enabled": True},
    "headers": {},
}


@pytest.fixture
def app(sqlite_template, tmp_path, config_dir, clock):
    # One database is enough: what the document promises does not depend on it, and the fuzz
    # suites send their requests to PostgreSQL too.
    db = tmp_path / "trialflow.db"
    db.write_bytes(sqlite_template.read_bytes())
    runtime = Runtime(make_settings(f"sqlite:///{db}", config_dir, **signing_settings()), clock=clock)
    load_reference_data(runtime.session_factory, config_dir, clock.now())
    app = create_app(runtime)
    with TestClient(app):
        yield app
    runtime.close()


def from_this_machine(app):
    """The app as a person on this machine reaches it: schemathesis's ASGI client names itself
    "testclient", which is no address, and the staff surfaces answer loopback clients only."""
    async def asgi(scope, receive, send):
        await app({**scope, "client": LOOPBACK_CLIENT} if scope["type"] == "http" else scope, receive, send)
    return asgi


def _failures(event: events.ScenarioFinished) -> list[str]:
    found = []
    for nodes in event.recorder.checks.values():
        for node in nodes:
            if node.status == Status.FAILURE and node.failure_info is not None:
                failure = node.failure_info.failure
                found.append(f"{event.label}: {node.name}: {failure.title}\n{failure.message}\n"
                             f"{node.failure_info.code_sample}")
    return found


def test_every_operation_answers_as_its_openapi_document_says(app, caplog):
    config = SchemathesisConfig.from_dict({**CONFIG, "headers": {"Authorization": f"Bearer {EVENTS_TOKEN}"}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", from_this_machine(app), config=config)
    now = app.state.runtime.clock.now()

    @schema.hook
    def map_body(_context, body):
        # The one rule JSON Schema cannot state: an event or report's "at" is not in the future
        # (the document says so in words). A client with a working clock sends the past.
        if isinstance(body, dict) and isinstance(body.get("at"), str):
            at = parse_instant(body["at"])
            if at is not None and at > now:
                return {**body, "at": (now - (at - now) % timedelta(days=3650)).isoformat()}
        return body

    failures: list[str] = []
    errors: list[str] = []
    tested = set()
    with caplog.at_level(logging.WARNING):
        for event in engine_for(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                if event.status != Status.SKIP and event.label:
                    tested.add(event.label)
                failures.extend(_failures(event))
            elif isinstance(event, (events.NonFatalError, events.FatalError)):
                errors.append(repr(getattr(event, "value", None) or getattr(event, "exception", None)))
    assert not errors, errors
    assert not failures, "\n\n".join(sorted(set(failures)))
    documented = {f"{method.upper()} {path}" for path, ops in app.openapi()["paths"].items() for method in ops}
    assert documented <= tested, documented - tested
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks


def test_a_rate_limited_signup_answers_as_documented(sqlite_template, tmp_path, config_dir, clock):
    """schemathesis never reaches the signup limit (tests run unlimited): one 429, checked by hand
    against the document with schemathesis's own response validation."""
    db = tmp_path / "trialflow.db"
    db.write_bytes(sqlite_template.read_bytes())
    runtime = Runtime(make_settings(f"sqlite:///{db}", config_dir, signup_rate_per_ip="1/minute"), clock=clock)
    load_reference_data(runtime.session_factory, config_dir, clock.now())
    app = create_app(runtime)
    schema = schemathesis.openapi.from_asgi("/openapi.json", from_this_machine(app))
    operation = schema["/api/signups"]["POST"]
    try:
        with TestClient(app, client=LOOPBACK_CLIENT) as client:
            client.post("/api/signups", json={"email": "kim@globex.com"})
            response = client.post("/api/signups", json={"email": "lee@globex.com"})
    finally:
        runtime.close()
    assert response.status_code == 429 and response.headers["retry-after"].isdigit()
    operation.validate_response(response)
