"""The aggregates the funnel, the dashboard, the report and /metrics read (``services.aggregates``)
against a full recount from the rows, on the hand-worked set and after sweeps, deliveries with
retries, and a commit that fails between a step and its aggregates; and the funnel's splits,
exact on the hand-worked set (``tests/support/funnel_story.py``)."""
from __future__ import annotations

import argparse
import csv
import io
import json
from collections import Counter

import pytest
from sqlalchemy import event, func, select

from tests.conftest import make_settings
from tests.support.funnel_story import EXPECTED_SPLITS, play
from trialflow.db import tables
from trialflow.delivery.core import Deliverer
from trialflow.delivery.email import EmailTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.delivery.slack import SlackTransport
from trialflow.funnel import cli_report, recount_from_db, split_from_db
from trialflow.services import aggregates
from trialflow.services.sweep import sweep
from trialflow.services.trials import Command, run


@pytest.fixture
def settings(db_url, config_dir, fake_slack, fake_github, smtp_server):
    return make_settings(db_url, config_dir, **fake_slack.settings(), **fake_github.settings(),
                         **smtp_server.settings())


@pytest.fixture
def deliverer(runtime, settings):
    return Deliverer(runtime, {"slack": SlackTransport(settings),
                               "github": GitHubTransport(settings, seconds_between_writes=None),
                               "email": EmailTransport(settings)})


def figures(funnel) -> tuple[int, int, int, int, int]:
    t = funnel.total
    return t.requests, t.joiners, t.starts, t.activated, t.converted


def trial_counts(rt) -> Counter:
    """What /metrics reads: trials by (state, grade), from the appended deltas."""
    c = tables.trial_counts
    with rt.session_factory() as s:
        return Counter({(state, grade): int(n) for state, grade, n in s.execute(
            select(c.c.state, c.c.pql_grade, func.sum(c.c.n)).group_by(c.c.state, c.c.pql_grade)) if n})


def counted_from_trials(rt) -> Counter:
    t = tables.trials
    with rt.session_factory() as s:
        return Counter({(state, grade): n for state, grade, n in s.execute(
            select(t.c.state, t.c.pql_grade, func.count()).group_by(t.c.state, t.c.pql_grade))})


def delivery_stats(rt) -> Counter:
    d = tables.delivery_stats
    with rt.session_factory() as s:
        return Counter({(kind, bucket): int(n) for kind, bucket, n in s.execute(
            select(d.c.kind, d.c.bucket, func.sum(d.c.n)).group_by(d.c.kind, d.c.bucket)) if n})


def recounted(rt) -> tuple[list, Counter]:
    """The facts and the delivery histogram rebuilt from the rows, in a transaction rolled back."""
    with rt.session_factory() as s:
        aggregates.recount(s, deliveries=True)
        facts = sorted(tuple(r) for r in s.execute(select(tables.trial_facts)))
        d = tables.delivery_stats
        stats = Counter({(kind, bucket): int(n) for kind, bucket, n in s.execute(
            select(d.c.kind, d.c.bucket, func.sum(d.c.n)).group_by(d.c.kind, d.c.bucket))})
        s.rollback()
    return facts, stats


def kept_facts(rt) -> list:
    with rt.session_factory() as s:
        return sorted(tuple(r) for r in s.execute(select(tables.trial_facts)))


def assert_aggregates_match_a_recount(rt) -> None:
    assert recount_from_db(rt, weeks=3).to_dict() == split_from_db(rt, None, weeks=3)[None].to_dict()
    assert trial_counts(rt) == counted_from_trials(rt)
    facts, stats = recounted(rt)
    assert kept_facts(rt) == facts
    assert delivery_stats(rt) == stats


def test_each_split_is_exact_on_the_hand_worked_set(client, runtime):
    play(client, runtime)
    for by, expected in EXPECTED_SPLITS.items():
        got = {value: figures(funnel) for value, funnel in split_from_db(runtime, by, weeks=2).items()}
        assert got == expected, by


