"""The servers a journey's people meet: Slack (with interactivity), the cloud team's GitHub
repository, an SMTP server, and the trial instances' GraphQL API."""
from __future__ import annotations

import pytest

from tests.support.fake_sourcegraph import FakeSourcegraph
from tests.support.signed import interactive_fake_slack
from tests.support.smtp import SmtpServer


@pytest.fixture
def slack():
    with interactive_fake_slack() as fake:
        yield fake



@pytest.fixture
def smtp():
    with SmtpServer() as server:
        yield server


@pytest.fixture
def sourcegraph(clock):
    """Every trial instance's API, on the journey's clock."""
    with FakeSourcegraph(now=clock.now) as fake:
        yield fake
