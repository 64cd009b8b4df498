"""The world the fuzz suites and the bad-input tests send their requests into: trialflow over HTTP with Slack, GitHub and
activity signing on, slack_sdk and PyGithub pointed at local fakes, and trials in several states
(so a generated button press or "instance ready" signal can reach deep into the services).

``world.send(...)`` makes one request and checks what every answer must satisfy: no 5xx, no
traceback or error in the logs, and a 4xx is a JSON ``{"error": <sentence>}`` that changed nothing.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, literal, select, union_all

from tests.support.fake_github import FakeGitHub
from tests.support.signed import FIXTURE_REPO, interactive_fake_slack, signing_settings
from trialflow.api.app import create_app
from trialflow.db.tables import metadata
from trialflow.delivery.core import Deliverer
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.runtime import Runtime
from trialflow.services.directory import Directory
from trialflow.services.reference import load_reference_data
from trialflow.services.trials import Command, run


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class World:
    runtime: Runtime
    client: TestClient
    slack: Any
    github: FakeGitHub
    records: _Records
    trials: dict[str, str] = field(default_factory=dict)     # what each trial is for → its id
    issues: dict[str, tuple[int, str]] = field(default_factory=dict)  # trial id → (number, body)

    @property
    def now(self):
        return self.runtime.clock.now()

    def fingerprint(self) -> dict[str, int]:
        """How many rows each table holds: a refused request must leave every count as it was."""
        counts = union_all(*(select(literal(t.name).label("name"), func.count().label("rows")).select_from(t)
                             for t in metadata.sorted_tables))
        with self.runtime.engine.connect() as conn:
            return {name: rows for name, rows in conn.execute(counts)}

    def send(self, method: str, url: str, raw_headers: bool = False, **kwargs: Any):
        """One request, checked. ``raw_headers``: header bytes reach the app as given, as from a real
        server (Starlette's TestClient re-encodes a Latin-1 header value as UTF-8)."""
        before = self.fingerprint()
        self.records.records.clear()
        response = self._raw(method, url, **kwargs) if raw_headers else self.client.request(method, url, **kwargs)
        status = response.status_code
        bad = [r for r in self.records.records if r.exc_info or r.levelno >= logging.ERROR]
        assert not bad, f"{method} {url} answered {status} and logged " + "; ".join(
            f"{r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else r.getMessage() for r in bad)
        assert status < 500, f"{method} {url} answered {status}: {response.text[:500]}"
        if 400 <= status < 500:
            body = response.json()
            assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip(), \
                f"{method} {url} answered {status} without a message: {response.text[:300]}"
            assert self.fingerprint() == before, f"{method} {url} answered {status} but changed something"
        return response


    def _raw(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def request() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.client.app, raise_app_exceptions=False, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await client.request(method, url, **kwargs)
        return asyncio.run(request())


def _person(runtime: Runtime, slack_id: str):
    with runtime.session_factory() as s:
        return Directory(s).by_slack_id(slack_id)


@pytest.fixture
def world(db_url, config_dir, clock):
    from tests.conftest import LOOPBACK_CLIENT, make_settings  # (tests/conftest.py imports this module)
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    with interactive_fake_slack() as slack, FakeGitHub(repo=FIXTURE_REPO) as github:
        settings_ = make_settings(db_url, config_dir, **signing_settings(), **slack.settings(), **github.settings())
        runtime = Runtime(settings_, clock=clock)
        load_reference_data(runtime.session_factory, config_dir, clock.now())
        try:
            with TestClient(create_app(runtime), raise_server_exceptions=False, client=LOOPBACK_CLIENT) as client:
                world = World(runtime, client, slack, github, records)
                _populate(world)
                yield world
        finally:
            runtime.close()
            root.removeHandler(records)


def _signup(world: World, email: str, **extra: str) -> str:
    response = world.client.post("/api/signups", json={"email": email, **extra})
    assert response.status_code == 201, response.text
    return response.json()["trial_id"]


def _populate(world: World) -> None:
    rt = world.runtime
    world.trials["triage"] = _signup(world, "sam@stark-industries.com", name="Sam", company="Stark Industries")
    world.trials["active"] = _signup(world, "bob@acme-corp.com", name="Bob")
    requested = _signup(world, "pat@wayne-enterprises.com", name="Pat")
    run(rt, Command(requested, "qualify", "U0SDR0001", _person(rt, "U0SDR0001"), {"opportunity_id": "006Q"}))
    world.trials["requested"] = requested
    ready = _signup(world, "lee@umbrella-corp.com", name="Lee")
    run(rt, Command(ready, "qualify", "U0SDR0001", _person(rt, "U0SDR0001"), {"opportunity_id": "006R"}))
    transports = {"github": GitHubTransport(rt.settings, seconds_between_writes=0),
                  "slack": DryRunTransport("slack"), "email": DryRunTransport("email")}
    Deliverer(rt, transports).drain_all()
    run(rt, Command(ready, "mark_instance_ready", "cody-cloud", _person(rt, "U0CLOUD01"),
                    {"host": "umbrella-corp.sourcegraph.com"}))
    world.trials["ready"] = ready
    for trial_id in (requested, ready):
        [issue] = [i for i in world.github.issues if f"trialflow:{trial_id}:instance-request" in (i["body"] or "")
                   and "instance-request" in [label["name"] for label in i["labels"]]]
        world.issues[trial_id] = (issue["number"], issue["body"])
