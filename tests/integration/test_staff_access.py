"""Only staff see staff data: every staff surface over real HTTP, with no credentials, a wrong
token, a good token, a signed-in staff member and a signed-in stranger (OpenID Connect against a
real provider started locally); the session cookie's flags; the embedded default's loopback rule;
/metrics' own token; the audit trail."""
from __future__ import annotations

import logging
import time

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner

from tests.conftest import LOOPBACK_CLIENT, make_settings
from tests.support.staff_site import (
    API_TOKEN,
    CLIENT_SECRET,
    FORMER_STAFF,
    SESSION_SECRET,
    STAFF,
    STRANGER,
    WRONG_TOKEN,
    StaffSite,
)
from trialflow.api import auth
from trialflow.api.app import create_app
from trialflow.api.signin import identity_from_claims
from trialflow.db import tables
from trialflow.runtime import Runtime
from trialflow.services.reference import load_reference_data

SURFACES = ["/dashboard", "/api/funnel", "/api/funnel.csv", "/api/trials", "/api/trials/{trial_id}", "/docs", "/redoc", "/openapi.json"]
# Routes that keep their own check (or need none), as the issue lists them.
OPEN = {"/healthz", "/api/signups", "/slack/interactions", "/slack/commands", "/slack/events", "/github/webhooks",
        "/api/instances/{host}/activity", "/api/events", "/dashboard/static/{name}", "/metrics",
        "/auth/login", "/auth/callback", "/auth/logout", "/docs/oauth2-redirect"}


@pytest.fixture
def site(sqlite_template, tmp_path, config_dir):
    import shutil
    shutil.copy(sqlite_template, tmp_path / "staff.db")
    with StaffSite(f"sqlite:///{tmp_path / 'staff.db'}", config_dir) as s:
        yield s


@pytest.fixture
def site_with_instances(sqlite_template, tmp_path, config_dir, fake_sourcegraph):
    """The site, with the trial instances' API (the fake Sourcegraph) that makes the reset links."""
    import shutil
    shutil.copy(sqlite_template, tmp_path / "staff.db")
    with StaffSite(f"sqlite:///{tmp_path / 'staff.db'}", config_dir, **fake_sourcegraph.settings()) as s:
        yield s


def a_trial(site) -> str:
    answer = site.client().post("/api/signups", json={"email": "bob@acme-corp.com", "name": "Bob"})
    assert answer.status_code == 201, answer.text
    return answer.json()["trial_id"]


def test_each_staff_surface_answers_401_401_200_200_403(site, caplog):
    caplog.set_level(logging.INFO, logger="trialflow.audit")
    trial_id = a_trial(site)
    anonymous = site.client()
    wrong = site.client(authorization=f"Bearer {WRONG_TOKEN}")
    good = site.client(authorization=f"Bearer {API_TOKEN}")
    staff = site.signed_in(STAFF)
    stranger = site.signed_in(STRANGER)
    for surface in SURFACES:
        path = surface.format(trial_id=trial_id)
        statuses = [c.get(path).status_code for c in (anonymous, wrong, good, staff, stranger)]
        assert statuses == [401, 401, 200, 200, 403], path
    detail = staff.get(f"/api/trials/{trial_id}").json()
    assert detail["email"] == "bob@acme-corp.com"
    refused = anonymous.get("/api/trials")
    assert "Bearer" in refused.json()["error"] and refused.headers["www-authenticate"].startswith("Bearer")
    assert "not active staff" in stranger.get("/api/trials").json()["error"]
    # The audit trail: who read which trial, from where; who was refused and why.
    lines = [r.getMessage() for r in caplog.records if r.name == "trialflow.audit"]
    assert f"staff GET read trial {trial_id}: by {STAFF} (sign-in) from 127.0.0.1" in lines
    assert f"staff GET read trial {trial_id}: by ci-reader (token) from 127.0.0.1" in lines
    assert f"refused GET /api/trials/{trial_id}: wrong token; by anonymous from 127.0.0.1" in lines
    assert f"refused GET /api/trials/{trial_id}: signed in, but not active staff; by {STRANGER} from 127.0.0.1" in lines
    assert f"signed in: {STAFF} from 127.0.0.1" in lines
    text = "\n".join(lines) + caplog.text
    for secret in (API_TOKEN, WRONG_TOKEN, SESSION_SECRET, CLIENT_SECRET, "code=", "state="):
        assert secret not in text


