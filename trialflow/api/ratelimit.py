"""Signup rate limits: per client address and per email domain (``limits``, async API).

``TRIALFLOW_SIGNUP_RATE_PER_IP`` (default 30/minute) and ``TRIALFLOW_SIGNUP_RATE_PER_DOMAIN``
(default 200/hour) are moving windows. With ``TRIALFLOW_BROKER_URL`` set to Redis the counts live
there, so every API process shares them; otherwise they are kept in this process.

A public mailbox domain (gmail.com, outlook.com, ...) is not one organisation: it is limited per
address instead, or one stranger could lock every Gmail user out of the signup page for an hour.

Should Redis fail, the limits fall back to this process's counts (logged) rather than refusing or
losing signups: the limit is a guard, the signup is the product.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from trialflow.domain.normalize import normalize_email
from trialflow.errors import InvalidSignup
from trialflow.settings import Settings

log = logging.getLogger("trialflow.api.ratelimit")

KEY_PREFIX = "trialflow-signups"
REDIS_TIMEOUT_SECONDS = 0.5
# After Redis failed, how long this process counts on its own before asking Redis again.
FALLBACK_SECONDS = 5.0


@dataclass(frozen=True)
class OverLimit:
    retry_after: int    # seconds
    message: str


def redis_storage_uri(broker_url: str | None) -> str | None:
    if broker_url and broker_url.startswith(("redis://", "rediss://", "redis+unix://")):
        return "async+" + broker_url
    return None


class _Limiters:
    """The limiters of one event loop (Redis connections and asyncio locks belong to their loop)."""

    def __init__(self, redis_uri: str | None) -> None:
        self.memory = MovingWindowRateLimiter(MemoryStorage())
        self.shared: MovingWindowRateLimiter | None = None
        if redis_uri is not None:
            storage: Storage = RedisStorage(redis_uri, implementation="redispy", key_prefix=KEY_PREFIX,
                                            wrap_exceptions=True, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                            socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
            self.shared = MovingWindowRateLimiter(storage)
        self.shared_failed_at = 0.0


class SignupLimiter:
    def __init__(self, settings: Settings) -> None:
        self.per_ip: list[RateLimitItem] = parse_many(settings.signup_rate_per_ip)
        self.per_domain: list[RateLimitItem] = parse_many(settings.signup_rate_per_domain)
        self.redis_uri = redis_storage_uri(settings.broker_url)
        self._by_loop: dict[int, tuple[asyncio.AbstractEventLoop, _Limiters]] = {}

    def _limiters(self) -> _Limiters:
        loop = asyncio.get_running_loop()
        held = self._by_loop.get(id(loop))
        if held is None or held[0] is not loop:
            for key in [k for k, (other, _) in self._by_loop.items() if other.is_closed()]:
                del self._by_loop[key]
            held = self._by_loop[id(loop)] = (loop, _Limiters(self.redis_uri))
        return held[1]

    async def over_limit(self, address: str, email: Any) -> OverLimit | None:
        """Counts this signup; says so when the address or the domain has had its share."""
        checks: list[tuple[RateLimitItem, str, str]] = [(item, "ip", address) for item in self.per_ip]
        try:
            parsed = normalize_email(email)
        except (InvalidSignup, TypeError, AttributeError):
            parsed = None  # answered 422 anyway; the address still counts
        if parsed is not None:
            key = f"address:{parsed.address}" if parsed.is_public else f"domain:{parsed.domain}"
            checks += [(item, "domain", key) for item in self.per_domain]
        limiters = self._limiters()
        for item, kind, key in checks:
            over = await self._hit(limiters, item, kind, key)
            if over is not None:
                return over
        return None

    async def _hit(self, limiters: _Limiters, item: RateLimitItem, kind: str, key: str) -> OverLimit | None:
        limiter = limiters.memory
        if limiters.shared is not None and time.monotonic() - limiters.shared_failed_at > FALLBACK_SECONDS:
            limiter = limiters.shared
        try:
            if await limiter.hit(item, kind, key):
                return None
            reset_at = (await limiter.get_window_stats(item, kind, key)).reset_time
        except Exception as exc:  # noqa: BLE001 - Redis down or slow: count in this process for a while
            limiters.shared_failed_at = time.monotonic()
            log.warning("signup rate limits: Redis failed (%s); counting in this process for %gs",
                        type(exc).__name__, FALLBACK_SECONDS)
            return await self._hit(limiters, item, kind, key) if limiter is not limiters.memory else None
        retry_after = max(1, math.ceil(reset_at - time.time()))
        return OverLimit(retry_after, _message(kind, item, retry_after))


def _message(kind: str, item: RateLimitItem, retry_after: int) -> str:
    unit = item.GRANULARITY.name
    per = unit if item.multiples == 1 else f"{item.multiples} {unit}s"
    whom = "from your network" if kind == "ip" else "for your email domain"
    wait = f"{retry_after} seconds" if retry_after < 120 else f"{math.ceil(retry_after / 60)} minutes"
    return (f"Too many signups {whom} (at most {item.amount} per {per}). Please try again in {wait}; "
            "nothing was recorded from this request.")
