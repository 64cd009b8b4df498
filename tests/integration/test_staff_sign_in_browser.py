"""Staff sign-in end to end in a real browser: headless Chromium opens /dashboard on trialflow,
is sent to sign in, follows the OpenID Connect dance through the local provider (a different
site: localhost, not 127.0.0.1, so the SameSite=Lax session must survive the way back) and lands
on the dashboard; a person who is not staff lands on the page that says so.

Locally a missing Chromium skips; under CI=true it fails (Debian package: chromium).
"""
from __future__ import annotations

import shutil

import pytest

from tests.integration.test_dashboard_browser import browse, chromium  # noqa: F401  (the fixture)
from tests.support.staff_site import STAFF, STRANGER, StaffSite

pytestmark = pytest.mark.browser


@pytest.fixture
def site(sqlite_template, tmp_path, config_dir):
    shutil.copy(sqlite_template, tmp_path / "browser.db")
    with StaffSite(f"sqlite:///{tmp_path / 'browser.db'}", config_dir, provider_host="localhost") as s:
        yield s


def test_staff_sign_in_with_openid_connect_in_a_real_browser(chromium, site, tmp_path):  # noqa: F811
    for person in ("carol", "mallory"):   # a browser profile each: no cookie of one reaches the other
        (tmp_path / person).mkdir()
    site.provider.sign_in_as(STAFF, name="Carol CE")
    staff = browse(chromium, tmp_path / "carol", f"{site.url}/dashboard", "--dump-dom", "--virtual-time-budget=5000")
    assert staff.returncode == 0, staff.stderr[-2000:]
    assert "Cloud trial funnel" in staff.stdout and 'id="cohorts"' in staff.stdout
    assert site.provider.tokens_issued == 1          # the browser went through the provider, once

    site.provider.sign_in_as(STRANGER)
    stranger = browse(chromium, tmp_path / "mallory", f"{site.url}/api/trials", "--dump-dom",
                      "--virtual-time-budget=5000")
    assert stranger.returncode == 0, stranger.stderr[-2000:]
    assert f"You are signed in as {STRANGER}, who is not active staff" in stranger.stdout
    assert "bob@acme-corp.com" not in stranger.stdout and "Cloud trial funnel" not in stranger.stdout
    assert site.provider.tokens_issued == 2
