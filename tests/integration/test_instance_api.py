"""The instance-admin port's Sourcegraph adapter and the instance.* transport, with the real httpx
client against ``tests/support/fake_sourcegraph.py``; the fake itself checked against the fixtures."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from graphql import parse, validate

from tests.support.fake_sourcegraph import AUTOMATION, FIXTURES, SCHEMA, FakeSourcegraph
from tests.support.smtp import SmtpServer
from trialflow.delivery import sourcegraph as sg
from trialflow.delivery.core import Effect
from trialflow.delivery.dryrun import DryRunTransport
from trialflow.delivery.email import EmailTransport
from trialflow.delivery.instance import InstanceTransport
from trialflow.delivery.sourcegraph import SourcegraphAdmin
from trialflow.domain.instance_admin import AccountExists, InstanceUsage
from trialflow.errors import PermanentFailure, RetryLater
from trialflow.settings import Settings

HOST = "pool-a.sourcegraph.com"
T0 = datetime(2026, 5, 18, 12, 0, tzinfo=UTC)
FIXTURE_TOKEN = "sgp_0123456789abcdef0123456789abcdef01234567"


class NoResults:
    def result_for_ref(self, ref):
        return None


@pytest.fixture
def fake():
    with FakeSourcegraph(now=lambda: T0) as server:
        yield server


def settings_for(fake: FakeSourcegraph, **extra) -> Settings:
    return Settings(_env_file=None, **{**fake.settings(), **extra})


@pytest.fixture
def admin(fake):
    api = SourcegraphAdmin(settings_for(fake))
    yield api
    api.close()


# --- the fake answers as the fixtures say ---------------------------------------------------------

def shape(value):
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__ if not isinstance(value, (int, float)) or isinstance(value, bool) else "number"


def replay(fake: FakeSourcegraph, name: str) -> tuple[dict, httpx.Response]:
    example = json.loads((FIXTURES / name).read_text())
    request = example["request"]
    response = httpx.post(f"{fake.url}/sourcegraph.example.com/.api/graphql?{request['url'].split('?', 1)[1]}",
                          json=request["body"], headers=request["headers"])
    return example, response


def test_the_fake_answers_each_fixture_request_with_the_fixtures_answer():
    codes = iter(["Wq3xYv9KpL2mN8rT5sU7", "Hj4kLm6NpQ8rSt0UvW2x"])
    with FakeSourcegraph(token=FIXTURE_TOKEN, codes=lambda: next(codes)) as fake:
        instance = fake.instance("sourcegraph.example.com")
        instance.users[0].username = "admin"
        instance.next_id = 42
        exact = ["site.ok.json", "createUser.ok.json", "randomizeUserPassword.ok.json", "user.by_email.not_found.json",
                 "createUser.username_taken.json"]
        for name in exact:
            example, response = replay(fake, name)
            assert (response.status_code, response.json()) == (200, example["response"]["body"]), name
        for name in ("usage.ok.json", "user.by_username.ok.json", "users.active_this_month.ok.json"):
            fake.use("sourcegraph.example.com", "bob@acme-corp.com", searches=3)
            example, response = replay(fake, name)
            assert shape(response.json()) == shape(example["response"]["body"]), name
        fake.disable_reset("sourcegraph.example.com")
        example, response = replay(fake, "randomizeUserPassword.reset_disabled.json")
        assert response.json() == example["response"]["body"]
        raw = (FIXTURES / "unauthorized.401.txt").read_text().replace("\r\n", "\n")
        refused = httpx.post(f"{fake.url}/sourcegraph.example.com/.api/graphql",
                             json={"query": "{ site { productVersion } }"},
                             headers={"Authorization": "token sgp_wrong"})
        assert refused.status_code == 401 and refused.text == raw.split("\n\n", 1)[1]
        assert refused.headers["vary"] == "Authorization"


def test_every_query_trialflow_sends_is_valid_for_the_instances_schema():
    queries = [sg.SITE_HEALTH, sg.CREATE_USER, sg.RANDOMIZE_PASSWORD, sg.USER_BY_EMAIL, sg.SET_SITE_ADMIN,
               sg.INSTANCE_ACTIVITY]
    for query in queries:
        assert validate(SCHEMA, parse(query)) == [], query


# --- the adapter ----------------------------------------------------------------------------------

def test_create_user_returns_the_link_the_instance_made_and_sends_the_token_as_sourcegraph_expects(fake, admin):
    seen: list[httpx.Request] = []
    api = SourcegraphAdmin(settings_for(fake), httpx.Client(event_hooks={"request": [seen.append]}))
    made = api.create_user(HOST, "bob", "bob@acme-corp.com")
    assert made.reset_url == fake.reset_links[-1] and made.reset_url.startswith(f"https://{HOST}/password-reset?")
    assert made.user.username == "bob" and made.user.email == "bob@acme-corp.com"
    [request] = seen
    assert request.headers["authorization"] == f"token {fake.token}"
    assert str(request.url) == f"{fake.url}/{HOST}/.api/graphql?CreateUser"
    assert json.loads(request.content)["operationName"] == "CreateUser"


def test_a_taken_username_or_email_is_reported_and_the_user_is_found_by_email(fake, admin):
    fake.add_user(HOST, "bob", "bob@acme-corp.com")
    with pytest.raises(AccountExists) as taken:
        admin.create_user(HOST, "bob", "other@acme-corp.com")
    assert taken.value.what == "username"
    with pytest.raises(AccountExists) as exists:
        admin.create_user(HOST, "robert", "bob@acme-corp.com")
    assert exists.value.what == "email"
    found = admin.user_by_email(HOST, "bob@acme-corp.com")
    assert found is not None and found.username == "bob"
    assert admin.user_by_email(HOST, "carol@acme-corp.com") is None
    assert admin.randomize_password(HOST, found.id) == fake.reset_links[-1]


def test_an_instance_with_password_reset_turned_off_gives_no_link_and_no_error(fake, admin):
    fake.disable_reset(HOST)
    made = admin.create_user(HOST, "bob", "bob@acme-corp.com")
    assert made.reset_url is None
    assert admin.randomize_password(HOST, made.user.id) is None


def test_a_refused_token_is_permanent_and_says_what_to_fix_without_the_token(fake, admin):
    fake.revoke(HOST)
    with pytest.raises(PermanentFailure) as refused:
        admin.create_user(HOST, "bob", "bob@acme-corp.com")
    message = str(refused.value)
    assert "401 Invalid access token." in message and "TRIALFLOW_INSTANCE_TOKEN" in message
    assert fake.token not in message


def test_a_token_that_is_not_a_site_admins_is_permanent(fake, admin):
    fake.instance(HOST).users[0].site_admin = False
    with pytest.raises(PermanentFailure, match="not a site admin"):
        admin.create_user(HOST, "bob", "bob@acme-corp.com")


def test_a_rate_limit_is_retried_after_its_retry_after_and_an_instance_down_later(fake, admin):
    fake.rate_limit(HOST, retry_after=42)
    with pytest.raises(RetryLater) as limited:
        admin.site(HOST)
    assert limited.value.retry_after == 42
    fake.down(HOST)
    with pytest.raises(RetryLater) as down:
        admin.site(HOST)
    assert down.value.retry_after is None
    assert sg._retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and sg._retry_after("soon") == sg.DEFAULT_RETRY_AFTER


def test_an_unreachable_instance_is_retried(fake):
    api = SourcegraphAdmin(settings_for(fake, instance_api_url="http://127.0.0.1:9/{host}/.api/graphql"))
    with pytest.raises(RetryLater, match="unreachable"):
        api.site(HOST)


def test_without_a_token_for_the_host_nothing_is_called(fake):
    api = SourcegraphAdmin(Settings(_env_file=None, instance_api_url=fake.settings()["instance_api_url"]))
    with pytest.raises(PermanentFailure, match="no access token"):
        api.site(HOST)
    assert fake.calls == []


def test_usage_is_the_last_seven_days_without_the_automation_accounts_own_calls(fake, admin):
    fake.add_user(HOST, "bob", "bob@acme-corp.com")
    fake.add_user(HOST, "dana", "dana@acme-corp.com")
    fake.use(HOST, "bob@acme-corp.com", searches=7, code_intel=4, at=T0 - timedelta(days=2))
    fake.use(HOST, "dana@acme-corp.com", searches=100, at=T0 - timedelta(days=20))    # too long ago
    admin.site(HOST)                                       # the automation account is active too
    usage = admin.usage(HOST, T0 - timedelta(days=7), T0)
    assert (usage.active_users, usage.searches, usage.code_intel_actions) == (1, 7, 4)
    assert [s.email for s in usage.signed_in] == ["bob@acme-corp.com"]
    assert AUTOMATION not in [s.username for s in usage.signed_in]


def test_make_site_admin(fake, admin):
    made = admin.create_user(HOST, "bob", "bob@acme-corp.com")
    admin.make_site_admin(HOST, made.user.id)
    assert fake.user(HOST, "bob@acme-corp.com").site_admin


def test_a_tokens_file_gives_each_host_its_own_token_and_fails_fast_when_malformed(fake, tmp_path: Path):
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"host,token\nvanity.sourcegraph.com,sgp_vanityToken0123456789abcdef\n{HOST},{fake.token}\n")
    settings = Settings(_env_file=None, instance_api_url=fake.settings()["instance_api_url"],
                        instance_tokens_file=tokens)
    assert settings.instance_token_for(HOST).get_secret_value() == fake.token
    assert settings.instance_token_for("other.sourcegraph.com") is None
    assert SourcegraphAdmin(settings).site(HOST).site_admin
    assert "sgp_vanity" not in repr(settings)
    tokens.write_text("vanity.sourcegraph.com\n")
    with pytest.raises(ValueError, match=r"tokens.csv:1: expected host,token"):
        Settings(_env_file=None, instance_tokens_file=tokens)
    with pytest.raises(ValueError, match="must contain"):
        Settings(_env_file=None, instance_api_url="https://sourcegraph.example.com/.api/graphql")


# --- the instance.account transport ---------------------------------------------------------------

class Facts:
    def __init__(self):
        self.accounts: list[tuple] = []
        self.usages: list[tuple[str, InstanceUsage]] = []

    def account_ready(self, trial_id, key, purpose, host, email, username, link_sent):
        self.accounts.append((purpose, host, email, username, link_sent))

    def usage(self, host, usage):
        self.usages.append((host, usage))


def account_effect(attempt: int = 1, **mail) -> Effect:
    payload = {"host": HOST, "email": "bob@acme-corp.com", "purpose": "claim", "admin": True,
               "mail": {"template": "password_reset", "to": "bob@acme-corp.com", "cc": [], "from": None,
                        "context": {"instance_url": f"https://{HOST}", "name": "Bob", **mail}}}
    return Effect(7, "tr_0123456789abcdef:1:claim_pool_instance:account:bob@acme-corp.com", "instance.account",
                  payload, "tr_0123456789abcdef", attempt, NoResults())


def test_an_account_is_made_and_its_link_emailed_in_one_step_and_nothing_keeps_the_link(fake, admin):
    facts = Facts()
    with SmtpServer() as smtp:
        mailer = EmailTransport(Settings(_env_file=None, **smtp.settings()))
        transport = InstanceTransport(admin, mailer, facts, lambda: T0)
        effect = account_effect()
        result = transport.deliver(effect)
        [message] = smtp.messages
    link = fake.reset_links[-1]
    assert link in message.get_content()
    assert link not in json.dumps(result) and link not in json.dumps(effect.payload)
    assert result["account"] == "created" and result["link"] == "emailed"
    assert facts.accounts == [("claim", HOST, "bob@acme-corp.com", "bob", True)]
    assert fake.user(HOST, "bob@acme-corp.com").site_admin


def test_a_retry_after_a_worker_died_finds_the_account_and_sends_a_fresh_link_as_a_new_message(fake, admin):
    facts = Facts()
    with SmtpServer() as smtp:
        mailer = EmailTransport(Settings(_env_file=None, **smtp.settings()))
        transport = InstanceTransport(admin, mailer, facts, lambda: T0)
        transport.deliver(account_effect())
        again = transport.deliver(account_effect(attempt=2))
        first, second = smtp.messages
    assert again["account"] == "existing" and len(fake.users(HOST)) == 1
    assert fake.reset_links[-1] in second.get_content() and fake.reset_links[-2] in first.get_content()
    assert first["Message-ID"] != second["Message-ID"], "the newest link must not look like a duplicate"


def test_a_mail_that_cannot_be_rendered_fails_without_quoting_the_link(fake, admin):
    transport = InstanceTransport(admin, EmailTransport(Settings(_env_file=None, smtp_url="smtp://127.0.0.1:9")),
                                  Facts(), lambda: T0)
    effect = account_effect()
    effect.payload["mail"]["template"] = "no_such_template"
    with pytest.raises(PermanentFailure) as failed:
        transport.deliver(effect)
    assert "password-reset" not in str(failed.value)


def test_a_usage_poll_records_what_the_instance_answered(fake, admin):
    facts = Facts()
    fake.add_user(HOST, "bob", "bob@acme-corp.com")
    fake.use(HOST, "bob@acme-corp.com", searches=2, at=T0 - timedelta(hours=3))
    transport = InstanceTransport(admin, DryRunTransport("email"), facts, lambda: T0)
    result = transport.deliver(Effect(8, "usage:x", "instance.usage", {"host": HOST}, None, 1, NoResults()))
    [(host, usage)] = facts.usages
    assert host == HOST and usage.searches == 2 and usage.active_users == 1
    assert result["searches"] == 2 and "bob@acme-corp.com" not in json.dumps(result)
