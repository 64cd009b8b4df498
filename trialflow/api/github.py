"""GitHub webhooks from the cloud team's repository: verify, de-duplicate, dispatch.

``X-Hub-Signature-256`` is ``sha256=`` + the HMAC-SHA256 of the exact body, keyed with
``TRIALFLOW_GITHUB_WEBHOOK_SECRET``, compared in constant time. ``X-GitHub-Delivery`` is recorded
in the same transaction as what the delivery causes, so a redelivery changes nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
from functools import partial

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from trialflow.api import docs
from trialflow.api.common import RT, error, parse_json, read_body
from trialflow.api.errors import validation_message
from trialflow.api.schemas import DeliveryAnswer
from trialflow.delivery.github import issue_comments
from trialflow.services.github_signals import READ_EVENTS, Delivery, handle_github_delivery

log = logging.getLogger("trialflow.api.github")
router = APIRouter(tags=["github"])

# GitHub caps payloads at 25 MB; issue events with long bodies and comments stay far below this.
GITHUB_MAX_BODY = 1024 * 1024
# What a delivery id can be and still be kept whole (github_deliveries.delivery_id is 64 characters).
_DELIVERY_ID = re.compile(r"[\x21-\x7e]{1,64}")


def github_signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@router.post("/github/webhooks", openapi_extra=docs.json_body(
    Delivery, "GitHub's webhook delivery (content type application/json). Only issues, issue_comment and ping "
              "payloads are read, and only the fields shown; other events are recorded and ignored.",
    parameters=[docs.header("X-GitHub-Event", "The event: issues, issue_comment, ping (others are ignored)."),
                docs.header("X-GitHub-Delivery", "The delivery's GUID; a redelivery changes nothing.",
                            pattern=r"^[!-~]{1,64}$"),
                docs.header("X-Hub-Signature-256", "sha256= and the hex HMAC-SHA256 of the body with the webhook "
                                                   "secret.", pattern=r"^sha256=[0-9a-f]{64}$")]),
    responses=docs.answers({200: (DeliveryAnswer, "Processed, ignored or a duplicate; status says which.")},
                           400, 401, 413, 503))
async def github_webhooks(request: Request, rt: RT):
    """Deliveries from the cloud repository: ``ping``, the "instance ready" signal on instance-request issues, and
    the cloud team's other requests closed or marked ``/done``."""
    secret = rt.settings.github_webhook_secret
    if secret is None:
        return error(503, "GitHub webhooks cannot be verified: TRIALFLOW_GITHUB_WEBHOOK_SECRET is not set. "
                          "Set it to the webhook's secret (repository settings → Webhooks).")
    body = await read_body(request, max(rt.settings.max_body_bytes, GITHUB_MAX_BODY))
    given = request.headers.get("x-hub-signature-256") or ""
    if not hmac.compare_digest(given.encode(), github_signature(secret.get_secret_value().encode(), body).encode()):
        log.warning("refused a GitHub delivery %s: missing or wrong X-Hub-Signature-256",
                    request.headers.get("x-github-delivery"))
        return error(401, "The X-Hub-Signature-256 header is missing or does not match the body.")
    delivery = request.headers.get("x-github-delivery")
    event = request.headers.get("x-github-event") or ""
    if not delivery:
        return error(400, "X-GitHub-Delivery is missing.")
    if not _DELIVERY_ID.fullmatch(delivery):
        return error(400, "X-GitHub-Delivery must be the delivery's id (a GUID, like 72d3162e-cc78-11e3-81ab-4c9367dc0958).")
    document = parse_json(body, "The delivery's body (the webhook's content type must be application/json)")
    if not isinstance(document, dict):
        return error(400, "The delivery's body must be a JSON object.")
    payload = None
    if event in READ_EVENTS:
        try:
            payload = Delivery.model_validate(document)
        except ValidationError as exc:
            message, field = validation_message(exc.errors(), f"The {event} delivery")
            return error(400, message, field=field)
    result = await run_in_threadpool(handle_github_delivery, rt, delivery, event, payload, document,
                                     partial(issue_comments, rt.settings))
    log.info("GitHub %s delivery %s: %s", event, delivery, result.get("status"), extra={"trial_id": result.get("trial_id")})
    return JSONResponse(result)
