"""All configuration, from ``TRIALFLOW_*`` environment variables or a ``.env`` file."""
from __future__ import annotations

import csv
import ipaddress
import os
import sys
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Tokens and secrets shorter than this are guessable or typed by hand.
MIN_TOKEN_LENGTH = 32
_PLACEHOLDERS = {"changeme", "change-me", "changethis", "xoxb-your-token", "secret", "todo", "replace-me"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIALFLOW_", env_file=".env", extra="ignore")

    # Unset: the SQLite file trialflow.db in the data directory, so every folder finds the same one.
    database_url: str = ""
    broker_url: str | None = None
    config_dir: Path = Path("config")
    # trialflow's own files on this machine (beat's schedule, the worker's liveness files); unset:
    # the per-user data directory (trialflow.datadir.default_data_dir).
    data_dir: Path | None = None

    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    alerts_channel: str = "cloud-trial-alerts"

    github_token: SecretStr | None = None
    github_api_url: str = "https://api.github.com"
    github_repo: str | None = None
    github_webhook_secret: SecretStr | None = None
    # GitHub asks integrations to leave a second between writes (secondary rate limits); per process.
    github_seconds_between_writes: float = Field(1.0, ge=0)

    smtp_url: str | None = None
    email_from: str = "trials@example.com"
    support_email: str = "support@example.com"
    feedback_sender: str = "growth@example.com"

    # Instance-side HMAC for POST /api/instances/{host}/activity
    activity_secret: SecretStr | None = None
    # Bearer token the marketing site uses for /api/events (unset: events are refused)
    events_token: SecretStr | None = None

    # The trial instances' admin API (Sourcegraph GraphQL). ``{host}`` is the instance's host.
    instance_api_url: str = "https://{host}/.api/graphql"
    # The access token of the site-admin automation account the cloud team creates on every trial
    # instance; ``instance_tokens_file`` (CSV ``host,token``) overrides it per host. Neither: dry-run.
    instance_token: SecretStr | None = None
    instance_tokens_file: Path | None = None
    usage_poll_hours: float = Field(6.0, gt=0, description="how often each trial instance is asked for its usage")
    cloud_sla_hours: float = Field(24.0, gt=0, description="a cloud-team request open this long is chased daily")

    instance_cap: int = Field(100, ge=0, description="trials that may hold or await an instance at once")
    pool_low_water: int = Field(3, ge=0)
    trial_license_tags: str = ("plan:enterprise-1,private-extension-registry,remote-extensions-allow-disallow,"
                               "monitoring,true-up,trial,plg-trial")
    trial_license_seats: int = 1000
    license_rotation_days: int = 7

    # Signups kept on local disk while the database cannot be reached (``trialflow.spool``);
    # unset: ``<data dir>/spool``. Put it on a persistent volume.
    spool_dir: Path | None = None
    spool_replay_seconds: float = Field(1.0, gt=0)  # serve: how often it looks for spooled signups to route

    max_body_bytes: int = 16 * 1024
    delivery_max_attempts: int = 8
    # How long a worker may hold an effect before another may assume it died and take over. A
    # batch starts no call past half of it, so every call has at least 60 s of lease ahead.
    delivery_lease_seconds: float = 120.0
    # Effects per delivery task: one lease and one result statement for the lot.
    delivery_batch_size: int = Field(50, ge=1, le=500)
    relay_interval_seconds: float = 0.5      # in-process relay
    beat_relay_seconds: float = 5.0          # Celery beat: re-dispatch due effects (lost tasks, retries)
    relay_grace_seconds: float = 10.0        # a task not finished this long after dispatch is sent again
    beat_sweep_seconds: float = 120.0        # Celery beat: the 15/30-day clock
    # `trialflow worker` replaces its Celery process when that process's event loop has not turned
    # for this long while the broker answers (a hung worker). Above Celery's longest pause between
    # two attempts to reconnect (30 s), so a worker about to reconnect is not taken for hung.
    worker_hung_seconds: float = Field(45.0, gt=0)
    log_json: bool = False

    # Salesforce, the system of record (trialflow.crm.salesforce): OAuth 2.0 JWT bearer with a connected
    # app's certificate and a pre-authorized integration user. All four or none; none: accounts.csv
    # and opportunities recorded locally.
    salesforce_login_url: str = "https://login.salesforce.com"
    salesforce_client_id: str | None = None
    salesforce_username: str | None = None
    salesforce_private_key_file: Path | None = None
    salesforce_api_version: str = "59.0"
    salesforce_timeout_seconds: float = Field(30.0, gt=0)
    salesforce_accounts_every_hours: float = Field(1.0, gt=0, description="how often accounts are read from Salesforce")
    # Account fields (API names; a relationship path such as Owner.Email is fine).
    salesforce_domain_field: str = "Website"              # a URL is fine: its host is the domain
    salesforce_prequalified_field: str = "Trial_Prequalified__c"
    salesforce_named_field: str = "Named_Account__c"
    salesforce_named_sdr_field: str = "Named_SDR__r.Email"
    salesforce_ae_field: str = "Owner.Email"
    salesforce_ce_team_role: str = "Customer Engineer"    # AccountTeamMember.TeamMemberRole of the CE
    # Opportunity fields and stages.
    salesforce_trial_id_field: str = "Trial_Id__c"        # an External ID field: upserts are keyed on it
    salesforce_instance_url_field: str = "Trial_Instance_URL__c"
    salesforce_trial_end_field: str = "Trial_End_Date__c"
    salesforce_pql_grade_field: str = "Trial_PQL_Grade__c"
    salesforce_activated_field: str = "Trial_Activated__c"
    salesforce_loss_reason_field: str = "Loss_Reason__c"
    salesforce_lead_source: str = "Cloud Trial"
    salesforce_stage_qualified: str = "Qualification"
    salesforce_stage_started: str = "Value Proposition"
    salesforce_stage_won: str = "Closed Won"
    salesforce_stage_lost: str = "Closed Lost"

    # Staff sign-in (OpenID Connect) and machine tokens for the staff surfaces (trialflow.api.auth).
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    public_url: str | None = None            # where people reach trialflow; the redirect URI is built on it
    session_secret: SecretStr | None = None
    session_max_age_seconds: int = Field(12 * 3600, ge=60)
    api_tokens: SecretStr | None = None      # "name:token,name:token"
    metrics_token: SecretStr | None = None
    # POST /api/signups, in the notation of the `limits` library ("N/second|minute|hour").
    signup_rate_per_ip: str = "30/minute"
    signup_rate_per_domain: str = "200/hour"
    trusted_proxies: str = ""                # CIDRs whose X-Forwarded-For names the real client

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
