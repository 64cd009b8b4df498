"""One person's trial driven end to end over HTTP, as the people around it see it: signups,
signed Slack clicks and modals, GitHub webhooks, instance activity; the 15/30-day clock moved by
a ManualClock and swept. Effects are delivered by the real clients (slack_sdk, PyGithub, smtplib,
httpx) to the local Slack, GitHub, SMTP and Sourcegraph servers, and the tests look there."""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from tests.support.signed import block_action, post_activity, post_interaction, view_submission
from trialflow.delivery.core import Deliverer
from trialflow.delivery.email import EmailTransport
from trialflow.delivery.github import GitHubTransport
from trialflow.delivery.instance import InstanceTransport
from trialflow.delivery.slack import SlackTransport
from trialflow.delivery.sourcegraph import SourcegraphAdmin
from trialflow.services import prospect_policies
from trialflow.services.instance_sync import InstanceRecorder
from trialflow.services.sweep import sweep
from trialflow.services.timers import USAGE_ANSWER_MINUTES

SLACK = {"ivy.inbound@example.com": "U0SDR0001", "nina.named@example.com": "U0SDR0002",
         "alice.ae@example.com": "U0AE00001", "andy.ae@example.com": "U0AE00002",
         "carol.ce@example.com": "U0CE00001", "chris.ce@example.com": "U0CE00002"}


class Journey:
    """``sourcegraph``: a ``FakeSourcegraph`` whose instances trialflow administers (its settings
    must be in the runtime's); without one, trialflow holds no instance token (the manual path)."""

    def __init__(self, client, runtime, clock, slack, github, smtp, sourcegraph=None):
        self.client, self.rt, self.clock = client, runtime, clock
        self.slack, self.github, self.smtp, self.sourcegraph = slack, github, smtp, sourcegraph
        email = EmailTransport(runtime.settings)
        transports: dict[str, Any] = {"slack": SlackTransport(runtime.settings),
                                      "github": GitHubTransport(runtime.settings, seconds_between_writes=None),
                                      "email": email}
        if sourcegraph is not None:
            transports["instance"] = InstanceTransport(SourcegraphAdmin(runtime.settings), email,
                                                       InstanceRecorder(runtime), clock.now)
        self.deliverer = Deliverer(runtime, transports)
        self.start = clock.now()
        self.trial_id = ""
        self._responses = 0

    def deliver(self) -> None:
        """Deliver until nothing is due, effects that deliveries enqueued included."""
        while True:
            outcome = self.deliverer.drain_all()
            assert set(outcome) <= {"delivered"}, f"every effect is delivered at once: {outcome}"
            if not outcome:
                return

    def sign_up(self, email: str, **extra) -> dict:
        response = self.client.post("/api/signups", json={"email": email, **extra})
        assert response.status_code == 201, response.text
        self.trial_id = response.json()["trial_id"]
        self.deliver()
        return response.json()

    def trial(self, trial_id: str | None = None) -> dict:
        return self.client.get(f"/api/trials/{trial_id or self.trial_id}").json()

    @property
    def state(self) -> str:
        return self.trial()["state"]

    @property
    def host(self) -> str:
        return self.trial()["instance_url"].split("//", 1)[1]

    def press(self, action: str, person: str) -> str:
        """``person`` presses the trial's button; returns what Slack showed them (ephemeral)."""
        self._responses += 1
        before = len(self.slack.responses())
        response = post_interaction(self.client, block_action(action, self.trial_id, SLACK.get(person, person),
                                                              response_url=self.slack.response_url(self._responses)),
                                    self.clock.now())
        assert response.status_code == 200, response.text
        self.deliver()
        shown = self.slack.responses()[before:]
        return shown[-1]["text"] if shown else ""

    def submit(self, person: str, values: dict) -> None:
        view = self.slack.views[-1]
        assert json.loads(view["private_metadata"])["trial_id"] == self.trial_id
        response = post_interaction(self.client, view_submission(view, SLACK[person], values), self.clock.now())
        assert response.status_code == 200 and response.content == b"", response.text
        self.deliver()

    def request_issue(self) -> dict:
        [issue] = [i for i in self.github.issues if f"trialflow:{self.trial_id}:instance-request" in (i["body"] or "")]
        return issue

    def report(self, active_users: int, searches: int, code_intel_actions: int, repositories: int = 25) -> None:
        """The instance reports its usage itself (POST /api/instances/{host}/activity)."""
        response = post_activity(self.client, self.host, {"active_users": active_users, "searches": searches,
                                                          "code_intel_actions": code_intel_actions,
                                                          "repositories": repositories}, self.clock.now())
        assert response.status_code == 201, response.text

    def report_use(self) -> None:
        self.report(4, 30, 9)

    def report_no_use(self) -> None:
        self.report(0, 0, 0)

    def day(self, n: int) -> None:
        """Trial day ``n`` (from when this journey began): the clock moves and the sweep runs; then,
        as the sweep would a little later, once more after an instance had time to answer."""
        self.clock.set(self.start + timedelta(days=n, minutes=5))
        sweep(self.rt)
        self.deliver()
        self.clock.advance(minutes=USAGE_ANSWER_MINUTES + 1)
        sweep(self.rt)
        self.deliver()

    def channel(self, name: str) -> list[str]:
        return [m["text"] for m in self.slack.messages_in(name)]

    def emails_to(self, address: str, prospect: bool = False) -> list:
        """What ``address`` received; without the prospect's lifecycle emails (the trial started, its
        dates, tips, check-ins: tests/integration/test_prospect_emails.py) unless ``prospect``."""
        return [m for m in self.smtp.to(address)
                if prospect or m["X-Trialflow-Template"] not in prospect_policies.TEMPLATES]


def buttons_in(slack, channel: str, trial_id: str) -> list[str]:
    return [e["action_id"] for m in slack.messages_in(channel) for b in m["blocks"] if b["type"] == "actions"
            for e in b["elements"] if e["value"] == trial_id]