def test_a_browser_without_a_session_is_sent_to_sign_in_and_comes_back_where_it_was(site):
    browser = site.client(accept="text/html,application/xhtml+xml")
    answer = browser.get("/api/trials?state=triage", follow_redirects=False)
    assert answer.status_code == 302
    assert answer.headers["location"] == "/auth/login?next=%2Fapi%2Ftrials%3Fstate%3Dtriage"
    site.provider.sign_in_as(STAFF)
    landed = browser.get("/api/trials?state=triage", follow_redirects=True)
    assert landed.status_code == 200 and landed.url.path == "/api/trials" and landed.url.query == b"state=triage"


def test_a_stranger_is_shown_a_page_saying_they_are_not_staff(site):
    stranger = site.signed_in(STRANGER)
    page = stranger.get("/dashboard", headers={"accept": "text/html"})
    assert page.status_code == 403
    assert f"You are signed in as {STRANGER}, who is not active staff" in page.text
    assert 'href="/auth/logout"' in page.text


def test_staff_made_inactive_or_listed_as_inactive_are_refused(site):
    staff = site.signed_in(STAFF)
    assert staff.get("/api/trials").status_code == 200
    assert site.signed_in(FORMER_STAFF).get("/api/trials").status_code == 403
    with site.runtime.engine.begin() as conn:
        conn.execute(tables.staff.update().where(tables.staff.c.email == STAFF).values(active=False))
    assert staff.get("/api/trials").status_code == 403      # at once, not at the session's end


def test_an_unverified_email_is_not_taken_for_a_staff_member(site):
    assert site.signed_in(STAFF, email_verified=False).get("/api/trials").status_code == 403


def test_the_session_cookie_is_signed_httponly_lax_and_expires(site):
    site.signed_in(STAFF)
    cookie = site.last_sign_in.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert cookie.startswith(f"{auth.SESSION_COOKIE}=")
    assert {"httponly", "max-age", "path"} <= attributes and "samesite=lax" in cookie.lower()
    assert "secure" not in attributes            # http://127.0.0.1: a Secure cookie would never come back
    assert f"max-age={site.settings.session_max_age_seconds}" in cookie.lower()
    value = cookie.split(";")[0].split("=", 1)[1]
    forged = site.client(cookie=f"{auth.SESSION_COOKIE}={value[:-4]}AAAA")
    assert forged.get("/api/trials").status_code == 401


def session_cookie(identity: dict) -> str:
    """A cookie as trialflow's session middleware signs it, with the secret it was given."""
    import base64
    import json
    data = base64.b64encode(json.dumps({"signed_in": identity}).encode())
    return TimestampSigner(SESSION_SECRET).sign(data).decode()


def test_a_sign_in_ends_after_its_maximum_age_even_while_it_is_used(site):
    now = time.time()
    fresh = {"sub": "x", "email": STAFF, "slack_user_id": None, "name": "Carol", "at": now - 60}
    stale = {**fresh, "at": now - site.settings.session_max_age_seconds - 1}
    assert site.client(cookie=f"{auth.SESSION_COOKIE}={session_cookie(fresh)}").get("/api/trials").status_code == 200
    assert site.client(cookie=f"{auth.SESSION_COOKIE}={session_cookie(stale)}").get("/api/trials").status_code == 401


def test_behind_https_the_session_cookie_is_secure(sqlite_template, tmp_path, config_dir):
    import shutil
    shutil.copy(sqlite_template, tmp_path / "https.db")
    with StaffSite(f"sqlite:///{tmp_path / 'https.db'}", config_dir) as site:
        settings = make_settings(site.db_url, config_dir, **site.provider.settings("https://trials.example.com",
                                                                                    SESSION_SECRET))
        with TestClient(create_app(Runtime(settings)), client=LOOPBACK_CLIENT) as c:
            started = c.get("/auth/login", follow_redirects=False)
    assert started.status_code == 302
    assert "redirect_uri=https%3A%2F%2Ftrials.example.com%2Fauth%2Fcallback" in started.headers["location"]
    assert "; secure" in started.headers["set-cookie"].lower()


