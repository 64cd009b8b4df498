"""The weighted rotation's choice, as a pure function: weights, skips and their reasons, pairs."""
from __future__ import annotations

from collections import Counter
from datetime import date

from trialflow.domain.rotation import Candidate, choose

TODAY = date(2026, 12, 1)


def turns(people: list[Candidate], n: int, credits: dict[str, float] | None = None) -> list[str | None]:
    credits = dict(credits or {})
    out = []
    for _ in range(n):
        pick, credits = choose(people, credits, TODAY)
        out.append(pick.email)
    return out


def test_turns_follow_the_weights_and_interleave():
    people = [Candidate("a@x", "Ann", 2), Candidate("b@x", "Bo", 1)]
    assert turns(people, 6) == ["a@x", "b@x", "a@x"] * 2
    assert Counter(turns([*people, Candidate("c@x", "Cy", 3)], 600)) == {"a@x": 200, "b@x": 100, "c@x": 300}


def test_a_pick_says_who_was_next_and_who_was_skipped_for_what():
    people = [Candidate("carl@x", "Carl"), Candidate("cora@x", "Cora", away_until=date(2026, 12, 8)),
              Candidate("cy@x", "Cy", open_trials=4, max_open_trials=4), Candidate("zed@x", "Zed", weight=0)]
    pick, _ = choose(people, {}, TODAY)
    assert pick.explain() == ("Carl: next in rotation; Cora skipped: away until 12-08; "
                              "Cy skipped: at their cap of 4 open trials; Zed skipped: weight 0")
    back, _ = choose(people, {}, date(2026, 12, 9))
    assert "Cora" not in {s.name for s in back.skipped}


def test_nobody_able_is_said_plainly():
    pick, credits = choose([Candidate("cora@x", "Cora", away_until=TODAY)], {"cora@x": 0.5}, TODAY)
    assert pick.email is None and pick.explain() == "nobody: no one in the rotation can take it; Cora skipped: away until 12-01"
    assert credits == {"cora@x": 0.5}


def test_someone_away_neither_earns_nor_is_owed_turns():
    people = [Candidate("a@x", "Ann"), Candidate("b@x", "Bo", away_until=date(2026, 12, 10))]
    credits: dict[str, float] = {}
    for _ in range(10):
        _, credits = choose(people, credits, TODAY)
    back = [Candidate("a@x", "Ann"), Candidate("b@x", "Bo")]
    assert turns(back, 4, credits).count("b@x") == 2


def test_a_pair_is_preferred_and_charged_for_the_turn():
    people = [Candidate("a@x", "Ann"), Candidate("b@x", "Bo")]
    pick, credits = choose(people, {}, TODAY, prefer="b@x", prefer_why="paired with AE Al")
    assert (pick.email, pick.why) == ("b@x", "paired with AE Al")
    assert turns(people, 1, credits) == ["a@x"]  # the rotation evens out after the pair's turn


def test_the_timeline_shows_why_people_were_picked():
    import io

    from trialflow.timeline import print_timeline
    out = io.StringIO()
    print_timeline({"trial_id": "tr_1", "email": "bob@acme.example", "case": "prequalified_unnamed", "state": "active",
                    "assignees": {"sdr": None, "ae": "al@x", "ce": "carl@x"},
                    "history": [{"at": "2026-12-01T09:00:00+00:00", "trigger": "claim_pool_instance",
                                 "from_state": "new", "to_state": "active", "actor": "system",
                                 "detail": {"routing": {"ce": "Carl: next in rotation; Cora skipped: away until 12-08",
                                                        "ae": "Al: next in rotation"}}}]}, out)
    lines = out.getvalue().splitlines()
    assert lines[-2:] == [" " * 20 + "AE Al: next in rotation",
                          " " * 20 + "CE Carl: next in rotation; Cora skipped: away until 12-08"]
