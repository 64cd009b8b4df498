"""The HTTP API. Routes verify, translate and dispatch; services do the work."""
from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import select
from starlette.requests import ClientDisconnect

from trialflow.api import activity, auth, dashboard, docs, events, github, slack
from trialflow.api.clients import client_address
from trialflow.api.common import RT, BodyTooLarge, Unreadable, bad_text, collect_body, error, parse_json, read_body
from trialflow.api.errors import UNEXPECTED, install_error_answers, too_large_message
from trialflow.api.ratelimit import SignupLimiter
from trialflow.api.schemas import Health, SignupAnswer, SignupRequest, TrialDetail, TrialList
from trialflow.api.serialize import trial_detail, trial_summary
from trialflow.db import tables
from trialflow.db.engine import LoopConnections
from trialflow.domain import lifecycle as lc
from trialflow.domain.normalize import normalize_domain
from trialflow.domain.trial import Trial
from trialflow.errors import InvalidSignup, NotFound
from trialflow.metrics import render
from trialflow.runtime import Runtime
from trialflow.services import signups, spooled_signups

log = logging.getLogger("trialflow.api")


# The signup's transactions run on their own threads, not the anyio pool every other route uses:
# asyncio's executor hop costs a fraction of anyio's, and a fixed number of threads (fewer than
# the engine's pooled connections) keeps a burst of signups queued in the event loop instead
# of opening and closing overflow connections to PostgreSQL for it. One pool per process: it
# only runs functions, so every app in the process can share it.
SIGNUP_THREADS = 8
_signup_executor: ThreadPoolExecutor | None = None
_signup_executor_lock = threading.Lock()


def _in_signup_thread(fn, *args):
    global _signup_executor
    if _signup_executor is None:
        with _signup_executor_lock:
            if _signup_executor is None:
                _signup_executor = ThreadPoolExecutor(SIGNUP_THREADS, thread_name_prefix="trialflow-signup")
    # The caller's context goes along (the log filter's current trial), as run_in_threadpool does.
    return asyncio.get_running_loop().run_in_executor(_signup_executor, contextvars.copy_context().run, fn, *args)


TRIAL_ID = re.compile(r"tr_[0-9a-f]{16}")
# A domain name as a signup's is read: two labels at least, the last one not a number (an IP address).
DOMAIN = r"^.+\.[^.]*[^.0-9][^.]*\.?$"
# The largest OFFSET SQLite and PostgreSQL take (a signed 64-bit integer).
MAX_OFFSET = 2**63 - 1
_INVALID_JSON = 'The body must be JSON, like {"email": "bob@acme-corp.com"}.'
_NOT_AN_OBJECT = 'The body must be a JSON object, like {"email": "bob@acme-corp.com"}.'
_SIGNUP_FIELDS = frozenset({"email", "name", "company", "source"})
_RECEIVED = {
    "trial_id": None, "case": None, "state": "received", "redirect_url": None,
    "message": "Thanks! We have your request and our team will get back to you by email shortly.",
}


def _error(status: int, message: str, **extra: Any) -> tuple[int, dict]:
    return status, {"error": message, **extra}


async def _signup(rt: Runtime, body: bytes, connections: LoopConnections | None,
                  limiter: SignupLimiter | None = None, address: str = "") -> tuple[int, dict]:
    """POST /api/signups on a body already read: validate, count against the rate limits, route,
    answer (status, JSON content; a 429's content carries its ``retry_after``).

    On PostgreSQL (``connections`` given) the signup is routed on the event loop when it can be
    (``submit_signup_on_loop``); the rest, and SQLite, go to a signup thread."""
    try:
        data = parse_json(body, check_text=False)
    except Unreadable:
        return _error(400, _INVALID_JSON)
    if not isinstance(data, dict):
        return _error(400, _NOT_AN_OBJECT)
    if "email" not in data:
        return _error(422, "email is required.", field="email")
    unknown = data.keys() - _SIGNUP_FIELDS
    if unknown:
        shown = sorted(repr(k)[1:-1][:40] for k in unknown)
        return _error(422, f"Unknown field(s): {', '.join(shown)}.", field=shown[0])
    for name, value in data.items():
        problem = bad_text(value)
        if problem:
            return _error(422, f"{name}: {problem}.", field=name)
    if limiter is not None:
        over = await limiter.over_limit(address, data.get("email"))
        if over is not None:
            return _error(429, over.message, retry_after=over.retry_after)
    signup = signups.SignupInput(email=data.get("email"), name=data.get("name"),
                                 company=data.get("company"), source=data.get("source"))
    try:
        result, in_doubt = None, None
        if connections is not None:
            try:
                result = await signups.submit_signup_on_loop(connections, rt.settings, rt.clock, signup, rt.wake)
            except InvalidSignup:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a connection the server closed: the thread path tries
                in_doubt = exc.trial_id if isinstance(exc, signups.WriteInDoubt) else None
                log.warning("routing the signup on the event loop failed (%s); routing it in a thread",
                            type(exc).__name__, exc_info=not spooled_signups.is_unreachable(exc))
        if result is None:
            result = await _in_signup_thread(signups.submit_signup, rt.uow, rt.settings, rt.clock, signup)
            if in_doubt is not None and result.trial_id == in_doubt:
                # Our own write had committed before the connection failed: this request made
                # the trial. (Its effects' wake-up was lost with the connection: the relay
                # delivers them on its next pass.)
                result = replace(result, created=True)
    except InvalidSignup as exc:
        return _error(422, exc.message, field=exc.field)
    except Exception as exc:  # noqa: BLE001 - never lose a signup, never a 500 page
        if not spooled_signups.is_unreachable(exc):
            log.exception("routing the signup failed")
        fields = {name: data[name] for name in _SIGNUP_FIELDS if name in data}
        # The failsafe, or the spool on local disk while the database cannot be reached.
        if not await _in_signup_thread(spooled_signups.keep_unrouted, rt, body, fields, exc):
            return _error(503, "We could not take your request right now. Please try again in a minute.")
        return 202, _RECEIVED
    return 201 if result.created else 200, {
        "trial_id": result.trial_id, "case": result.case, "state": result.state,
        "redirect_url": result.redirect_url, "message": result.message,
    }


