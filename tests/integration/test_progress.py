"""Long work reports its progress: the sweep after each batch of timers, migrations after each
one; off a terminal as a few plain lines (each quarter and the end), never a line per batch."""
from __future__ import annotations

from tests.integration.test_sweep import signup
from trialflow.db.migrate import upgrade
from trialflow.progress import progress_on_stderr
from trialflow.services.sweep import sweep


def test_the_sweep_reports_each_batch_of_timers_against_those_due(runtime, clock):
    for i in range(5):
        signup(runtime, f"user{i}@acme-corp.com")
    clock.advance(days=15, minutes=1)
    heard: list[tuple[str, int, int]] = []
    report = sweep(runtime, batch=2, progress=lambda *args: heard.append(args))
    fired = report.timers_fired
    assert fired >= 5
    assert heard[-1] == ("sweep: timers", fired, fired)  # the total: the timers due when it began
    assert [done for _, done, _ in heard] == sorted(done for _, done, _ in heard)
    assert len(heard) >= fired // 2  # a report after each batch of two


def test_migrations_report_each_one_applied(tmp_path):
    heard: list[tuple[str, int, int]] = []
    upgrade(f"sqlite:///{tmp_path / 'new.db'}", progress=lambda *args: heard.append(args))
    total = heard[-1][2]
    assert heard == [("migrations", n, total) for n in range(1, total + 1)] and total >= 6
    heard.clear()
    upgrade(f"sqlite:///{tmp_path / 'new.db'}", progress=lambda *args: heard.append(args))
    assert heard == []  # nothing to apply, nothing said


def test_off_a_terminal_progress_is_a_line_a_quarter(capsys):
    with progress_on_stderr() as progress:
        for done in range(0, 101, 5):
            progress("accounts.csv: written", done, 100)
    assert capsys.readouterr().err.splitlines() == [
        "accounts.csv: written: 25/100", "accounts.csv: written: 50/100", "accounts.csv: written: 75/100",
        "accounts.csv: written: 100/100"]