def test_slack_sign_in_matches_staff_by_slack_user_id(config_dir, tmp_path):
    settings = make_settings(f"sqlite:///{tmp_path}/x.db", config_dir, oidc_issuer="https://slack.com",
                             oidc_client_id="1.2", oidc_client_secret=CLIENT_SECRET, public_url="https://t.example",
                             session_secret=SESSION_SECRET)
    claims = {"sub": "U0CE00001", "email": "carol@personal.example", "email_verified": True,
              "https://slack.com/user_id": "U0CE00001"}
    identity = identity_from_claims(settings, claims, 0.0)
    assert identity["slack_user_id"] == "U0CE00001"
    elsewhere = make_settings(f"sqlite:///{tmp_path}/x.db", config_dir)
    assert identity_from_claims(elsewhere, claims, 0.0)["slack_user_id"] is None  # only Slack's issuer says so


def test_the_slack_user_id_finds_the_staff_row(runtime):
    person = auth.find_staff(runtime, {"slack_user_id": "U0CE00001", "email": "carol@personal.example"})
    assert person is not None and person.email == STAFF
    assert auth.find_staff(runtime, {"slack_user_id": "U0AE00009", "email": None}) is None   # inactive


# --- the embedded default: this machine only -------------------------------------------------------

def local_app(runtime, peer: str, **headers: str):
    return TestClient(create_app(runtime), client=(peer, 40000), headers=headers)


@pytest.mark.parametrize("surface", ["/api/trials", "/dashboard", "/api/funnel", "/api/funnel.csv", "/openapi.json",
                                     "/docs"])
def test_with_no_authentication_configured_staff_surfaces_answer_this_machine_only(runtime, surface):
    with local_app(runtime, "127.0.0.1") as here, local_app(runtime, "203.0.113.9") as away:
        assert here.get(surface).status_code == 200
        refused = away.get(surface)
    assert refused.status_code == 403 and "TRIALFLOW_API_TOKENS" in refused.json()["error"]


def test_a_local_proxy_does_not_make_every_visitor_local(runtime):
    with local_app(runtime, "127.0.0.1", **{"x-forwarded-for": "198.51.100.7"}) as relayed:
        assert relayed.get("/api/trials").status_code == 403


def test_signups_health_and_the_other_endpoints_stay_open_as_before(runtime):
    with local_app(runtime, "203.0.113.9") as away:
        assert away.get("/healthz").status_code == 200
        assert away.post("/api/signups", json={"email": "lee@tiny-startup.io"}).status_code == 201
        assert away.get("/dashboard/static/dashboard.css").status_code == 200


def route_paths(routes, prefix: str = ""):
    for route in routes:
        if hasattr(route, "path"):
            yield prefix + route.path
        elif hasattr(route, "original_router"):   # an included router, kept whole by newer FastAPI
            yield from route_paths(route.original_router.routes,
                                   prefix + (getattr(route.include_context, "prefix", "") or ""))


def test_every_route_is_a_staff_surface_or_named_as_open(runtime):
    paths = set(route_paths(create_app(runtime).routes))
    unclassified = {p for p in paths if not auth.is_staff_surface(p) and p not in OPEN}
    assert unclassified == set()
    assert {p for p in paths if auth.is_staff_surface(p)} >= {"/api/trials", "/api/trials/{trial_id}", "/dashboard",
                                                              "/api/funnel", "/api/funnel.csv", "/docs", "/redoc",
                                                              "/openapi.json"}


# --- /metrics ---------------------------------------------------------------------------------

METRICS_TOKEN = "metrics-token-Rt6Yu8Io0Pa2Sd4Fg6Hj8Kl0"