def _too_large(rt: Runtime) -> tuple[int, dict]:
    return _error(413, too_large_message(rt.settings.max_body_bytes))


async def signup_response(rt: Runtime, request: Request, connections: LoopConnections | None = None) -> JSONResponse:
    """The whole of POST /api/signups, through a Starlette request and response (a body too
    large is the app's BodyTooLarge handler's)."""
    body = await read_body(request, rt.settings.max_body_bytes)
    status, content = await _signup(rt, body, connections, request.app.signup_limiter,
                                    client_address(request.scope, rt.settings.trusted_proxies))
    return JSONResponse(content, status_code=status, headers=_retry_after(status, content))


def _retry_after(status: int, content: dict) -> dict[str, str]:
    return {"Retry-After": str(content["retry_after"])} if status == 429 else {}


async def _read_asgi_body(scope, receive, limit: int) -> bytes:
    """``read_body`` on the bare ASGI interface: the same 413 rules, and a disconnect is the
    ClientDisconnect that Starlette's request stream raises."""
    declared = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"content-length"), None)
    return await collect_body(_asgi_chunks(receive), declared, limit)


async def _asgi_chunks(receive):
    while True:
        message = await receive()
        if message["type"] == "http.request":
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


async def _send_json(send, status: int, content: dict) -> None:
    """What ``JSONResponse(content, status)`` sends: the same body bytes and headers."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")
    headers = [(b"content-length", str(len(body)).encode("latin-1")), (b"content-type", b"application/json")]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in _retry_after(status, content).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class TrialflowApp(FastAPI):
    """FastAPI, except that POST /api/signups is answered before the middleware stack.

    The signup is the hot path (issue 2: 1,000/s on two cores). Through FastAPI it crossed eight
    layers of middleware, routing and exception wrapping, each resumed on every await: about as
    much CPU as routing the signup itself. It is answered here on the bare ASGI interface (no
    Starlette request or response objects either), with the same bodies, headers and statuses.
    ``_signup`` handles every error it can meet, so those layers had nothing to do for it; an
    exception that escapes anyway still gets the app's JSON 500, as the exception handler would
    give it.
    """

    loop_connections: LoopConnections | None = None
    signup_limiter: SignupLimiter | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/signups" and scope["method"] == "POST":
            rt = self.state.runtime
            try:
                try:
                    body = await _read_asgi_body(scope, receive, rt.settings.max_body_bytes)
                except BodyTooLarge:
                    status, content = _too_large(rt)
                else:
                    status, content = await _signup(rt, body, self.loop_connections, self.signup_limiter,
                                                    client_address(scope, rt.settings.trusted_proxies))
            except ClientDisconnect:
                return  # the caller left before sending its body: nobody to answer, nothing routed
            except Exception:  # noqa: BLE001
                log.exception("unhandled error on POST /api/signups")
                status, content = _error(500, UNEXPECTED)
            await _send_json(send, status, content)
            return
        if scope["type"] == "lifespan" and self.loop_connections is not None:
            try:
                await super().__call__(scope, receive, send)
            finally:  # the server is shutting down: close the signup's connections on their loop
                await self.loop_connections.close()
            return
        await super().__call__(scope, receive, send)


def create_app(rt: Runtime) -> FastAPI:
    app = TrialflowApp(title="trialflow", version="0.1.0", docs_url=None, redoc_url=None,
                       description="Cloud-trial workflow orchestrator: every signup becomes a durable trial.")
    app.openapi = partial(docs.document, app)  # type: ignore[method-assign]
    app.state.runtime = rt
    app.signup_limiter = SignupLimiter(rt.settings)
    if rt.engine.dialect.name == "postgresql":
        # As many as there are signup threads: the same bound on concurrent signups per process.
        app.loop_connections = LoopConnections(rt.engine, size=SIGNUP_THREADS)

    install_error_answers(app, rt.settings.max_body_bytes)

    @app.post("/api/signups", status_code=201, tags=["signups"], openapi_extra=docs.json_body(
        SignupRequest, "Who signs up. Unknown fields are refused (422)."), responses=docs.answers({
            201: (SignupAnswer, "A new trial, routed."),
            200: (SignupAnswer, "This email signed up before: the same trial."),
            202: (SignupAnswer, "Routing failed: the signup is kept for support (state received, trial_id null)."),
        }, 400, 413, 422, 429, 503))
    async def create_signup(request: Request):
        """Sign up for a cloud trial: routed and answered in this request."""
        # (TrialflowApp answers POST /api/signups before reaching here; this route is what the
        # OpenAPI document shows, and answers when the app is mounted under a root path.)
        return await signup_response(request.app.state.runtime, request, request.app.loop_connections)

    def _get(rt: Runtime, trial_id: str) -> dict:
        if not TRIAL_ID.fullmatch(trial_id):  # never a query for what cannot be an id (NUL, 10 kB)
            raise NotFound(f"No trial {trial_id[:40]!r}: trial ids look like tr_0123456789abcdef.")
        with rt.session_factory() as session:
            trial = session.get(Trial, trial_id)
            if trial is None:
                raise NotFound(f"No trial {trial_id}.")
            return trial_detail(session, trial)

    @app.get("/api/trials/{trial_id}", tags=["trials"],
             responses=docs.answers({200: (TrialDetail, "The trial.")}, *docs.STAFF, 404, 422))
    def get_trial(trial_id: Annotated[str, Path(json_schema_extra={"pattern": TRIAL_ID.pattern})], rt: RT):
        """One trial with its people, deadlines and full history."""
        return _get(rt, trial_id)

    @app.get("/api/trials", tags=["trials"], responses=docs.answers({200: (TrialList, "The trials.")}, *docs.STAFF, 422))
    def list_trials(rt: RT, state: Annotated[str | None, Query(
                        description="Only trials in this state (empty: any).",
                        json_schema_extra={"enum": ["", *lc.STATES]})] = None,
                    domain: Annotated[str | None, Query(
                        description="Only trials of this domain (any form a signup may use: bücher.example is "
                                    "xn--bcher-kva.example); empty: any.",
                        json_schema_extra={"anyOf": [{"type": "string", "format": "idn-hostname", "pattern": DOMAIN},
                                                     {"type": "string", "maxLength": 0}]})] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0):
        """Trials, newest first, filtered by state and/or domain."""
        if state and state not in lc.STATES:
            return error(422, f"Unknown state {state!r}; states are: {', '.join(lc.STATES)}.", field="state")
        stmt = select(Trial)
        if state:
            stmt = stmt.where(tables.trials.c.state == state)
        if domain:
            # The same normalisation as a signup's, so bücher.example finds xn--bcher-kva.example.
            try:
                wanted = normalize_domain(domain)
            except InvalidSignup as exc:
                return error(422, exc.message, field="domain")
            stmt = stmt.where(tables.trials.c.domain == wanted)
        stmt = stmt.order_by(tables.trials.c.created_at.desc(), tables.trials.c.id).limit(limit).offset(offset)
        with rt.session_factory() as session:
            trials = session.scalars(stmt).all()
            return {"trials": [trial_summary(t) for t in trials], "count": len(trials)}

    @app.get("/healthz", tags=["operations"], responses=docs.answers({200: (Health, "Up, and the database answers.")},
                                                                      503))
    def healthz(rt: RT):
        """Liveness and database reachability."""
        try:
            with rt.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:  # noqa: BLE001
            return error(503, f"database unreachable: {type(exc).__name__}")
        return {"status": "ok"}

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse, responses={
        200: {"description": "Prometheus text exposition format 0.0.4.",
              "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}}, **docs.answers({}, *docs.STAFF)})
    def metrics(rt: RT):
        """Prometheus text exposition."""
        return PlainTextResponse(render(rt), media_type="text/plain; version=0.0.4")

    for module in (slack, github, activity, events, dashboard, docs):
        app.include_router(module.router)
    auth.install(app, rt)
    return app
