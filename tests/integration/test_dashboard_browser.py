"""/dashboard in a real browser: headless Chromium loads the page from a real server, the test reads
the numbers it rendered and keeps a screenshot under test-artifacts/.

Locally a missing Chromium skips; under CI=true it fails (Debian package: chromium).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_funnel_report import ROW_FIELDS, read_dashboard
from tests.support.funnel_story import EXPECTED_MEDIANS, EXPECTED_ROWS, play
from tests.support.live_server import LiveServer
from tests.support.services import unavailable
from trialflow.api.app import create_app

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# No network beyond the page under test, no first-run or update traffic, nothing left behind.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    unavailable("Chromium (apt-get install chromium)", "no chromium on PATH")


def browse(chromium: str, tmp_path: Path, url: str, *action: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *action, url],
                          capture_output=True, text=True, timeout=90, cwd=tmp_path)


def test_the_dashboard_shows_the_funnel_numbers_in_a_real_browser(chromium, client, runtime, tmp_path, request):
    play(client, runtime)
    with LiveServer(create_app(runtime)) as server:
        url = f"{server.url}/dashboard?weeks=2"
        dom = browse(chromium, tmp_path, url, "--dump-dom", "--virtual-time-budget=5000")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"dashboard-{request.node.callspec.id}.png"
        shot.unlink(missing_ok=True)
        shown = browse(chromium, tmp_path, url, f"--screenshot={shot}", "--window-size=1280,1500")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = read_dashboard(dom.stdout)
    for week, expected in EXPECTED_ROWS.items():
        assert [page.cells[(week, f)] for f in ROW_FIELDS] == expected, week
    assert {k: page.cells[("2026-W02", k)] for k in EXPECTED_MEDIANS} == EXPECTED_MEDIANS
    assert page.kpis == {"requests": "4", "joiners": "1", "starts": "3", "start_rate": "75.0%",
                         "activation_rate": "33.3%", "conversion_rate": "33.3%"}
    # The charts were drawn from the same numbers: W02 has 3 requests and 2 starts.
    assert 'data-week="2026-W02" data-series="requests" data-value="3"' in dom.stdout
    assert 'data-week="2026-W02" data-series="starts" data-value="2"' in dom.stdout
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank canvas
