"""The funnel read from the database: `trialflow report`, /api/funnel and /dashboard agree."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from html.parser import HTMLParser

from tests.support.funnel_story import EXPECTED_MEDIANS, EXPECTED_ROWS, play
from trialflow.funnel import cli_report

H = 3600.0


def report(runtime, capsys, *argv_json: bool, weeks: int = 2) -> str:
    code = cli_report(runtime, argparse.Namespace(json=bool(argv_json), weeks=weeks, by=None, csv=False))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_the_report_counts_each_weekly_cohort_from_the_trials_history(client, runtime, capsys):
    play(client, runtime)
    data = json.loads(report(runtime, capsys, True))
    w02, w03 = data["cohorts"]
    assert (w02["week"], w02["requests"], w02["starts"], w02["start_rate"], w02["activated"], w02["activation_rate"],
            w02["converted"], w02["conversion_rate"]) == ("2026-W02", 3, 2, 0.6667, 1, 0.5, 1, 0.5)
    # carl requested and started; pam joined initech's instance: a joiner, not a request
    assert (w03["week"], w03["requests"], w03["joiners"], w03["starts"], w03["start_rate"], w03["activated"],
            w03["converted"]) == ("2026-W03", 1, 1, 1, 1.0, 0, 0)
    assert w02["median_seconds"] == {"signup_to_start": 32 * H, "triage_to_qualified": 2 * H,
                                     "requested_to_ready": 24 * H, "ready_to_handed_off": 6 * H}
    assert set(w03["median_seconds"].values()) == {None}
    total = data["total"]
    assert (total["requests"], total["joiners"], total["starts"], total["start_rate"], total["activation_rate"],
            total["conversion_rate"]) == (4, 1, 3, 0.75, 0.3333, 0.3333)


def test_the_text_report_prints_the_same_numbers(client, runtime, capsys):
    play(client, runtime)
    lines = report(runtime, capsys).splitlines()
    for week, expected in EXPECTED_ROWS.items():
        row = next(line.split() for line in lines if line.split()[:1] == [week] and "(n=" not in line)
        numbers = row[2:] if week != "all" else row[1:]
        assert numbers == expected, week
    steps = next(line for line in lines if line.startswith("2026-W02") and "(n=" in line)
    cells = [s.strip() for s in steps.removeprefix("2026-W02").split("(n=1)")]
    assert cells == [EXPECTED_MEDIANS["signup_to_start"], EXPECTED_MEDIANS["triage_to_qualified"],
                     EXPECTED_MEDIANS["requested_to_ready"], EXPECTED_MEDIANS["ready_to_handed_off"], ""]


def test_api_funnel_is_what_report_json_prints(client, runtime, capsys):
    play(client, runtime)
    assert client.get("/api/funnel", params={"weeks": 2}).json() == json.loads(report(runtime, capsys, True))


class Cells(HTMLParser):
    """{(row week, field): text} from the dashboard's cohort table, and the KPI values."""

    def __init__(self):
        super().__init__()
        self.cells: dict[tuple[str, str], str] = {}
        self.kpis: dict[str, str] = {}
        self._week = self._field = self._kpi = None
        self._in_value = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-week" in a:
            self._week = a["data-week"]
        elif tag == "td" and "data-field" in a:
            self._field = a["data-field"]
        elif tag == "div" and a.get("class") == "kpi":
            self._kpi = a["data-metric"]
        elif tag == "div" and a.get("class") == "value" and self._kpi:
            self._in_value = True

    def handle_endtag(self, tag):
        if tag == "td":
            self._field = None
        if tag == "div" and self._in_value:
            self._in_value, self._kpi = False, None

    def handle_data(self, data):
        if self._field and self._week:
            self.cells[(self._week, self._field)] = self.cells.get((self._week, self._field), "") + data
        if self._in_value:
            self.kpis[self._kpi] = data


ROW_FIELDS = ("requests", "joiners", "starts", "start_rate", "activated", "activation_rate", "converted", "conversion_rate")


def read_dashboard(html: str) -> Cells:
    parser = Cells()
    parser.feed(html)
    return parser


def test_the_dashboard_page_shows_the_funnel_with_its_own_assets_only(client, runtime):
    play(client, runtime)
    r = client.get("/dashboard", params={"weeks": 2})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = read_dashboard(r.text)
    for week, expected in EXPECTED_ROWS.items():
        assert [page.cells[(week, f)] for f in ROW_FIELDS] == expected, week
    assert {k: page.cells[("2026-W02", k)] for k in EXPECTED_MEDIANS} == EXPECTED_MEDIANS
    assert page.kpis == {"requests": "4", "joiners": "1", "starts": "3", "start_rate": "75.0%",
                         "activation_rate": "33.3%", "conversion_rate": "33.3%"}
    assert "http://" not in r.text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in r.text
    css = client.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_only_the_dashboards_own_assets_are_served(client):
    assert client.get("/dashboard/static/..%2Fscoring.py").status_code == 404
    assert client.get("/dashboard/static/scoring.py").status_code == 404
    assert client.get("/dashboard/static/missing.css").status_code == 404


def test_weeks_out_of_range_are_refused(client):
    assert client.get("/dashboard", params={"weeks": 0}).status_code == 422
    assert client.get("/api/funnel", params={"weeks": 500}).status_code == 422


def test_trialflow_report_runs_from_the_command_line(db_url, tmp_path):
    from trialflow.db.migrate import upgrade
    upgrade(db_url)
    env = {**os.environ, "TRIALFLOW_DATABASE_URL": db_url, "TRIALFLOW_CONFIG_DIR": str(tmp_path)}
    env.pop("TRIALFLOW_BROKER_URL", None)
    done = subprocess.run([sys.executable, "-m", "trialflow.cli", "report", "--weeks", "3"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Trial funnel by signup week (UTC), 3 weeks to ")
    as_json = subprocess.run([sys.executable, "-m", "trialflow.cli", "report", "--json", "--weeks", "3"], env=env,
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["weeks"] == 3


def test_trialflow_report_on_an_empty_database_says_to_migrate(tmp_path):
    env = {**os.environ, "TRIALFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/fresh.db"}
    done = subprocess.run([sys.executable, "-m", "trialflow.cli", "report"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "Run `trialflow migrate`" in done.stderr
