"""All configuration, from ``TRIALFLOW_*`` environment variables or a ``.env`` file."""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDERS = {"changeme", "change-me", "changethis", "xoxb-your-token", "secret", "todo", "replace-me"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIALFLOW_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///trialflow.db"
    broker_url: str | None = None
    config_dir: Path = Path("config")

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
    log_json: bool = False

    _instance_tokens: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @field_validator("slack_bot_token", "slack_signing_secret", "github_token", "github_webhook_secret",
                     "activity_secret", "events_token", "instance_token", "instance_tokens_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if value == "" else value

    @model_validator(mode="after")
    def _no_placeholder_secrets(self):
        for name in ("slack_bot_token", "slack_signing_secret", "github_token", "github_webhook_secret",
                     "activity_secret", "events_token", "instance_token"):
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
        return self

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

    @property
    def license_tags(self) -> list[str]:
        return [t.strip() for t in self.trial_license_tags.split(",") if t.strip()]


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
