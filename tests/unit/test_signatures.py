"""The signatures trialflow checks, against the official test vectors in
../shared/fixtures/signatures.json, plus forged and stale ones."""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from slack_sdk.signature import SignatureVerifier

from trialflow.api.activity import activity_signature
from trialflow.api.github import github_signature
from trialflow.api.slack import _RuntimeClock
from trialflow.clock import ManualClock

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"


@pytest.fixture(scope="module")
def vectors() -> dict[str, dict]:
    return {v["name"]: v for v in json.loads((FIXTURES / "signatures.json").read_text())}


@pytest.fixture(scope="module")
def slack_body() -> bytes:
    return (FIXTURES / "slack" / "slash_command.txt").read_bytes()


def verifier_at(secret: str, when: datetime) -> SignatureVerifier:
    return SignatureVerifier(secret, clock=_RuntimeClock(ManualClock(when)))


def at_epoch(seconds: int | str) -> datetime:
    return datetime.fromtimestamp(int(seconds), UTC)


def test_the_github_vector_signs_to_githubs_documented_value(vectors):
    v = vectors["github_webhook_x_hub_signature_256"]
    assert github_signature(v["secret"].encode(), v["body"].encode()) == v["expected_signature"]


def test_a_github_signature_changes_with_one_byte_of_body_or_secret(vectors):
    v = vectors["github_webhook_x_hub_signature_256"]
    assert github_signature(v["secret"].encode(), b"Hello, World?") != v["expected_signature"]
    assert github_signature(b"It's a Secret to Everybody!", v["body"].encode()) != v["expected_signature"]


def test_the_slack_vector_verifies_when_the_runtime_clock_is_at_its_timestamp(vectors, slack_body):
    v = vectors["slack_request_signing_v0"]
    assert slack_body.decode() == v["body"]
    verifier = verifier_at(v["secret"], at_epoch(v["timestamp"]))
    assert verifier.generate_signature(timestamp=v["timestamp"], body=slack_body) == v["expected_signature"]
    assert verifier.is_valid(slack_body, v["timestamp"], v["expected_signature"])


def test_the_slack_vector_is_refused_once_the_runtime_clock_is_five_minutes_past_it(vectors, slack_body):
    v = vectors["slack_request_signing_v0"]
    assert verifier_at(v["secret"], at_epoch(v["timestamp"]) + timedelta(seconds=300)).is_valid(
        slack_body, v["timestamp"], v["expected_signature"])
    assert not verifier_at(v["secret"], at_epoch(v["timestamp"]) + timedelta(seconds=301)).is_valid(
        slack_body, v["timestamp"], v["expected_signature"])
    assert not verifier_at(v["secret"], at_epoch(v["timestamp"]) - timedelta(seconds=301)).is_valid(
        slack_body, v["timestamp"], v["expected_signature"])


def test_a_forged_slack_request_is_refused(vectors, slack_body):
    v = vectors["slack_request_signing_v0"]
    verifier = verifier_at(v["secret"], at_epoch(v["timestamp"]))
    forged_body = slack_body.replace(b"user_id=U2CERLKJA", b"user_id=U0ADMIN01")
    assert not verifier.is_valid(forged_body, v["timestamp"], v["expected_signature"])
    assert not verifier_at("another-signing-secret", at_epoch(v["timestamp"])).is_valid(
        slack_body, v["timestamp"], v["expected_signature"])
    # Re-stamping an old signature with a fresh timestamp does not make it valid either.
    fresh = str(int(v["timestamp"]) + 1000)
    assert not verifier_at(v["secret"], at_epoch(fresh)).is_valid(slack_body, fresh, v["expected_signature"])


def test_the_activity_signature_covers_the_timestamp_the_host_and_the_body():
    body = b'{"active_users": 3, "searches": 10, "code_intel_actions": 1, "repositories": 4}'
    signed = activity_signature(b"secret", "1767607200", "acme.sourcegraph.com", body)
    recipe = hmac.new(b"secret", b"1767607200.acme.sourcegraph.com." + body, hashlib.sha256).hexdigest()
    assert signed == "sha256=" + recipe
    assert activity_signature(b"secret", "1767607200", "Acme.Sourcegraph.COM", body) == signed
    assert activity_signature(b"secret", "1767607200", "globex.sourcegraph.com", body) != signed
    assert activity_signature(b"secret", "1767607201", "acme.sourcegraph.com", body) != signed
    assert activity_signature(b"secret", "1767607200", "acme.sourcegraph.com", body.replace(b"3", b"4")) != signed
    assert activity_signature(b"other", "1767607200", "acme.sourcegraph.com", body) != signed
