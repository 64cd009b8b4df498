"""Lead scoring against the seed (shared/seeds/plg-and-lead-scoring.txt) and config/pql.csv."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from trialflow import scoring
from trialflow.errors import ConfigError
from trialflow.scoring import Activity

SEED = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "plg-and-lead-scoring.txt"
REPO = Path(__file__).resolve().parents[2]

# The seed's table, row by row, and the event kind each row is posted as.
SEED_ROWS = {
    "Form submission (any other than demo request, pricing inquiry, or feedback - includes product sign-up or install)": ("form_submission", 10),
    "Demo request": ("demo_request", 15),
    "Pricing inquiry (i.e., contact sales)": ("pricing_inquiry", 15),
    "Private Install or Sourcegraph.com Sign up": ("signup_or_install", 10),
    "Page view (pricing)": ("pricing_page_view", 5),
    "Page view (any other than pricing)": ("page_view", 1),
}


def seed_table() -> dict[str, int]:
    if not SEED.exists():
        pytest.fail(f"seed not found at {SEED}")
    rows = {}
    for line in SEED.read_text().splitlines():
        m = re.match(r"^(.+?) \| (\d+) points?(?: per view)? \|$", line.strip())
        if m:
            rows[m.group(1)] = int(m.group(2))
    return rows


def test_every_row_of_the_seeds_mql_table_is_scored_with_its_points():
    table = seed_table()
    assert set(table) == set(SEED_ROWS), "the seed's table changed: update MQL_POINTS and SEED_ROWS"
    for action, points in table.items():
        kind, expected = SEED_ROWS[action]
        assert expected == points
        assert scoring.mql_points(kind) == points, action


def test_the_seed_makes_a_lead_an_mql_at_15_points():
    assert "MQL Classification | 15+ points |" in SEED.read_text()
    assert scoring.MQL_THRESHOLD == 15
    assert not scoring.is_mql(14)
    assert scoring.is_mql(15)


def test_a_demo_request_alone_makes_an_mql_but_fourteen_page_views_do_not():
    assert scoring.is_mql(scoring.mql_points("demo_request"))
    assert not scoring.is_mql(14 * scoring.mql_points("page_view"))
    # 1 pricing page view + 10 other page views = 5 + 10 = 15
    assert scoring.is_mql(scoring.mql_points("pricing_page_view") + 10 * scoring.mql_points("page_view"))


def test_a_feedback_form_is_kept_but_worth_nothing_as_the_seed_excludes_it():
    assert scoring.mql_points("feedback_form") == 0


def test_an_unknown_marketing_action_has_no_score():
    with pytest.raises(KeyError):
        scoring.mql_points("webinar")


def test_pql_is_grade_a_or_b_as_in_the_seed():
    assert "PQL Classification | A or B |" in SEED.read_text()
    assert [g for g in "ABCD" if scoring.is_pql(g)] == ["A", "B"]
    assert not scoring.is_pql(None)


def test_the_shipped_config_pql_csv_is_the_built_in_default():
    shipped = scoring.parse_pql_csv((REPO / "config" / "pql.csv").read_text(), "config/pql.csv")
    assert shipped.rules == scoring.DEFAULT_THRESHOLDS.rules


@pytest.mark.parametrize("activity, grade", [
    (Activity(), "D"),                                                   # nothing since the start
    (Activity(active_users=1), "C"),                                     # someone logged in
    (Activity(active_users=3, searches=500), "C"),                       # lots of search, no repository
    (Activity(active_users=2, searches=20, code_intel_actions=1, repositories=1), "B"),  # exactly B's minimums
    (Activity(active_users=5, searches=100, code_intel_actions=20, repositories=4), "B"),  # one repo short of A
    (Activity(active_users=5, searches=100, code_intel_actions=20, repositories=5), "A"),  # exactly A's minimums
])
def test_the_grade_is_the_first_whose_every_minimum_is_met(activity, grade):
    assert scoring.DEFAULT_THRESHOLDS.grade(activity) == grade


def test_grade_minimums_come_from_the_file_when_there_is_one(tmp_path):
    (tmp_path / "pql.csv").write_text("grade,active_users,searches,code_intel_actions,repositories\n"
                                      "A,1,1,0,0\nB,1,0,0,0\nC,0,1,0,0\nD,0,0,0,0\n")
    rules = scoring.load_pql_thresholds(tmp_path)
    assert rules.grade(Activity(active_users=1, searches=1)) == "A"
    assert rules.grade(Activity(searches=3)) == "C"
    assert scoring.load_pql_thresholds(tmp_path / "elsewhere") is scoring.DEFAULT_THRESHOLDS


@pytest.mark.parametrize("text, message", [
    ("grade,active_users,searches,code_intel_actions\nA,1,1,1\n", "pql.csv:1: header is missing column(s) repositories"),
    ("grade,active_users,searches,code_intel_actions,repositories\nA,1,1,1,1\nB,1,x,1,1\n",
     "pql.csv:3: searches must be a whole number of 0 or more, not 'x'"),
    ("grade,active_users,searches,code_intel_actions,repositories\nA,1,1,1,1\nE,0,0,0,0\n",
     "pql.csv:3: grade must be one of A, B, C, D, not 'E'"),
    ("grade,active_users,searches,code_intel_actions,repositories\nB,1,1,1,1\nA,2,2,2,2\n",
     "pql.csv:3: grades must be listed from A to D; A comes after B"),
    ("grade,active_users,searches,code_intel_actions,repositories\nA,2,2,2,2\nB,1,1,1,1\nC,1,0,0,0\nD,1,0,0,0\n",
     "pql.csv: grade D is the catch-all: its minimums must all be 0"),
    ("grade,active_users,searches,code_intel_actions,repositories\nA,2,2,2,2\nD,0,0,0,0\n",
     "pql.csv: list every grade A, B, C and D once (found A, D)"),
])
def test_a_bad_pql_csv_is_refused_with_file_and_line(text, message):
    with pytest.raises(ConfigError) as err:
        scoring.parse_pql_csv(text, "pql.csv")
    assert str(err.value) == message
