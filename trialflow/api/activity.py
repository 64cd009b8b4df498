"""Instances report their usage: ``POST /api/instances/{host}/activity``.

Signed like Slack signs, with ``TRIALFLOW_ACTIVITY_SECRET``:
    X-Trialflow-Timestamp: <unix seconds>
    X-Trialflow-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<host>.<exact body>">
where <host> is the instance host of the URL path, lower-cased (trailing dot dropped, an
internationalised name in its punycode form), so a report signed for one host cannot be replayed
against another. A timestamp more than 5 minutes from trialflow's clock is refused, so a captured request cannot
be replayed later; within those 5 minutes a replay is a no-op (the report's moment defaults to
the signed timestamp, and one report per instance per moment is kept).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from trialflow.api import docs
from trialflow.api.common import RT, error, parse_json, read_body
from trialflow.api.schemas import ActivityAnswer, ActivityRequest
from trialflow.domain.normalize import normalize_domain
from trialflow.errors import InvalidSignup, NotFound
from trialflow.services import activity

log = logging.getLogger("trialflow.api.activity")
router = APIRouter(tags=["instances"])

MAX_SKEW_SECONDS = 300


def signed_host(host: str) -> str:
    """The host as it is signed: normalised like trialflow stores it, else just lower-cased."""
    try:
        return normalize_domain(host)
    except InvalidSignup:
        return host.strip().lower()


def activity_signature(secret: bytes, timestamp: str, host: str, body: bytes) -> str:
    message = timestamp.encode() + b"." + signed_host(host).encode() + b"." + body
    return "sha256=" + hmac.new(secret, message, hashlib.sha256).hexdigest()


@router.post("/api/instances/{host}/activity", openapi_extra=docs.json_body(
    ActivityRequest, "The instance's usage since its last report; counters default to 0, at to the signed timestamp.",
    parameters=[docs.header("X-Trialflow-Timestamp", "Unix seconds; more than 5 minutes away from now is refused.",
                            pattern=r"^[0-9]{1,12}$"),
                docs.header("X-Trialflow-Signature", "sha256= and the hex HMAC-SHA256 of <timestamp>.<host>.<body> with "
                                                     "TRIALFLOW_ACTIVITY_SECRET.", pattern=r"^sha256=[0-9a-f]{64}$")]),
    responses=docs.answers({201: (ActivityAnswer, "Recorded."), 200: (ActivityAnswer, "Already recorded (a replay).")},
                           400, 401, 404, 413, 422, 503))
async def instance_activity(host: str, request: Request, rt: RT):
    """An instance's usage report (signed with the activity secret); decides "inactive at day 15"."""
    secret = rt.settings.activity_secret
    if secret is None:
        return error(503, "Activity reports cannot be verified: TRIALFLOW_ACTIVITY_SECRET is not set.")
    body = await read_body(request, rt.settings.max_body_bytes)
    timestamp = request.headers.get("x-trialflow-timestamp") or ""
    given = request.headers.get("x-trialflow-signature") or ""
    now = rt.clock.now()
    # isascii: "²³" and other Unicode digits pass isdigit() but are no number int() reads.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12) \
            or abs(now.timestamp() - int(timestamp)) > MAX_SKEW_SECONDS:
        log.warning("refused an activity report for %s: missing or stale timestamp", host)
        return error(401, "X-Trialflow-Timestamp is missing or more than 5 minutes away from now.")
    if not hmac.compare_digest(given.encode(), activity_signature(secret.get_secret_value().encode(), timestamp, host, body).encode()):
        log.warning("refused an activity report for %s: wrong signature", host)
        return error(401, "X-Trialflow-Signature is missing or does not match the timestamp, host and body.")
    data = parse_json(body)
    try:
        report = activity.parse_report(data, datetime.fromtimestamp(int(timestamp), UTC), now)
    except InvalidSignup as exc:
        return error(422, exc.message, field=exc.field)
    try:
        result = await run_in_threadpool(activity.record_activity, rt, host, report)
    except NotFound as exc:
        return error(404, str(exc))
    return JSONResponse(result, status_code=201 if result["recorded"] else 200)