def test_metrics_take_their_own_bearer_token(db_url, config_dir, clock):
    settings = make_settings(db_url, config_dir, metrics_token=METRICS_TOKEN, api_tokens=f"ci:{API_TOKEN}")
    rt = Runtime(settings, clock=clock)
    load_reference_data(rt.session_factory, config_dir, clock.now())
    try:
        with local_app(rt, "203.0.113.9") as prometheus:
            assert prometheus.get("/metrics").status_code == 401
            assert prometheus.get("/metrics", headers={"authorization": f"Bearer {API_TOKEN}"}).status_code == 401
            scraped = prometheus.get("/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
    finally:
        rt.close()
    assert scraped.status_code == 200 and "trialflow_trials" in scraped.text


def test_without_a_metrics_token_metrics_answer_this_machine_only(runtime):
    with local_app(runtime, "127.0.0.1") as here, local_app(runtime, "203.0.113.9") as away:
        assert here.get("/metrics").status_code == 200
        assert away.get("/metrics").status_code == 403


# --- trialflow serve -------------------------------------------------------------------------------

def serve(tmp_path, *args: str, **settings: str):
    import subprocess
    import sys

    from tests.support.processes import ROOT, trialflow_env
    return subprocess.run([sys.executable, "-m", "trialflow.cli", "serve", *args], cwd=ROOT, capture_output=True, check=False,
                          text=True, timeout=60,
                          env=trialflow_env(database_url=f"sqlite:///{tmp_path}/serve.db", **settings))


def test_serve_on_a_public_address_without_authentication_refuses_to_start_and_names_the_settings(tmp_path):
    refused = serve(tmp_path, "--host", "0.0.0.0", "--port", "1")
    assert refused.returncode == 2
    for setting in ("TRIALFLOW_OIDC_ISSUER", "TRIALFLOW_OIDC_CLIENT_ID", "TRIALFLOW_OIDC_CLIENT_SECRET",
                    "TRIALFLOW_PUBLIC_URL", "TRIALFLOW_SESSION_SECRET", "TRIALFLOW_API_TOKENS"):
        assert setting in refused.stderr
    assert not (tmp_path / "serve.db").exists()       # refused before touching anything


def test_a_short_api_token_stops_trialflow_at_start_without_printing_it(tmp_path):
    refused = serve(tmp_path, "--host", "0.0.0.0", api_tokens="ci:too-short-a-token")
    assert refused.returncode == 2
    assert "TRIALFLOW_API_TOKENS: the token of 'ci' must be at least 32 characters" in refused.stderr
    assert "too-short-a-token" not in refused.stderr


def test_the_logs_say_who_and_from_where_and_never_a_token_a_secret_or_a_reset_link(site_with_instances,
                                                                                     fake_sourcegraph):
    site = site_with_instances
    import io

    from trialflow.delivery.wiring import build_deliverer
    from trialflow.logs import make_handler, register_secrets

    stream = io.StringIO()
    handler = make_handler(False, stream)
    root = logging.getLogger()
    level = root.level
    register_secrets(site.settings)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        trial_id = a_trial(site)                                   # acme-corp: a pool instance and a reset link
        build_deliverer(site.runtime).drain_all()                  # dry-run (but the instance's API): every effect is logged
        [reset_link] = fake_sourcegraph.reset_links                # the link the instance made for Bob
        staff = site.signed_in(STAFF)
        staff.get(f"/api/trials/{trial_id}")
        site.client(authorization=f"Bearer {API_TOKEN}").get(f"/api/trials/{trial_id}")
        site.client(authorization=f"Bearer {WRONG_TOKEN}").get(f"/api/trials/{trial_id}")
        site.signed_in(STRANGER).get(f"/api/trials/{trial_id}")
        cookie = staff.cookies.get(auth.SESSION_COOKIE)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    logged = stream.getvalue()
    assert f"read trial {trial_id}: by {STAFF} (sign-in) from 127.0.0.1" in logged
    assert f"read trial {trial_id}: by ci-reader (token) from 127.0.0.1" in logged
    assert f"refused GET /api/trials/{trial_id}: wrong token; by anonymous from 127.0.0.1" in logged
    assert f"not active staff; by {STRANGER} from 127.0.0.1" in logged
    for secret in (API_TOKEN, WRONG_TOKEN, SESSION_SECRET, CLIENT_SECRET, cookie, reset_link,
                   reset_link.split("code=")[1], fake_sourcegraph.token):
        assert secret and secret not in logged
