"""Marketing actions for lead scoring: ``POST /api/events`` and ``GET /api/events?email=``."""
from __future__ import annotations

import hmac
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select

from trialflow import scoring
from trialflow.api import docs
from trialflow.api.common import RT, Unreadable, error, parse_json, read_body
from trialflow.api.schemas import EventAnswer, EventList, EventRequest
from trialflow.clock import parse_instant
from trialflow.db import tables
from trialflow.domain.normalize import normalize_email
from trialflow.errors import InvalidSignup

router = APIRouter(tags=["lead scoring"])

FIELDS = {"email", "kind", "at"}
# A little clock skew between marketing automation and us is normal; a day ahead is a bug.
FUTURE_TOLERANCE = timedelta(minutes=5)
EXAMPLE = '{"email": "bob@acme-corp.com", "kind": "demo_request", "at": "2026-03-02T10:00:00Z"}'


class BadEvent(Exception):
    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


def _kinds() -> str:
    return ", ".join(f"{k} ({p})" for k, p in scoring.MQL_POINTS.items())


def parse_event(data: Any, now: datetime) -> tuple[str, str, datetime]:
    """(email, kind, at) from the request body, or BadEvent with a sentence a person can act on."""
    if not isinstance(data, dict):
        raise BadEvent(f"The body must be a JSON object, like {EXAMPLE}.")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise BadEvent(f"Unknown field(s): {', '.join(unknown)}. Send email, kind and (optionally) at.", unknown[0])
    for required in ("email", "kind"):
        if data.get(required) in (None, ""):
            raise BadEvent(f"{required} is required, like {EXAMPLE}.", required)
    try:
        email = normalize_email(data["email"]).address
    except InvalidSignup as exc:
        raise BadEvent(exc.message, "email") from None
    kind = data["kind"]
    if not isinstance(kind, str) or kind.strip().lower() not in scoring.MQL_POINTS:
        raise BadEvent(f"kind {kind!r} is not a scored marketing action; kinds (points) are: {_kinds()}.", "kind")
    kind = kind.strip().lower()
    at = now
    if data.get("at") is not None:
        raw = data["at"]
        # A time without an offset is taken as UTC, the zone everything here is stored in.
        parsed = parse_instant(raw)
        if parsed is None:
            raise BadEvent(f"at must be an ISO-8601 time like 2026-03-02T10:00:00Z, not {raw!r:.80}.", "at")
        at = parsed
        if at > now + FUTURE_TOLERANCE:
            raise BadEvent(f"at ({at.isoformat()}) is in the future; send when the action happened.", "at")
    return email, kind, at


def _record(rt, email: str, kind: str, at: datetime) -> scoring.MarketingEventResult:
    with rt.uow() as uow:
        result = scoring.record_marketing_event(uow.session, email, kind, at)
        uow.commit()
        return result


def _refused(request: Request, rt) -> JSONResponse | None:
    """Scores steer the SDRs' queue and events name people: only the marketing site may post or read them."""
    token = rt.settings.events_token
    if token is None:
        return error(503, "Marketing events are not accepted: TRIALFLOW_EVENTS_TOKEN is not set.")
    expected = f"Bearer {token.get_secret_value()}".encode()
    if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
        return error(401, "Send the events token as 'Authorization: Bearer <TRIALFLOW_EVENTS_TOKEN>'.")
    return None


@router.post("/api/events", status_code=201, openapi_extra=docs.json_body(
    EventRequest, f"One marketing action, like {EXAMPLE}.", security=[{docs.EVENTS_SECURITY: []}]),
    responses=docs.answers({201: (EventAnswer, "Recorded and scored.")}, 401, 413, 422, 503))
async def post_event(request: Request, rt: RT):
    """Record one marketing action (form, demo request, pricing inquiry, sign-up, page view) and score it."""
    refused = _refused(request, rt)
    if refused is not None:
        return refused
    body = await read_body(request, rt.settings.max_body_bytes)  # too large: 413 from the app's handler
    try:
        data = parse_json(body)
    except Unreadable as exc:
        return error(422, f"The body must be JSON, like {EXAMPLE}. {exc.message}")
    try:
        email, kind, at = parse_event(data, rt.clock.now())
    except BadEvent as exc:
        return error(422, exc.message, field=exc.field)
    result = await run_in_threadpool(_record, rt, email, kind, at)
    return JSONResponse(status_code=201, content={
        "email": result.email, "kind": result.kind, "points": result.points, "at": result.at.isoformat(),
        "trial_id": result.trial_id, "mql_points": result.mql_points, "mql": result.mql,
    })


@router.get("/api/events", openapi_extra={"security": [{docs.EVENTS_SECURITY: []}]},
            responses=docs.answers({200: (EventList, "The email's actions and score.")}, 401, 422, 503))
def get_events(request: Request, rt: RT,
               email: Annotated[str, Query(max_length=254, json_schema_extra={"format": "email"})]):
    """An email's marketing actions and its MQL score (counted whether or not it has a trial yet)."""
    refused = _refused(request, rt)
    if refused is not None:
        return refused
    try:
        address = normalize_email(email).address
    except InvalidSignup as exc:
        return error(422, exc.message, field="email")
    me = tables.marketing_events
    with rt.session_factory() as session:
        rows = session.execute(select(me.c.kind, me.c.points, me.c.at, me.c.trial_id)
                               .where(me.c.email == address).order_by(me.c.at, me.c.id)).all()
    total = sum(r.points for r in rows)
    return {"email": address, "mql_points": total, "mql": scoring.is_mql(total), "mql_threshold": scoring.MQL_THRESHOLD,
            "events": [{"kind": r.kind, "points": r.points, "at": r.at.isoformat(), "trial_id": r.trial_id} for r in rows]}
