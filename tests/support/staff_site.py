"""trialflow served for real with staff sign-in against the local OpenID Connect provider
(``tests.support.oidc_provider``) and machine tokens, for the access tests and the browser test.

    with StaffSite(db_url, config_dir) as site:
        carol = site.signed_in("carol.ce@example.com")      # an httpx client holding her session
        carol.get("/api/trials")
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import make_settings
from tests.support.live_server import LiveServer
from tests.support.oidc_provider import OidcProvider
from tests.support.processes import free_port
from trialflow.api.app import create_app
from trialflow.clock import ManualClock
from trialflow.runtime import Runtime
from trialflow.services.reference import load_reference_data

# Made up for these tests, each as long as trialflow asks (32+ characters).
API_TOKEN = "tf-reader-7Yq2mN4pL8sR1vX6zB3cD9fG5hJ0kW2e"
WRONG_TOKEN = "tf-reader-0000000000000000000000000000000000"
SESSION_SECRET = "session-secret-Hq8Zt3Lw9Pk2Vn6Rb4Yc7Xm1"
CLIENT_SECRET = "oidc-client-secret-Fz5Gw8Kq2Nd6Ts9Lb3Vh"
STAFF = "carol.ce@example.com"          # active in tests/support/config.py's staff.csv
FORMER_STAFF = "old.ae@example.com"     # listed, but not active
STRANGER = "mallory@stranger.example"


class StaffSite:
    def __init__(self, db_url: str, config_dir: Path, provider_host: str = "127.0.0.1", **overrides: Any):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.provider = OidcProvider("trialflow", CLIENT_SECRET, f"{self.url}/auth/callback", host=provider_host)
        self.db_url, self.config_dir, self.overrides = db_url, config_dir, overrides
        self.clients: list[httpx.Client] = []

    def __enter__(self) -> StaffSite:
        self.provider.__enter__()
        values = {**self.provider.settings(self.url, SESSION_SECRET), "api_tokens": f"ci-reader:{API_TOKEN}",
                  **self.overrides}
        self.settings = make_settings(self.db_url, self.config_dir, **values)
        self.runtime = Runtime(self.settings, clock=ManualClock())
        load_reference_data(self.runtime.session_factory, self.config_dir, self.runtime.clock.now())
        self.server = LiveServer(create_app(self.runtime), port=self.port).__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for client in self.clients:
            client.close()
        self.server.__exit__(*exc)
        self.runtime.close()
        self.provider.__exit__(*exc)

    def client(self, **headers: str) -> httpx.Client:
        client = httpx.Client(base_url=self.url, headers=headers, timeout=15)
        self.clients.append(client)
        return client

    def signed_in(self, email: str, **identity: Any) -> httpx.Client:
        """A client that went through the whole sign-in as ``email``: trialflow → provider → back."""
        self.provider.sign_in_as(email, **identity)
        client = self.client()
        answer = client.get("/auth/login", params={"next": "/dashboard"}, follow_redirects=False)
        assert answer.status_code == 302, answer.text
        at_provider = httpx.get(answer.headers["location"], follow_redirects=False, timeout=15)
        assert at_provider.status_code == 302, at_provider.text
        back = client.get(at_provider.headers["location"], follow_redirects=False)
        assert back.status_code == 303, back.text
        self.last_sign_in = back
        return client