def test_report_json_csv_api_and_dashboard_give_the_same_split(client, runtime, capsys):
    play(client, runtime)
    assert cli_report(runtime, argparse.Namespace(json=True, csv=False, weeks=2, by="source")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == client.get("/api/funnel", params={"weeks": 2, "by": "source"}).json()
    assert {g["value"]: (g["total"]["requests"], g["total"]["joiners"], g["total"]["starts"]) for g in printed["groups"]} \
        == {"website": (2, 0, 2), "webinar": (2, 0, 1), None: (0, 1, 0)}

    assert cli_report(runtime, argparse.Namespace(json=False, csv=True, weeks=2, by="ce")) == 0
    from_cli = capsys.readouterr().out
    answer = client.get("/api/funnel.csv", params={"weeks": 2, "by": "ce"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert answer.text == from_cli
    lines = list(csv.DictReader(io.StringIO(from_cli)))
    totals = {line["ce"]: (line["requests"], line["joiners"], line["starts"], line["activated"], line["converted"])
              for line in lines if line["week"] == "all"}
    assert totals == {"carol.ce@example.com": ("2", "0", "2", "1", "1"), "chris.ce@example.com": ("1", "0", "1", "0", "0"),
                      "": ("1", "1", "0", "0", "0")}
    w02 = next(line for line in lines if line["ce"] == "carol.ce@example.com" and line["week"] == "2026-W02")
    # lee: 32 h from signup to start, the only case-3 start of carol's
    assert (w02["median_seconds_signup_to_start"], w02["completed_signup_to_start"]) == ("115200.0", "1")

    page = client.get("/dashboard", params={"weeks": 2, "by": "reason"})
    assert page.status_code == 200
    assert '<tr data-group="student project"><th scope="row">student project</th><td data-field="requests">1</td>' \
        '<td data-field="joiners">0</td><td data-field="starts">0</td>' in page.text
    assert client.get("/api/funnel", params={"by": "password"}).status_code == 422


def test_the_aggregates_equal_a_full_recount_after_sweeps_and_deliveries_with_retries(
        client, runtime, clock, deliverer, fake_slack):
    ids = play(client, runtime)
    assert_aggregates_match_a_recount(runtime)
    fake_slack.fail("chat.postMessage", "internal_error", times=2)   # two attempts retried later
    deliverer.drain_all()
    clock.advance(hours=1)
    deliverer.drain_all()
    with runtime.session_factory() as s:
        assert s.scalar(select(func.count()).select_from(tables.outbox).where(tables.outbox.c.attempts > 1)) >= 1
        assert s.scalar(select(func.count()).select_from(tables.outbox)
                        .where(tables.outbox.c.status != "delivered")) == 0
    clock.advance(days=16)   # day 15 of carl's trial (and past bob's, lee's): the clock moves them
    sweep(runtime)
    run(runtime, Command(ids["carl"], "terminate", detail={"reason": "no use"}, internal=True))
    deliverer.drain_all()
    sweep(runtime)           # folds the deltas: the same sums, one row per key
    with runtime.session_factory() as s:
        rows = s.execute(select(tables.trial_counts.c.state, tables.trial_counts.c.pql_grade)).all()
    assert len(rows) == len(set(rows))
    assert_aggregates_match_a_recount(runtime)
    assert trial_counts(runtime)[("terminated", "D")] == 1


def test_a_commit_that_fails_after_the_step_leaves_neither_the_step_nor_its_aggregates(client, runtime):
    ids = play(client, runtime)
    before = (kept_facts(runtime), trial_counts(runtime))

    class PowerCut(Exception):
        pass

    def cut(_session):
        raise PowerCut()

    with runtime.uow() as uow:
        # After the aggregates' own before_commit hook (installed with the session factory): the
        # step and its aggregates are written, then the commit never happens.
        event.listen(uow.session, "before_commit", cut)
        from trialflow.services.trials import get_trial, handle
        trial = get_trial(uow, ids["lee"], lock=True)
        handle(uow, runtime.settings, runtime.clock.now(), Command(ids["lee"], "terminate",
                                                                   detail={"reason": "no use"}, internal=True), trial)
        with pytest.raises(PowerCut):
            uow.commit()
    with runtime.session_factory() as s:
        assert s.scalar(select(tables.trials.c.state).where(tables.trials.c.id == ids["lee"])) == "active"
    assert (kept_facts(runtime), trial_counts(runtime)) == before
    assert_aggregates_match_a_recount(runtime)


def test_recount_repairs_aggregates_that_drifted(client, runtime):
    play(client, runtime)
    expected = kept_facts(runtime), trial_counts(runtime)
    with runtime.uow() as uow:
        uow.session.execute(tables.trial_facts.delete())
        uow.session.execute(tables.trial_counts.insert().values(state="active", pql_grade=None, n=7))
        uow.commit()
    assert figures(split_from_db(runtime, None, weeks=2)[None]) == (0, 0, 0, 0, 0)
    with runtime.uow() as uow:
        aggregates.recount(uow.session)
        uow.commit()
    assert (kept_facts(runtime), trial_counts(runtime)) == expected
    assert figures(split_from_db(runtime, None, weeks=2)[None]) == (4, 1, 3, 1, 1)


def test_a_savepoint_rolled_back_after_a_step_keeps_that_steps_aggregates(client, runtime):
    """The sweep's careful path: one trial's step inside a savepoint fails after another's was taken."""
    from trialflow.services.trials import get_trial, handle
    ids = play(client, runtime)
    with runtime.uow() as uow:
        trial = get_trial(uow, ids["lee"], lock=True)
        handle(uow, runtime.settings, runtime.clock.now(), Command(ids["lee"], "terminate",
                                                                   detail={"reason": "no use"}, internal=True), trial)
        uow.session.flush()
        with pytest.raises(ZeroDivisionError), uow.session.begin_nested():
            get_trial(uow, ids["carl"], lock=True).kept = True
            uow.session.flush()
            raise ZeroDivisionError()
        uow.commit()
    with runtime.session_factory() as s:
        assert s.scalar(select(tables.trial_facts.c.state).where(tables.trial_facts.c.trial_id == ids["lee"])) == "terminated"
    assert_aggregates_match_a_recount(runtime)
