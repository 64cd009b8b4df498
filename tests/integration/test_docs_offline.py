"""/docs and /redoc work offline: every asset they reference is served by trialflow itself, and a
real browser that can resolve no host but 127.0.0.1 renders the API from them.

Locally a missing Chromium skips the browser test; under CI=true it fails (Debian package: chromium).
"""
from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest

from tests.integration.test_dashboard_browser import browse, chromium  # noqa: F401 - the fixture
from tests.support.live_server import LiveServer
from trialflow.api.app import create_app

# Every place an HTML page or its inline script can name a URL.
_URLS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|(?:url|spec-url|oauth2RedirectUrl)\s*[:=]\s*["']([^"']+)["']""")


def referenced_urls(html: str) -> list[str]:
    return [a or b for a, b in _URLS.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_asset_a_docs_page_references_is_served_by_trialflow(client, page):
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    urls = referenced_urls(response.text)
    assert "/openapi.json" in urls and any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert not urlsplit(url).netloc and not urlsplit(url).scheme, f"{page} loads {url} from elsewhere"
        asset = client.get(urljoin(page, url))
        assert asset.status_code == 200, url
        assert len(asset.content) > 200, url
    assert "fonts.googleapis.com" not in response.text and "cdn." not in response.text


def test_swagger_ui_is_told_not_to_call_its_online_validator(client):
    assert '"validatorUrl": null' in client.get("/docs").text


def test_the_asset_route_serves_only_the_pages_own_files(client):
    assert client.get("/docs/static/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    for name in ("../../settings.py", "%2e%2e%2fapp.py", "LICENSE", "__init__.py"):
        assert client.get(f"/docs/static/{name}").status_code == 404, name


@pytest.mark.browser
@pytest.mark.parametrize("page, rendered", [
    ("/docs", 'class="opblock-summary-path"'),             # Swagger UI drew the operations
    ("/redoc", "Sign up for a cloud trial"),               # ReDoc drew an operation's summary
])
def test_a_browser_that_can_reach_no_other_host_renders_the_docs(chromium, runtime, tmp_path, page, rendered):  # noqa: F811
    with LiveServer(create_app(runtime)) as server:
        dom = browse(chromium, tmp_path, f"{server.url}{page}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                     "--dump-dom", "--virtual-time-budget=15000")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert rendered in dom.stdout, dom.stdout[-3000:]
    assert "/api/signups" in dom.stdout
