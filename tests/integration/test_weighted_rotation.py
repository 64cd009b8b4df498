"""The weighted rotation (``services.rotation``) over many turns, in-process on the real code and
database: it follows the weights, nobody passes their cap, nobody away or inactive is picked, and
on PostgreSQL concurrent signups each take their own turn."""
from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import UTC, date, datetime

from sqlalchemy import update

from tests.support.config import write_config
from trialflow.db import tables
from trialflow.db.engine import make_engine, make_session_factory
from trialflow.domain import lifecycle as lc
from trialflow.domain.decisions import Decisions
from trialflow.domain.trial import PlainTrial
from trialflow.services import rotation, writer
from trialflow.services.reference import load_reference_data

TODAY = date(2026, 1, 5)
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HEADER = "email,name,role,slack_user_id,github_login,active,away_until,backup,weight,max_open_trials\n"
WEIGHTED = HEADER + """\
ada.ae@example.com,Ada,ae,,,true,,,3,
bea.ae@example.com,Bea,ae,,,true,,,2,
cal.ae@example.com,Cal,ae,,,true,,,1,
cora.ae@example.com,Cora,ae,,,true,2026-12-08,,5,
old.ae@example.com,Old,ae,,,false,,,5,
"""
CAPPED = HEADER + """\
ada.ae@example.com,Ada,ae,,,true,,,1,3
bea.ae@example.com,Bea,ae,,,true,,,1,
cal.ae@example.com,Cal,ae,,,true,,,1,5
"""


def sessions(db_url, tmp_path, staff: str):
    config = write_config(tmp_path / "config", staff=staff)
    factory = make_session_factory(make_engine(db_url))
    load_reference_data(factory, config, NOW)
    return factory


def assigned_trial(session, n: int, ae: str) -> None:
    """A started trial held by ``ae``, written as a signup writes it."""
    trial = PlainTrial(f"tr_{n:016x}", f"lead{n}@company{n}.example", f"company{n}.example", NOW)
    trial.fire(lc.SEND_TO_TRIAGE, actor="system", at=NOW)
    trial.ae = ae
    writer.write_new_trial(session, trial, Decisions())


def test_a_thousand_turns_follow_the_weights_within_5_percent_and_skip_the_away_and_the_inactive(db_url, tmp_path):
    factory = sessions(db_url, tmp_path, WEIGHTED)
    picks: list[str | None] = []
    for _ in range(20):  # 20 transactions of 50 turns: the credits live in the database in between
        with factory() as session, session.begin():
            picks += [rotation.pick(session, "ae", TODAY).email for _ in range(50)]
    counts = Counter(picks)
    assert len(picks) == 1000 and set(counts) == {"ada.ae@example.com", "bea.ae@example.com", "cal.ae@example.com"}
    for email, weight in (("ada.ae@example.com", 3), ("bea.ae@example.com", 2), ("cal.ae@example.com", 1)):
        expected = 1000 * weight / 6
        assert abs(counts[email] - expected) <= 0.05 * expected, (email, counts[email], expected)
    # Smooth: the heaviest never gets more than its share in a row (3 of every 6, interleaved).
    assert "ada.ae@example.com," * 3 not in ",".join(picks) + ","


def test_a_thousand_turns_with_trials_closing_at_random_never_pass_anyones_cap(sqlite_url, tmp_path):
    # SQLite only: the caps are counted by the query the turns above run on both databases.
    factory = sessions(sqlite_url, tmp_path, CAPPED)
    caps = {"ada.ae@example.com": 3, "cal.ae@example.com": 5}
    rng = random.Random(13)
    counts: Counter[str] = Counter()
    open_ids: list[str] = []
    skipped_at_cap = 0
    t = tables.trials.c
    for batch in range(50):
        with factory() as session, session.begin():
            for n in range(batch * 20, batch * 20 + 20):
                chosen = rotation.pick(session, "ae", TODAY)
                assert chosen.email is not None
                skipped_at_cap += any("at their cap" in s.why for s in chosen.skipped)
                assigned_trial(session, n, chosen.email)
                open_ids.append(f"tr_{n:016x}")
                counts[chosen.email] += 1
                held = rotation.open_trials(session, "ae", list(caps))
                assert all(held.get(email, 0) <= cap for email, cap in caps.items()), (n, held)
                while open_ids and rng.random() < 0.6:  # trials end at random between signups
                    ended = open_ids.pop(rng.randrange(len(open_ids)))
                    session.execute(update(tables.trials).where(t.id == ended).values(state=lc.DISQUALIFIED))
    assert sum(counts.values()) == 1000 and skipped_at_cap > 0  # the caps were reached, and honoured
    assert counts.most_common(1)[0][0] == "bea.ae@example.com"  # the one without a cap
    assert min(counts.values()) > 0


def test_concurrent_turns_on_postgresql_each_take_their_own_turn(pg_url, tmp_path):
    factory = sessions(pg_url, tmp_path, WEIGHTED)
    picks: list[str | None] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(6):
            with factory() as session, session.begin():
                email = rotation.pick(session, "ae", TODAY).email
            with lock:
                picks.append(email)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # 48 turns at weights 3:2:1 are exactly 24, 16 and 8 when no two turns read the same credits.
    assert Counter(picks) == {"ada.ae@example.com": 24, "bea.ae@example.com": 16, "cal.ae@example.com": 8}
