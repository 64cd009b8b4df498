"""Concurrent signups over real HTTP against uvicorn on PostgreSQL: one domain claims one instance,
one email makes one trial, and the pool is never handed out twice.

The TestClient cannot show these races (it runs one request at a time); here every request is a
real connection to a real server whose thread pool runs the transactions side by side."""
from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import make_settings
from tests.support.config import ACCOUNTS, INSTANCES, STAFF, write_config
from tests.support.live_server import LiveServer
from trialflow.api.app import create_app
from trialflow.db import tables
from trialflow.runtime import Runtime
from trialflow.services.reference import load_reference_data

pytestmark = pytest.mark.postgres


@pytest.fixture
def serve(pg_url, tmp_path, clock):
    """Start trialflow on PostgreSQL with the given reference data; yields (server, runtime)."""
    started = []

    def start(accounts: str = ACCOUNTS, instances: str = INSTANCES):
        config = write_config(tmp_path / "config", accounts, STAFF, instances)
        rt = Runtime(make_settings(pg_url, config), clock=clock)
        load_reference_data(rt.session_factory, config, clock.now())
        server = LiveServer(create_app(rt)).__enter__()
        started.append((server, rt))
        return server, rt

    yield start
    for server, rt in started:
        server.__exit__(None, None, None)
        rt.close()


def post_all(url: str, emails: list[str]) -> list[httpx.Response]:
    """All signups at once: each on its own connection, released together."""
    async def run():
        limits = httpx.Limits(max_connections=len(emails), max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(client.post("/api/signups", json={"email": e}) for e in emails))
    return asyncio.run(run())


def scalar(rt, stmt):
    with rt.engine.connect() as conn:
        return conn.scalar(stmt)


def rows(rt, stmt):
    with rt.engine.connect() as conn:
        return conn.execute(stmt).all()


def assert_nothing_fell_into_the_failsafe(rt, answers):
    # A deadlock or a unique violation would be caught by the failsafe and answered 202: a race
    # that "passes" that way has lost the routing, so it counts as a failure here.
    assert [a.status_code for a in answers if a.status_code not in (200, 201)] == []
    assert scalar(rt, select(func.count()).select_from(tables.failed_signups)) == 0


@pytest.mark.parametrize("domain,case", [("acme-corp.com", "prequalified_named"), ("globex.com", "prequalified_unnamed")])
def test_fifty_concurrent_signups_of_one_fresh_domain_claim_exactly_one_instance(serve, domain, case):
    server, rt = serve()
    emails = [f"user{i:02d}@{domain}" for i in range(50)]

    answers = post_all(server.url, emails)

    assert_nothing_fell_into_the_failsafe(rt, answers)
    assert Counter(a.status_code for a in answers) == {201: 50}
    redirects = {a.json()["redirect_url"] for a in answers}
    assert len(redirects) == 1 and None not in redirects
    assert Counter(a.json()["case"] for a in answers) == {case: 1, "existing_instance": 49}
    claimed = rows(rt, select(tables.instances.c.host, tables.instances.c.admin_email)
                   .where(tables.instances.c.status == "live", tables.instances.c.trial_id.is_not(None)))
    assert len(claimed) == 1
    assert redirects == {f"https://{claimed[0].host}/sign-in"}
    assert claimed[0].admin_email in emails
    assert scalar(rt, select(func.count()).select_from(tables.instances).where(tables.instances.c.status == "pool")) == 4
    assert rows(rt, select(tables.domain_claims.c.domain, tables.domain_claims.c.instance_host)
                .where(tables.domain_claims.c.domain == domain)) == [(domain, claimed[0].host)]


def test_the_losers_of_a_domain_race_do_not_use_up_turns_in_the_round_robin(serve):
    server, rt = serve()
    answers = post_all(server.url, [f"user{i:02d}@globex.com" for i in range(50)])
    assert_nothing_fell_into_the_failsafe(rt, answers)
    assert scalar(rt, select(tables.round_robin.c.position).where(tables.round_robin.c.role == "ae")) == 1

    # the next unnamed account gets the next people in line, as if the race had been one signup
    nxt = httpx.post(server.url + "/api/signups", json={"email": "anna@bücher.example"}).json()
    trial = httpx.get(f"{server.url}/api/trials/{nxt['trial_id']}").json()
    assert (trial["assignees"]["ae"], trial["assignees"]["ce"]) == ("andy.ae@example.com", "chris.ce@example.com")


@pytest.mark.parametrize("email", ["bob@acme-corp.com", "lee@tiny-startup.io"])
def test_the_same_email_twenty_times_at_once_makes_one_trial(serve, email):
    server, rt = serve()

    answers = post_all(server.url, [email] * 20)

    assert_nothing_fell_into_the_failsafe(rt, answers)
    assert Counter(a.status_code for a in answers) == {201: 1, 200: 19}
    assert len({a.json()["trial_id"] for a in answers}) == 1
    assert len({a.json()["redirect_url"] for a in answers}) == 1
    assert scalar(rt, select(func.count()).select_from(tables.trials)) == 1
    # and its effects exist once: one alert, not twenty
    assert scalar(rt, select(func.count()).select_from(tables.outbox).where(tables.outbox.c.kind == "slack.message")) == 1
    assert scalar(rt, select(func.count()).select_from(tables.instances).where(
        tables.instances.c.status == "live", tables.instances.c.trial_id.is_not(None))) == (1 if "acme" in email else 0)


def test_more_fresh_domains_than_pool_instances_at_once_never_hand_one_instance_out_twice(serve):
    domains = [f"company{i:02d}.example" for i in range(20)]
    accounts = ACCOUNTS + "".join(f"{d},Company {i},true,false,,,\n" for i, d in enumerate(domains))
    server, rt = serve(accounts=accounts)

    answers = post_all(server.url, [f"admin@{d}" for d in domains])

    assert_nothing_fell_into_the_failsafe(rt, answers)
    states = Counter(a.json()["state"] for a in answers)
    assert states == {"active": 5, "waiting_for_capacity": 15}
    redirects = [a.json()["redirect_url"] for a in answers if a.json()["redirect_url"]]
    assert len(redirects) == len(set(redirects)) == 5
    assert scalar(rt, select(func.count()).select_from(tables.instances).where(tables.instances.c.status == "pool")) == 0
    assert scalar(rt, select(func.count(func.distinct(tables.instances.c.trial_id))).where(
        tables.instances.c.status == "live", tables.instances.c.trial_id.is_not(None))) == 5
