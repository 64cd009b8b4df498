"""Signups are rate limited per client address and per email domain: over HTTP, on SQLite and
PostgreSQL (the event-loop fast path), shared by two API processes through Redis, and by the real
client behind a trusted proxy. A refused signup stores nothing and posts nothing."""
from __future__ import annotations

import concurrent.futures
import shutil

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import make_settings
from tests.support.live_server import LiveServer
from tests.support.processes import TrialflowProcess, free_port, trialflow_env
from trialflow.api.app import create_app
from trialflow.db import tables
from trialflow.runtime import Runtime
from trialflow.services.reference import load_reference_data


def counts(rt) -> tuple[int, int]:
    with rt.session_factory() as s:
        return (s.scalar(select(func.count()).select_from(tables.trials)),
                s.scalar(select(func.count()).select_from(tables.outbox)))


@pytest.fixture
def limited(db_url, config_dir, clock):
    """A runtime whose signups are limited as given (a factory: each test says how)."""
    made = []

    def make(**overrides):
        settings = make_settings(db_url, config_dir, **{"signup_rate_per_ip": "30/minute",
                                                        "signup_rate_per_domain": "200/hour", **overrides})
        rt = Runtime(settings, clock=clock)
        load_reference_data(rt.session_factory, config_dir, clock.now())
        made.append(rt)
        return rt
    yield make
    for rt in made:
        rt.close()


def test_a_burst_of_200_signups_from_one_address_gets_429s_after_the_limit(limited):
    rt = limited()
    with LiveServer(create_app(rt)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        def sign_up(i: int) -> httpx.Response:
            return http.post("/api/signups", json={"email": f"lead{i}@company{i}.example"})
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(sign_up, range(200)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(201) == 30 and statuses.count(429) == 170
    refused = next(a for a in answers if a.status_code == 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["retry_after"] == int(refused.headers["retry-after"])
    assert "Too many signups from your network (at most 30 per minute)" in refused.json()["error"]
    assert counts(rt)[0] == 30          # nothing stored for the 170, and no alert for them either
    assert counts(rt)[1] == 60          # each of the 30: its triage alert and the SDRs' Home tabs


def test_signups_for_one_domain_are_limited_whatever_the_address(limited):
    rt = limited(signup_rate_per_domain="3/hour", trusted_proxies="127.0.0.1")
    with TestClient(create_app(rt), client=("127.0.0.1", 1)) as c:
        answers = [c.post("/api/signups", json={"email": f"p{i}@initech.com"},
                          headers={"x-forwarded-for": f"198.51.100.{i}"}) for i in range(5)]
        other = c.post("/api/signups", json={"email": "x@globex.com"}, headers={"x-forwarded-for": "198.51.100.9"})
    assert [a.status_code for a in answers] == [201, 201, 201, 429, 429]
    assert "for your email domain (at most 3 per hour)" in answers[3].json()["error"]
    assert int(answers[3].headers["retry-after"]) > 3000
    assert other.status_code == 201
    assert counts(rt)[0] == 4


def test_a_public_mailbox_domain_is_limited_per_address_not_for_all_its_users(limited):
    rt = limited(signup_rate_per_domain="2/hour", trusted_proxies="127.0.0.1")
    with TestClient(create_app(rt), client=("127.0.0.1", 1)) as c:
        people = [c.post("/api/signups", json={"email": f"p{i}@gmail.com"}, headers={"x-forwarded-for": f"198.51.100.{i}"})
                  for i in range(4)]
        repeats = [c.post("/api/signups", json={"email": "p0@gmail.com"}, headers={"x-forwarded-for": "198.51.100.20"})
                   for _ in range(2)]
    assert [a.status_code for a in people] == [201, 201, 201, 201]
    assert [a.status_code for a in repeats] == [200, 429]


def test_behind_a_trusted_proxy_signups_are_limited_per_real_client(limited):
    rt = limited(signup_rate_per_ip="3/minute", trusted_proxies="10.0.0.0/8, 127.0.0.1")
    with TestClient(create_app(rt), client=("10.1.2.3", 1)) as proxy:
        def via_proxy(i: int, forwarded: str) -> int:
            return proxy.post("/api/signups", json={"email": f"lead{i}@c{i}.example"},
                              headers={"x-forwarded-for": forwarded}).status_code
        first = [via_proxy(i, "198.51.100.1") for i in range(4)]
        # What a client writes into X-Forwarded-For itself is left of what the proxy appended: ignored.
        spoofed = [via_proxy(10 + i, f"203.0.113.{i}, 198.51.100.1") for i in range(2)]
        second = via_proxy(20, "198.51.100.2")
        two_proxies = via_proxy(21, "198.51.100.2, 10.9.9.9")       # our own proxies are skipped
    assert first == [201, 201, 201, 429] and spoofed == [429, 429]
    assert second == 201 and two_proxies == 201


def test_without_trusted_proxies_a_forwarded_header_changes_nothing(limited):
    rt = limited(signup_rate_per_ip="2/minute")
    with TestClient(create_app(rt), client=("203.0.113.50", 1)) as c:
        statuses = [c.post("/api/signups", json={"email": f"l{i}@c{i}.example"},
                           headers={"x-forwarded-for": f"198.51.100.{i}"}).status_code for i in range(3)]
    assert statuses == [201, 201, 429]


@pytest.mark.redis
def test_when_redis_fails_signups_are_still_taken_and_counted_in_process(limited):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    rt = limited(signup_rate_per_ip="2/minute", broker_url=dead)
    with TestClient(create_app(rt), client=("203.0.113.7", 1)) as c:
        statuses = [c.post("/api/signups", json={"email": f"l{i}@c{i}.example"}).status_code for i in range(3)]
    assert statuses == [201, 201, 429]


@pytest.mark.redis
def test_two_api_processes_share_the_limit_through_redis(redis_url, config_dir, tmp_path, sqlite_template):
    database = tmp_path / "shared.db"
    shutil.copy(sqlite_template, database)
    env = trialflow_env(database_url=f"sqlite:///{database}", config_dir=str(config_dir), broker_url=redis_url,
                        signup_rate_per_ip="5/minute", signup_rate_per_domain="1000/hour")
    servers = []
    try:
        for name in ("a", "b"):
            port = free_port()
            server = TrialflowProcess(["serve", "--port", str(port)], env, tmp_path / f"serve-{name}.log").start()
            servers.append((server, f"http://127.0.0.1:{port}"))
        for server, _url in servers:
            server.wait_ready("Application startup complete", timeout=60)
        statuses = []
        for i in range(8):
            _, url = servers[i % 2]
            statuses.append(httpx.post(f"{url}/api/signups", json={"email": f"l{i}@c{i}.example"}, timeout=10).status_code)
    finally:
        for server, _ in servers:
            server.stop()
    assert statuses == [201] * 5 + [429] * 3, statuses   # each alone would have taken all 4 of its own


def test_the_limits_are_read_from_the_settings_in_the_library_notation(config_dir, tmp_path):
    with pytest.raises(ValueError, match="TRIALFLOW_SIGNUP_RATE_PER_IP must read like 30/minute"):
        make_settings(f"sqlite:///{tmp_path}/x.db", config_dir, signup_rate_per_ip="thirty a minute")
    with pytest.raises(ValueError, match="TRIALFLOW_TRUSTED_PROXIES"):
        make_settings(f"sqlite:///{tmp_path}/x.db", config_dir, trusted_proxies="10.0.0.0/8 proxy.internal")
