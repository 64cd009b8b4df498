"""All configuration, from ``TRIALFLOW_*`` environment variables or a ``.env`` file."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDERS = {"changeme", "change-me", "changethis", "xoxb-your-token", "secret", "todo", "replace-me"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIALFLOW_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///trialflow.db"
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
    # `trialflow worker` replaces its Celery process when that process's event loop has not turned
    # for this long while the broker answers (a hung worker). Above Celery's longest pause between
    # two attempts to reconnect (30 s), so a worker about to reconnect is not taken for hung.
    worker_hung_seconds: float = Field(45.0, gt=0)
    log_json: bool = False

    @field_validator("slack_bot_token", "slack_signing_secret", "github_token", "github_webhook_secret",
                     "activity_secret", "events_token", "data_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if value == "" else value

    @model_validator(mode="after")
    def _no_placeholder_secrets(self):
        for name in ("slack_bot_token", "slack_signing_secret", "github_token", "github_webhook_secret",
                     "activity_secret", "events_token"):
            value = getattr(self, name)
            if value is not None and value.get_secret_value().strip().lower() in _PLACEHOLDERS:
                raise ValueError(f"TRIALFLOW_{name.upper()} is still a placeholder: set a real value or unset it")
        if self.github_token is not None and not self.github_repo:
            raise ValueError("TRIALFLOW_GITHUB_REPO (owner/name) is required when TRIALFLOW_GITHUB_TOKEN is set")
        if self.github_repo and self.github_repo.count("/") != 1:
            raise ValueError("TRIALFLOW_GITHUB_REPO must be owner/name")
        return self

    @property
    def license_tags(self) -> list[str]:
        return [t.strip() for t in self.trial_license_tags.split(",") if t.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
