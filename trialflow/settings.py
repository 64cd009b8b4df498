"""All configuration, from ``TRIALFLOW_*`` environment variables or a ``.env`` file."""
from __future__ import annotations

import csv
import ipaddress
import os
import sys
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from limits import parse_many
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trialflow.domain.business_hours import parse_hours, parse_workdays

# Tokens and secrets shorter than this are guessable or typed by hand.
MIN_TOKEN_LENGTH = 32
_PLACEHOLDERS = {"changeme", "change-me", "changethis", "xoxb-your-token", "secret", "todo", "replace-me"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIALFLOW_", env_file=".env", extra="ignore")

    # Every field's description is its line in the README's settings table (scripts/settings-table
    # writes it; tests/integration/test_readme.py keeps the two in step). ``shown``: the default in words.
    database_url: str = Field("", description=(
        "SQLite (embedded) or `postgresql+psycopg://user:password@host:5432/name` (production)"),
        json_schema_extra={"shown": "`trialflow.db` in the data directory"})
    broker_url: str | None = Field(None, description=(
        "unset: effects are delivered inside `trialflow serve`; `redis://…` (or `rediss://…`): Celery "
        "workers deliver them (`trialflow worker`, `trialflow beat`)"))
    config_dir: Path = Field(Path("config"), description=(
        "the reference data: `accounts.csv`, `staff.csv`, `instances.csv` (see Reference data)"))
    data_dir: Path | None = Field(None, description=(
        "trialflow's own files on the machine: the SQLite database (when `TRIALFLOW_DATABASE_URL` is unset), "
        "beat's schedule, the worker's liveness files, the signup spool. `$XDG_DATA_HOME/trialflow` or "
        "`~/.local/share/trialflow` (macOS `~/Library/Application Support/trialflow`, Windows "
        "`%LOCALAPPDATA%\\trialflow`); `scripts/serve` uses `.trialflow/` in the checkout. Created private "
        "(0700); refused if another user owns it or others may write in it"),
        json_schema_extra={"shown": "the user's data directory"})

    slack_bot_token: SecretStr | None = Field(None, description=(
        "the Slack app's Bot User OAuth Token (`xoxb-…`); unset: Slack effects are dry-run"))
    slack_signing_secret: SecretStr | None = Field(None, description=(
        "the Slack app's signing secret: checks every request Slack sends (buttons, `/trial`, events)"))
    slack_api_url: str = Field("https://slack.com/api/", description="Slack's Web API (a local server in the tests)")
    alerts_channel: str = Field("cloud-trial-alerts", description=(
        "the channel for alerts: triage, failures, the daily reconcile"))

    github_token: SecretStr | None = Field(None, description=(
        "a token that may open, label and comment on issues in `TRIALFLOW_GITHUB_REPO`; unset: dry-run"))
    github_api_url: str = Field("https://api.github.com", description="GitHub's REST API (GitHub Enterprise: `https://HOST/api/v3`)")
    github_repo: str | None = Field(None, description="the cloud team's repository, `owner/name`")
    github_webhook_secret: SecretStr | None = Field(None, description=(
        "the secret of the repository's webhook to `<TRIALFLOW_PUBLIC_URL>/github/webhooks`"))
    # GitHub asks integrations to leave a second between writes (secondary rate limits); per process.
    github_seconds_between_writes: float = Field(1.0, ge=0, description=(
        "the pause between two GitHub writes of one process (GitHub's advice against secondary rate limits)"))

    smtp_url: str | None = Field(None, description=(
        "`smtp://user:pass@host:587` (STARTTLS, required when the URL has credentials) or `smtps://…` (TLS from "
        "the first byte); unset: emails are dry-run"))
    email_from: str = Field("trials@example.com", description="the sender of the emails to prospects")
    support_email: str = Field("support@example.com", description="where prospects are told to write for help")
    feedback_sender: str = Field("growth@example.com", description="the sender of the feedback request at the end of a trial")
    feedback_url: str | None = Field(None, description=(
        "the link in the email telling a prospect their trial ended (a survey); unset: a mailto: link to "
        "the feedback sender"))

    activity_secret: SecretStr | None = Field(None, description=(
        "the HMAC secret instances sign `POST /api/instances/{host}/activity` with"))
    events_token: SecretStr | None = Field(None, description=(
        "the bearer token the marketing site sends to `/api/events`; unset: events are refused"))

    instance_api_url: str = Field("https://{host}/.api/graphql", description=(
        "the trial instances' admin API (Sourcegraph GraphQL); `{host}` is filled in"))
    instance_token: SecretStr | None = Field(None, description=(
        "the access token of the site-admin automation account the cloud team creates on every trial instance "
        "(see The trial instances themselves); unset: dry-run"))
    instance_tokens_file: Path | None = Field(None, description=(
        "optional CSV `host,token` of per-instance tokens, kept outside the repository; wins over the shared token"))
    usage_poll_hours: float = Field(6.0, gt=0, description=(
        "how often each live trial's instance is asked for its last 7 days of usage"))
    cloud_sla_hours: float = Field(24.0, gt=0, description=(
        "a cloud-team request (GitHub issue) open longer is chased on its issue once a day"))

    # The clocks on waits for people (services.calendar): business hours, and each wait's reminder
    # and escalation. Holidays: ``holidays.csv`` (``date,name``) in the config directory.
    business_timezone: str = Field("UTC", description="the IANA timezone business hours are counted in, like Europe/Paris")
    business_hours: str = Field("09:00-17:00", description="the working hours of a business day, HH:MM-HH:MM")
    business_days: str = Field("mon-fri", description="the working days, like mon-fri or mon,tue,thu; holidays come from holidays.csv in the config directory")
    triage_reminder_business_hours: float = Field(4.0, gt=0, description="business hours a lead may wait in triage before the inbound SDRs are reminded in its thread")
    triage_escalation_business_days: float = Field(1.0, gt=0, description="business days a lead may wait in triage before #cloud-trial-alerts and the admins are told")
    instance_request_business_days: float = Field(1.0, gt=0, description="business days an instance request may stay open before its issue gets a comment and an alert is posted")
    hand_off_reminder_business_days: float = Field(1.0, gt=0, description="business days a ready instance may wait for its hand-off before the CE is reminded (and again each such period)")
    hand_off_escalation_business_days: float = Field(2.0, gt=0, description="business days a ready instance may wait for its hand-off before the AE is told")
    # Optional AE/CE pairing: ``pairs.csv`` (``ae,ce``) in the config directory; a trial whose AE has
    # a pair gets that CE while they can take it (not away, not at their cap).
    routing_pairs: bool = Field(False, description="assign AE and CE together from pairs.csv in the config directory")

    instance_cap: int = Field(100, ge=0, description="trials that may hold or await an instance at once")
    pool_low_water: int = Field(3, ge=0, description=(
        "fewer free pool instances than this: one \"pre-provision more\" issue"))
    trial_license_tags: str = Field(("plan:enterprise-1,private-extension-registry,remote-extensions-allow-disallow,"
                                     "monitoring,true-up,trial,plg-trial"),
                                    description="the tags of a trial's license key, comma-separated")
    trial_license_seats: int = Field(1000, description="the seats of a trial's license key")
    license_rotation_days: int = Field(7, description=(
        "the trial license key is due for rotation this long after `trialflow license rotated`"))

    spool_dir: Path | None = Field(None, description=(
        "where signups wait on local disk while the database is unreachable (see Delivery guarantees). Put it "
        "on a persistent volume"), json_schema_extra={"shown": "`<data dir>/spool`"})
    spool_replay_seconds: float = Field(1.0, gt=0, description=(
        "how often `trialflow serve` looks for spooled signups to route"))

    max_body_bytes: int = Field(16 * 1024, description="the largest request body the signup and events APIs read")
    delivery_max_attempts: int = Field(8, description=(
        "attempts at one effect before it is parked as failed and announced in the alerts channel"))
    # A batch starts no call past half of the lease, so every call has at least 60 s of lease ahead.
    delivery_lease_seconds: float = Field(120.0, description=(
        "how long a worker holds an effect before another may take it over"))
    delivery_batch_size: int = Field(50, ge=1, le=500, description=(
        "effects per delivery task: one lease and one result statement for the lot"))
    relay_interval_seconds: float = Field(0.5, description="the in-process relay's pace (no broker)")
    beat_relay_seconds: float = Field(5.0, description="Celery beat: how often due effects are dispatched again (lost tasks, retries)")
    relay_grace_seconds: float = Field(10.0, description="a task not finished this long after its dispatch is sent again")
    beat_sweep_seconds: float = Field(120.0, description="Celery beat: how often the 15/30-day clock is swept")
    outbox_retention_days: int = Field(30, ge=1, description=(
        "delivered effects older than this leave the outbox, a few batches each sweep (see Bounded storage); "
        "failed and undelivered ones never do"))
    prune_batch_size: int = Field(500, ge=1, le=10000, description=(
        "rows deleted per transaction when pruning the outbox"))
    prune_batches_per_sweep: int = Field(20, ge=1, description="batches of delivered effects each sweep prunes at most")
    # Above Celery's longest pause between two attempts to reconnect (30 s), so a worker about to
    # reconnect is not taken for hung.
    worker_hung_seconds: float = Field(45.0, gt=0, description=(
        "`trialflow worker` replaces its Celery process after this long without its event loop turning while "
        "Redis answers"))
    log_json: bool = Field(False, description="log one JSON object per line (as `--log-json`)")

    # Salesforce, the system of record (trialflow.crm.salesforce): OAuth 2.0 JWT bearer with a connected
    # app's certificate and a pre-authorized integration user. CLIENT_ID, USERNAME and PRIVATE_KEY_FILE:
    # all or none; none: accounts.csv and opportunities recorded locally.
    salesforce_login_url: str = Field("https://login.salesforce.com", description=(
        "Salesforce's login: `https://test.salesforce.com` for a sandbox, or your My Domain; the JWT's audience"))
    salesforce_client_id: str | None = Field(None, description=(
        "the connected app's consumer key (see Salesforce, the system of record); unset: `accounts.csv` and "
        "opportunities kept locally"))
    salesforce_username: str | None = Field(None, description="the pre-authorized integration user")
    salesforce_private_key_file: Path | None = Field(None, description=(
        "the private key (PEM) of the certificate the connected app holds, kept outside the repository"))
    salesforce_api_version: str = Field("59.0", description=(
        "the REST API version (46.0 or later answers an upsert's update with its id)"))
    salesforce_timeout_seconds: float = Field(30.0, gt=0, description=(
        "how long one Salesforce call may take before it is retried later"))
    salesforce_accounts_every_hours: float = Field(1.0, gt=0, description=(
        "how often `trialflow serve` and Celery beat read the accounts from Salesforce"))
    salesforce_domain_field: str = Field("Website", description=(
        "the Account field holding its domain (a URL's host, `www.` dropped)"))
    salesforce_prequalified_field: str = Field("Trial_Prequalified__c", description=(
        "the Account checkbox: pre-qualified for a cloud trial"))
    salesforce_named_field: str = Field("Named_Account__c", description=(
        "the Account checkbox: a named account (named implies pre-qualified)"))
    salesforce_named_sdr_field: str = Field("Named_SDR__r.Email", description=(
        "the Account field (a relationship path is fine) holding the named SDR's email"))
    salesforce_ae_field: str = Field("Owner.Email", description="the Account field holding the owner AE's email")
    salesforce_ce_team_role: str = Field("Customer Engineer", description=(
        "the account team role (AccountTeamMember.TeamMemberRole) of the CE"))
    salesforce_trial_id_field: str = Field("Trial_Id__c", description=(
        "the Opportunity's External ID field holding the trial id: upserts are keyed on it"))
    salesforce_instance_url_field: str = Field("Trial_Instance_URL__c", description=(
        "the Opportunity field for the trial instance's URL (empty: not sent)"))
    salesforce_trial_end_field: str = Field("Trial_End_Date__c", description=(
        "the Opportunity field for the trial's end date (empty: not sent)"))
    salesforce_pql_grade_field: str = Field("Trial_PQL_Grade__c", description=(
        "the Opportunity field for the PQL grade (empty: not sent)"))
    salesforce_activated_field: str = Field("Trial_Activated__c", description=(
        "the Opportunity checkbox: the instance has been used (empty: not sent)"))
    salesforce_loss_reason_field: str = Field("Loss_Reason__c", description=(
        "the Opportunity field for why a trial was terminated (empty: not sent)"))
    salesforce_lead_source: str = Field("Cloud Trial", description="the Opportunity's LeadSource")
    salesforce_stage_qualified: str = Field("Qualification", description=(
        "the stage once converted to Opp or qualified, before the trial starts"))
    salesforce_stage_started: str = Field("Value Proposition", description="the stage while the trial runs")
    salesforce_stage_won: str = Field("Closed Won", description="the stage of a converted trial")
    salesforce_stage_lost: str = Field("Closed Lost", description="the stage of a terminated trial")

    oidc_issuer: str | None = Field(None, description=(
        "staff sign-in: the OpenID Connect issuer (`https://slack.com`, `https://accounts.google.com`, "
        "`https://<org>.okta.com`)"))
    oidc_client_id: str | None = Field(None, description="staff sign-in: the OAuth client registered with that provider")
    oidc_client_secret: SecretStr | None = Field(None, description="staff sign-in: that client's secret")
    public_url: str | None = Field(None, description=(
        "where people and Slack reach trialflow; the sign-in redirect URI is `<TRIALFLOW_PUBLIC_URL>/auth/callback`; "
        "`https://…` makes the session cookie `Secure`"))
    session_secret: SecretStr | None = Field(None, description=(
        "signs the session cookie (32+ characters: `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"))
    session_max_age_seconds: int = Field(12 * 3600, ge=60, description=(
        "a sign-in ends this long after it began (12 h), however much it is used"))
    api_tokens: SecretStr | None = Field(None, description=(
        "machine tokens for the staff surfaces: `name:token,name:token` (tokens of 32+ characters; the name is "
        "what the audit log shows)"))
    metrics_token: SecretStr | None = Field(None, description=(
        "what Prometheus sends as `Authorization: Bearer …` to `/metrics` (32+ characters); unset: this machine only"))
    signup_rate_per_ip: str = Field("30/minute", description=(
        "signups per client address (`N/second`, `N/minute`, `N/hour`; several separated by `;`)"))
    signup_rate_per_domain: str = Field("200/hour", description=(
        "signups per email domain (a public mailbox domain: per address)"))
    trusted_proxies: str = Field("", description=(
        "CIDRs of your reverse proxies / load balancers, comma- or space-separated: their `X-Forwarded-For` names "
        "the client"))

    _instance_tokens: dict[str, SecretStr] = PrivateAttr(default_factory=dict)
    _database_in_data_dir: bool = PrivateAttr(default=False)

    @field_validator("slack_bot_token", "slack_signing_secret", "github_token", "github_webhook_secret",
                     "activity_secret", "events_token", "instance_token", "instance_tokens_file", "oidc_issuer",
                     "oidc_client_id", "oidc_client_secret", "public_url", "session_secret", "api_tokens",
                     "metrics_token", "data_dir", "salesforce_client_id", "salesforce_username",
                     "salesforce_private_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if value == "" else value

    @field_validator("signup_rate_per_ip", "signup_rate_per_domain")
    @classmethod
    def _a_rate(cls, value: str, info) -> str:
        try:
            parse_many(value)
        except ValueError:
            raise ValueError(f"TRIALFLOW_{info.field_name.upper()} must read like 30/minute or 200/hour "
                             f"(N/second|minute|hour), not {value!r}") from None
        return value

    @field_validator("business_timezone")
    @classmethod
    def _a_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"TRIALFLOW_BUSINESS_TIMEZONE must be an IANA zone like Europe/Paris, not {value!r}") from None
        return value

    @field_validator("business_hours")
    @classmethod
    def _business_hours(cls, value: str) -> str:
        opens, closes = parse_hours(value)
        if closes <= opens:
            raise ValueError(f"TRIALFLOW_BUSINESS_HOURS must close after they open, not {value!r}")
        return value

    @field_validator("business_days")
    @classmethod
    def _business_days(cls, value: str) -> str:
        if not parse_workdays(value):
            raise ValueError("TRIALFLOW_BUSINESS_DAYS needs at least one day, like mon-fri")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        for part in value.replace(",", " ").split():
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"TRIALFLOW_TRUSTED_PROXIES: {part!r} is not an address or a CIDR "
                                 "like 10.0.0.0/8") from None
        return value

    @field_validator("spool_dir", mode="before")
    @classmethod
    def _empty_dir_is_unset(cls, value):
        return None if value == "" else value

    @model_validator(mode="after")
    def _no_placeholder_secrets(self):
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_path / 'trialflow.db'}"
            self._database_in_data_dir = True
        for name in ("slack_bot_token", "slack_signing_secret", "github_token", "github_webhook_secret",
                     "activity_secret", "events_token", "instance_token", "oidc_client_secret", "session_secret",
                     "metrics_token"):
            value = getattr(self, name)
            if value is not None and value.get_secret_value().strip().lower() in _PLACEHOLDERS:
                raise ValueError(f"TRIALFLOW_{name.upper()} is still a placeholder: set a real value or unset it")
        if self.github_token is not None and not self.github_repo:
            raise ValueError("TRIALFLOW_GITHUB_REPO (owner/name) is required when TRIALFLOW_GITHUB_TOKEN is set")
        if self.github_repo and self.github_repo.count("/") != 1:
            raise ValueError("TRIALFLOW_GITHUB_REPO must be owner/name")
        if "{host}" not in self.instance_api_url:
            raise ValueError("TRIALFLOW_INSTANCE_API_URL must contain {host}, like https://{host}/.api/graphql")
        if self.instance_tokens_file is not None:
            self._instance_tokens = read_instance_tokens(self.instance_tokens_file)
        self.api_token_pairs()  # a malformed or short token stops trialflow here, not at the first request
        self._check_sign_in()
        self._check_salesforce()
        if self.metrics_token is not None and len(self.metrics_token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"TRIALFLOW_METRICS_TOKEN must be at least {MIN_TOKEN_LENGTH} characters")
        return self

    @property
    def data_path(self) -> Path:
        """The data directory's path (``trialflow.datadir.data_dir`` creates it, private)."""
        return Path(self.data_dir or default_data_dir()).absolute()

    @property
    def database_in_data_dir(self) -> bool:
        """No TRIALFLOW_DATABASE_URL: the database is the SQLite file in the data directory."""
        return self._database_in_data_dir

    def instance_token_for(self, host: str | None) -> SecretStr | None:
        """The automation account's token for ``host``: its own line in the tokens file, else the
        shared token. None: trialflow cannot administer that instance (dry-run)."""
        if not host:
            return None
        return self._instance_tokens.get(host.lower(), self.instance_token)

    def instance_api_for(self, host: str) -> str:
        return self.instance_api_url.replace("{host}", host)

    @property
    def instance_tokens(self) -> dict[str, SecretStr]:
        """The per-host tokens of ``instance_tokens_file`` (for masking them in logs)."""
        return dict(self._instance_tokens)

    def _check_sign_in(self) -> None:
        named = {"TRIALFLOW_OIDC_ISSUER": self.oidc_issuer, "TRIALFLOW_OIDC_CLIENT_ID": self.oidc_client_id,
                 "TRIALFLOW_OIDC_CLIENT_SECRET": self.oidc_client_secret, "TRIALFLOW_PUBLIC_URL": self.public_url,
                 "TRIALFLOW_SESSION_SECRET": self.session_secret}
        oidc = [self.oidc_issuer, self.oidc_client_id, self.oidc_client_secret]
        if not any(oidc):
            return
        missing = [name for name, value in named.items() if value is None]
        if missing:
            raise ValueError(f"staff sign-in needs {', '.join(missing)} as well "
                             "(or unset TRIALFLOW_OIDC_ISSUER, _CLIENT_ID and _CLIENT_SECRET)")
        for name, url in (("TRIALFLOW_OIDC_ISSUER", self.oidc_issuer), ("TRIALFLOW_PUBLIC_URL", self.public_url)):
            parts = urlsplit(url or "")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{name} must be an http(s) URL, like https://trials.example.com, not {url!r}")
        assert self.session_secret is not None
        if len(self.session_secret.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"TRIALFLOW_SESSION_SECRET must be at least {MIN_TOKEN_LENGTH} characters "
                             "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")

    def _check_salesforce(self) -> None:
        named = {"TRIALFLOW_SALESFORCE_CLIENT_ID": self.salesforce_client_id,
                 "TRIALFLOW_SALESFORCE_USERNAME": self.salesforce_username,
                 "TRIALFLOW_SALESFORCE_PRIVATE_KEY_FILE": self.salesforce_private_key_file}
        missing = [name for name, value in named.items() if value is None]
        if len(missing) == len(named):
            return
        if missing:
            raise ValueError(f"Salesforce needs {', '.join(missing)} as well (or unset all of "
                             "TRIALFLOW_SALESFORCE_CLIENT_ID, _USERNAME and _PRIVATE_KEY_FILE)")
        parts = urlsplit(self.salesforce_login_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("TRIALFLOW_SALESFORCE_LOGIN_URL must be an https URL, like https://login.salesforce.com "
                             f"or https://acme.my.salesforce.com, not {self.salesforce_login_url!r}")
        assert self.salesforce_private_key_file is not None
        if not self.salesforce_private_key_file.is_file():
            raise ValueError(f"TRIALFLOW_SALESFORCE_PRIVATE_KEY_FILE: {self.salesforce_private_key_file} does not exist")

    @property
    def salesforce_configured(self) -> bool:
        return self.salesforce_client_id is not None

    def api_token_pairs(self) -> list[tuple[str, str]]:
        """``TRIALFLOW_API_TOKENS`` as (name, token) pairs; ValueError names what is wrong."""
        if self.api_tokens is None:
            return []
        pairs: list[tuple[str, str]] = []
        for i, item in enumerate(self.api_tokens.get_secret_value().split(","), start=1):
            name, sep, token = item.strip().partition(":")
            name, token = name.strip(), token.strip()
            if not sep or not name or not token:
                raise ValueError(f"TRIALFLOW_API_TOKENS: entry {i} must be name:token (comma-separated pairs)")
            if len(token) < MIN_TOKEN_LENGTH:
                raise ValueError(f"TRIALFLOW_API_TOKENS: the token of {name!r} must be at least "
                                 f"{MIN_TOKEN_LENGTH} characters")
            if any(name == other for other, _ in pairs):
                raise ValueError(f"TRIALFLOW_API_TOKENS: the name {name!r} is given twice")
            pairs.append((name, token))
        return pairs

    @property
    def sign_in_enabled(self) -> bool:
        return self.oidc_issuer is not None

    @property
    def staff_auth_configured(self) -> bool:
        """Staff sign-in or machine tokens: without either, staff surfaces answer loopback clients only."""
        return self.sign_in_enabled or self.api_tokens is not None

    @property
    def license_tags(self) -> list[str]:
        return [t.strip() for t in self.trial_license_tags.split(",") if t.strip()]


def default_data_dir() -> Path:
    """The per-user data directory: ``$XDG_DATA_HOME/trialflow`` (``~/.local/share/trialflow``) on
    Linux and the like, ``~/Library/Application Support/trialflow`` on macOS,
    ``%LOCALAPPDATA%\\trialflow`` on Windows."""
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return (Path(local) if local else Path.home() / "AppData" / "Local") / "trialflow"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "trialflow"
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec: a relative path is invalid and must be ignored.
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share") / "trialflow"


def read_instance_tokens(path: Path) -> dict[str, SecretStr]:
    """``host,token`` lines (a header row is optional). Fails fast, naming the line, on anything else;
    the token itself never appears in the message."""
    if not path.is_file():
        raise ValueError(f"TRIALFLOW_INSTANCE_TOKENS_FILE: {path} does not exist")
    tokens: dict[str, SecretStr] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for line, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#") or (line == 1 and cells[:2] == ["host", "token"]):
                continue
            if len(cells) != 2 or not cells[0] or not cells[1]:
                raise ValueError(f"TRIALFLOW_INSTANCE_TOKENS_FILE {path}:{line}: expected host,token")
            if cells[1].lower() in _PLACEHOLDERS:
                raise ValueError(f"TRIALFLOW_INSTANCE_TOKENS_FILE {path}:{line}: the token is still a placeholder")
            tokens[cells[0].lower().rstrip(".")] = SecretStr(cells[1])
    return tokens


@lru_cache
def get_settings() -> Settings:
    return Settings()
