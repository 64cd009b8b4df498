"""Slack's requests: verify the signature, translate, dispatch, answer within Slack's 3 seconds.

The signature is checked with slack_sdk's ``SignatureVerifier`` against the runtime's clock, so
a request older than 5 minutes is refused (a replay) whatever the machine's wall clock says in a
test. Nothing is read from the payload before the signature holds.
"""
from __future__ import annotations

import logging

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from slack_sdk.signature import Clock, SignatureVerifier

from trialflow.api import docs
from trialflow.api.common import RT, error, parse_form, parse_json, read_body
from trialflow.api.errors import document_as
from trialflow.api.schemas import InteractionForm, SlackAnswer, SlackEvent, SlackEventAnswer, SlashCommandForm
from trialflow.delivery.slack import slack_web
from trialflow.services.app_home import home_opened
from trialflow.services.slack_commands import handle_slash_command
from trialflow.services.slack_interactions import handle_interaction
from trialflow.services.slack_payloads import Interaction

log = logging.getLogger("trialflow.api.slack")
router = APIRouter(tags=["slack"])

# Interaction payloads carry the whole message or view they came from (blocks and all).
SLACK_MAX_BODY = 512 * 1024


class _RuntimeClock(Clock):
    """slack_sdk's clock interface (epoch seconds) over trialflow's injected clock."""

    def __init__(self, clock):
        self._clock = clock

    def now(self) -> float:
        return self._clock.now().timestamp()


async def verified_body(request: Request, rt) -> bytes | JSONResponse:
    secret = rt.settings.slack_signing_secret
    if secret is None:
        return error(503, "Slack requests cannot be verified: TRIALFLOW_SLACK_SIGNING_SECRET is not set. "
                          "Set it to the app's signing secret (Slack app settings → Basic Information).")
    body = await read_body(request, max(rt.settings.max_body_bytes, SLACK_MAX_BODY))
    verifier = SignatureVerifier(secret.get_secret_value(), clock=_RuntimeClock(rt.clock))
    try:
        valid = verifier.is_valid_request(body, dict(request.headers))
    # A timestamp that is not a number, a body that is not text; TypeError: hmac refuses to
    # compare a signature header holding non-ASCII characters.
    except (ValueError, UnicodeDecodeError, TypeError):
        valid = False
    if not valid:
        log.warning("refused a Slack request to %s: missing, wrong or stale signature", request.url.path)
        return error(401, "The Slack signature is missing, wrong, or older than 5 minutes.")
    retry = request.headers.get("x-slack-retry-num")
    if retry:
        log.info("Slack retry #%s (%s) of a request to %s", retry, request.headers.get("x-slack-retry-reason"),
                 request.url.path)
    return body


SIGNED = [docs.header("X-Slack-Request-Timestamp", "When Slack sent the request (Unix seconds); more than "
                                                      "5 minutes away from now is refused.", pattern=r"^[0-9]+$"),
          docs.header("X-Slack-Signature", "v0= and the hex HMAC-SHA256 of v0:<timestamp>:<body> with the app's "
                                              "signing secret.", pattern=r"^v0=[0-9a-f]{64}$")]


@router.post("/slack/interactions", openapi_extra=docs.form_body(
    InteractionForm, "Slack's interaction request: a form whose payload field holds the JSON.", parameters=SIGNED),
    responses=docs.answers({200: (SlackAnswer, "Handled: an empty body (a modal closes), a modal's response_action, "
                                               "or an ephemeral message.")}, 400, 401, 413, 503))
async def slack_interactions(request: Request, rt: RT, background: BackgroundTasks):
    """Slack buttons and modal submissions (form field ``payload``, signed by Slack)."""
    body = await verified_body(request, rt)
    if isinstance(body, Response):
        return body
    raw = parse_form(body).get("payload")
    if not raw:
        return error(400, "Expected a form field 'payload' holding the interaction's JSON.")
    payload = document_as(Interaction, parse_json(raw.encode(), "The interaction payload"), "The interaction payload")
    if isinstance(payload, Response):
        return payload
    web = slack_web(rt.settings)
    reply = await run_in_threadpool(handle_interaction, rt, payload, web)
    if reply.notify and reply.response_url:
        background.add_task(web.respond, reply.response_url, reply.notify)
    if reply.body is None:
        return Response(status_code=200)
    return JSONResponse(reply.body)


@router.post("/slack/commands", openapi_extra=docs.form_body(
    SlashCommandForm, "Slack's slash-command request (the form Slack posts for /trial).", parameters=SIGNED),
    responses=docs.answers({200: (SlackAnswer, "The ephemeral answer.")}, 400, 401, 413, 503))
async def slack_commands(request: Request, rt: RT):
    """The ``/trial`` slash command: status, mine, queue, domain, help (answers are ephemeral)."""
    body = await verified_body(request, rt)
    if isinstance(body, Response):
        return body
    form = parse_form(body)
    answer = await run_in_threadpool(handle_slash_command, rt, form)
    return JSONResponse(answer)


@router.post("/slack/events", openapi_extra=docs.json_body(
    SlackEvent, "Slack's Events API request (subscribe the app to app_home_opened).", parameters=SIGNED),
    responses=docs.answers({200: (SlackEventAnswer, "The challenge echoed, or ok: the event is taken (or ignored).")},
                           400, 401, 413, 503))
async def slack_events(request: Request, rt: RT):
    """Slack events: the URL check, and ``app_home_opened`` (the person's Home tab is published)."""
    body = await verified_body(request, rt)
    if isinstance(body, Response):
        return body
    payload = document_as(SlackEvent, parse_json(body, "The Slack event"), "The Slack event")
    if isinstance(payload, Response):
        return payload
    if payload.type == "url_verification":
        return JSONResponse({"challenge": payload.challenge or ""})
    event = payload.event or {}
    if payload.type == "event_callback" and event.get("type") == "app_home_opened" and event.get("tab", "home") == "home":
        user = event.get("user")
        if isinstance(user, str) and user:
            await run_in_threadpool(home_opened, rt, user, payload.event_id or f"{user}:{event.get('event_ts')}")
    return JSONResponse({"ok": True})
