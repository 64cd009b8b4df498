"""GitHub webhooks from the cloud team's repository: verify, de-duplicate, dispatch.

``X-Hub-Signature-256`` is ``sha256=`` + the HMAC-SHA256 of the exact body, keyed with
``TRIALFLOW_GITHUB_WEBHOOK_SECRET``, compared in constant time. ``X-GitHub-Delivery`` is recorded
in the same transaction as what the delivery causes, so a redelivery changes nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from functools import partial

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from trialflow.api.common import RT, error, read_body
from trialflow.delivery.github import issue_comments
from trialflow.services.github_signals import handle_github_delivery

log = logging.getLogger("trialflow.api.github")
router = APIRouter(tags=["github"])

# GitHub caps payloads at 25 MB; issue events with long bodies and comments stay far below this.
GITHUB_MAX_BODY = 1024 * 1024


def github_signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@router.post("/github/webhooks")
async def github_webhooks(request: Request, rt: RT):
    """Deliveries from the cloud repository: ``ping``, and the "instance ready" signal on instance-request issues."""
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
    try:
        payload = json.loads(body)
    except ValueError:
        return error(400, "The delivery's body is not JSON (set the webhook's content type to application/json).")
    if not isinstance(payload, dict):
        return error(400, "The delivery's body must be a JSON object.")
    result = await run_in_threadpool(handle_github_delivery, rt, delivery, event, payload,
                                     partial(issue_comments, rt.settings))
    log.info("GitHub %s delivery %s: %s", event, delivery, result.get("status"), extra={"trial_id": result.get("trial_id")})
    return JSONResponse(result)
