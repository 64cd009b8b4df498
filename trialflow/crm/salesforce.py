"""The CRM port on Salesforce's REST API, through simple-salesforce.

Login is OAuth 2.0 JWT bearer: trialflow signs a short assertion (RS256, ``iss`` the connected
app's consumer key, ``sub`` the integration user, ``aud`` the login URL) with the certificate's
private key and POSTs it to ``<login URL>/services/oauth2/token``; no password or security token
exists anywhere. simple-salesforce is then given the session id and instance URL it returned.

Retries are bounded here, not in simple-salesforce: with a login of its own, simple-salesforce
logs in again on every 401 and its sObject calls never stop (a server that keeps answering 401
ends in ``RecursionError``). Given a session id it raises at once, and this module logs in again
ONCE per call; a second 401 right after a fresh login is reported, not looped on.

How answers become errors (the Deliverer retries, parks and alerts from these; ``config load``
prints them):
    token endpoint 400 invalid_grant / invalid_client ... PermanentFailure naming what to fix
    INVALID_SESSION_ID (401) ............................ one fresh login, then RetryLater
    REQUEST_LIMIT_EXCEEDED (403) ........................ RetryLater after REQUEST_LIMIT_BACKOFF seconds
    other 403, 404, 300 (several records match) ......... PermanentFailure
    400 (DUPLICATE_VALUE, INVALID_FIELD, ...) ........... PayloadRefused (the same body would fail again)
    5xx, timeouts, refused connections .................. RetryLater
The access token and the private key never appear in an error, a log line or a result.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import quote, urlsplit

import requests

from trialflow.crm.port import AccountsRead, OpportunityFields, Progress, UpsertedOpportunity
from trialflow.domain.normalize import PUBLIC_EMAIL_DOMAINS, normalize_domain, normalize_email
from trialflow.errors import InvalidSignup, PayloadRefused, PermanentFailure, RetryLater
from trialflow.settings import Settings

if TYPE_CHECKING:
    from simple_salesforce import Salesforce
    from simple_salesforce.api import SFType

log = logging.getLogger("trialflow.crm.salesforce")

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_SECONDS = 180
# The org's API allowance is a rolling 24 hours: asking again in a quarter of an hour is plenty.
REQUEST_LIMIT_BACKOFF = 15 * 60.0
T = TypeVar("T")


class _TimedSession(requests.Session):
    """requests has no default timeout, and simple-salesforce passes none."""

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


@dataclass(frozen=True)
class _Login:
    access_token: str
    instance_url: str


def soql_text(value: str) -> str:
    """A SOQL string literal's inside: backslash and quote escaped."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def field_path(record: dict[str, Any], path: str) -> Any:
    """``Owner.Email`` read from a query record (a relationship arrives as a nested object, or null)."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def domain_of(value: Any) -> str | None:
    """The domain in a Website (``https://www.acme-corp.com/about``) or a plain domain field."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    host = urlsplit(text if "://" in text else "//" + text).hostname or ""
    host = host[4:] if host.startswith("www.") else host
    try:
        return normalize_domain(host)
    except InvalidSignup:
        return None


def _email(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return normalize_email(value).address
    except InvalidSignup:
        return None


class SalesforceCrm:
    name = "Salesforce"

    def __init__(self, settings: Settings, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.session = session or _TimedSession(settings.salesforce_timeout_seconds)
        self.clock = clock
        self._login: _Login | None = None
        self._owners: dict[str, str | None] = {}
        self.logins = 0  # how many token requests this adapter made (the once-only re-login is visible)

    # --- login ---------------------------------------------------------------------------------

    def _assertion(self) -> str:
        import jwt

        s = self.settings
        assert s.salesforce_private_key_file is not None
        try:
            key = Path(s.salesforce_private_key_file).read_bytes()
        except OSError as exc:
            raise PermanentFailure(f"TRIALFLOW_SALESFORCE_PRIVATE_KEY_FILE cannot be read ({exc.strerror})") from None
        audience = s.salesforce_login_url.rstrip("/")
        claims = {"iss": s.salesforce_client_id, "sub": s.salesforce_username, "aud": audience,
                  "exp": int(self.clock()) + ASSERTION_SECONDS}
        try:
            return jwt.encode(claims, key, algorithm="RS256")
        except (ValueError, TypeError) as exc:
            raise PermanentFailure(f"TRIALFLOW_SALESFORCE_PRIVATE_KEY_FILE is not a usable RSA private key "
                                   f"({type(exc).__name__})") from None

    def login(self) -> _Login:
        url = self.settings.salesforce_login_url.rstrip("/") + "/services/oauth2/token"
        self.logins += 1
        try:
            response = self.session.post(url, data={"grant_type": JWT_BEARER, "assertion": self._assertion()})
        except requests.Timeout:
            raise RetryLater("Salesforce's login did not answer in time") from None
        except requests.RequestException as exc:
            raise RetryLater(f"Salesforce's login at {self.settings.salesforce_login_url} is unreachable "
                             f"({type(exc).__name__})") from None
        body = _json(response)
        if response.status_code == 200 and isinstance(body, dict) and body.get("access_token"):
            self._login = _Login(str(body["access_token"]), str(body.get("instance_url") or "").rstrip("/"))
            if not self._login.instance_url.startswith("https://"):
                raise PermanentFailure("Salesforce's login answered without an https instance_url")
            return self._login
        if response.status_code >= 500:
            raise RetryLater(f"Salesforce's login failed for now ({response.status_code})")
        error = body.get("error") if isinstance(body, dict) else None
        said = body.get("error_description") if isinstance(body, dict) else None
        raise PermanentFailure(
            f"Salesforce refused trialflow's login ({response.status_code} {error or 'error'}: {said or '-'}). Check "
            "TRIALFLOW_SALESFORCE_CLIENT_ID (the connected app's consumer key), TRIALFLOW_SALESFORCE_USERNAME (the "
            "integration user, pre-authorized on the app's profile or permission set), that the app holds the "
            "certificate of TRIALFLOW_SALESFORCE_PRIVATE_KEY_FILE, and TRIALFLOW_SALESFORCE_LOGIN_URL")

    def _client(self) -> Salesforce:
        from simple_salesforce import Salesforce

        login = self._login or self.login()
        return Salesforce(session_id=login.access_token, instance_url=login.instance_url, session=self.session,
                          version=self.settings.salesforce_api_version)

    def _call(self, what: str, call: Callable[[Salesforce], T]) -> T:
        """``call`` with a client; an expired session logs in again once, and only once."""
        from simple_salesforce.exceptions import SalesforceExpiredSession

        for attempt in (1, 2):
            client = self._client()
            try:
                return call(client)
            except SalesforceExpiredSession:
                self._login = None
                if attempt == 2:
                    raise RetryLater(f"Salesforce said the session was expired or invalid right after a fresh "
                                     f"login ({what}); trying again later") from None
                log.info("Salesforce session expired; logging in again once")
            except requests.Timeout:
                raise RetryLater(f"Salesforce did not answer in time ({what})") from None
            except requests.RequestException as exc:
                raise RetryLater(f"Salesforce is unreachable ({what}: {type(exc).__name__})") from None
            except Exception as exc:
                raise _translate(what, exc) from None
        raise AssertionError("unreachable")

    # --- accounts in ---------------------------------------------------------------------------

    def account_query(self) -> str:
        s = self.settings
        fields = list(dict.fromkeys(["Id", "Name", s.salesforce_domain_field, s.salesforce_prequalified_field,
                                     s.salesforce_named_field, s.salesforce_named_sdr_field, s.salesforce_ae_field]))
        team = (f"(SELECT User.Email FROM AccountTeamMembers WHERE TeamMemberRole = "
                f"'{soql_text(s.salesforce_ce_team_role)}')")
        return (f"SELECT {', '.join(fields)}, {team} FROM Account WHERE {s.salesforce_prequalified_field} = TRUE "
                f"OR {s.salesforce_named_field} = TRUE ORDER BY Id")

    def accounts(self, progress: Progress | None = None) -> AccountsRead:
        """Every pre-qualified or named account, page after page (``nextRecordsUrl``)."""
        page = self._call("query accounts", lambda sf: sf.query(self.account_query()))
        out = AccountsRead()
        seen: dict[str, str] = {}
        total = int(page.get("totalSize") or 0)
        while True:
            for record in page.get("records") or []:
                out.read += 1
                self._account(record, out, seen)
            if progress:
                progress("Salesforce accounts read", out.read, total)
            next_url = page.get("nextRecordsUrl")
            if page.get("done", True) or not next_url:
                return out
            page = self._call("query accounts (next page)", _next_page(str(next_url)))

    def _account(self, record: dict[str, Any], out: AccountsRead, seen: dict[str, str]) -> None:
        s = self.settings
        name = str(record.get("Name") or "").strip()[:200]
        record_id = str(record.get("Id") or "")
        domain = domain_of(field_path(record, s.salesforce_domain_field))
        if not domain or domain in PUBLIC_EMAIL_DOMAINS:
            out.skipped.append(f"{name or record_id}: no usable domain in {s.salesforce_domain_field}")
            return
        if domain in seen:
            out.skipped.append(f"{name or record_id}: {domain} is already the domain of {seen[domain]}")
            return
        seen[domain] = name or record_id
        named = field_path(record, s.salesforce_named_field) is True
        team = (record.get("AccountTeamMembers") or {}).get("records") or []
        ce = next((e for e in (_email(field_path(m, "User.Email")) for m in team) if e), None)
        out.accounts.append({
            "domain": domain, "account_name": name or domain,
            "prequalified": named or field_path(record, s.salesforce_prequalified_field) is True,
            "named_account": named,
            "named_sdr": _email(field_path(record, s.salesforce_named_sdr_field)),
            "owner_ae": _email(field_path(record, s.salesforce_ae_field)),
            "owner_ce": ce, "auto_add_colleagues": True, "crm_account_id": record_id or None,
        })

    # --- opportunities out ---------------------------------------------------------------------

    def owner_id(self, email: str | None) -> str | None:
        """The active Salesforce user with this email (the AE), or None: the Opportunity keeps its owner."""
        if not email:
            return None
        if email not in self._owners:
            soql = f"SELECT Id FROM User WHERE Email = '{soql_text(email)}' AND IsActive = TRUE LIMIT 1"
            found = self._call("find the owner", lambda sf: sf.query(soql)).get("records") or []
            self._owners[email] = str(found[0]["Id"]) if found else None
        return self._owners[email]

    def opportunity_body(self, fields: OpportunityFields) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {"Name": fields.name[:120], "StageName": fields.stage,
                                "CloseDate": fields.close_date.isoformat()}
        optional: dict[str, Any] = {
            "AccountId": fields.account_id, "OwnerId": self.owner_id(fields.owner_email),
            "LeadSource": fields.lead_source, s.salesforce_instance_url_field: fields.instance_url,
            s.salesforce_trial_end_field: fields.trial_end.isoformat() if fields.trial_end else None,
            s.salesforce_pql_grade_field: fields.pql_grade, s.salesforce_activated_field: fields.activated,
            s.salesforce_loss_reason_field: fields.loss_reason[:255] if fields.loss_reason else None,
        }
        body.update({k: v for k, v in optional.items() if k and v is not None})
        return body

    def upsert_opportunity(self, fields: OpportunityFields) -> UpsertedOpportunity:
        """PATCH by the external id field holding the trial id: created (201) the first time, updated
        (200 ``created: false``) after, so a retry whose first answer was lost updates the same record."""
        external = self.settings.salesforce_trial_id_field
        body = self.opportunity_body(fields)
        key = f"{external}/{quote(fields.trial_id, safe='')}"  # simple-salesforce does not encode it
        response = self._call("upsert the Opportunity",
                              lambda sf: _opportunities(sf).upsert(key, body, raw_response=True))
        answer = _json(response) if response.content else None
        record_id = answer.get("id") if isinstance(answer, dict) else None
        if not record_id:  # 204: an API version before 46.0 answers an update with no body
            found = self._call("read the Opportunity back",
                               lambda sf: _opportunities(sf).get_by_custom_id(external, fields.trial_id))
            record_id = found.get("Id")
        created = response.status_code == 201
        return UpsertedOpportunity(str(record_id) if record_id else None, created, self.record_url(record_id))

    def record_url(self, record_id: str | None) -> str | None:
        if not record_id or self._login is None:
            return None
        return f"{self._login.instance_url}/lightning/r/Opportunity/{record_id}/view"


def _next_page(url: str) -> Callable[[Salesforce], dict[str, Any]]:
    return lambda sf: sf.query_more(url, identifier_is_url=True)


def _opportunities(sf: Salesforce) -> SFType:
    return cast("SFType", sf.Opportunity)


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_code(exc: Any) -> str:
    content = getattr(exc, "content", None)
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("errorCode") or "")
    return ""


def _error_message(exc: Any) -> str:
    content = getattr(exc, "content", None)
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return f"{content[0].get('errorCode')}: {content[0].get('message')}"
    return str(content)[:200]


def _translate(what: str, exc: Exception) -> Exception:
    from simple_salesforce import exceptions as sfx

    if isinstance(exc, (RetryLater, PermanentFailure)):
        return exc
    said = _error_message(exc)
    if isinstance(exc, sfx.SalesforceRefusedRequest):
        if _error_code(exc) == "REQUEST_LIMIT_EXCEEDED":
            return RetryLater(f"Salesforce's API allowance for the org is used up ({what}: {said}); backing off",
                              REQUEST_LIMIT_BACKOFF)
        return PermanentFailure(f"Salesforce refused to {what} (403 {said}): give the integration user that "
                                "permission")
    if isinstance(exc, sfx.SalesforceMoreThanOneRecord):
        return PermanentFailure(f"Salesforce has several records for one trial id ({what}): merge them in Salesforce")
    if isinstance(exc, sfx.SalesforceMalformedRequest):
        return PayloadRefused(f"Salesforce refused what trialflow sent to {what} (400 {said})")
    if isinstance(exc, sfx.SalesforceResourceNotFound):
        return PermanentFailure(f"Salesforce does not know what trialflow asked for ({what}: 404 {said})")
    if isinstance(exc, sfx.SalesforceGeneralError):
        status = int(getattr(exc, "status", 0) or 0)
        if status >= 500 or status in (408, 429):
            return RetryLater(f"Salesforce failed for now ({what}: {status})")
        return PermanentFailure(f"Salesforce refused to {what} ({status} {said})")
    return exc


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str


def check(settings: Settings, session: requests.Session | None = None) -> CheckResult:
    """Read-only: log in and run one query. For ``trialflow doctor``."""
    if not settings.salesforce_configured:
        return CheckResult(True, "not configured: accounts come from accounts.csv, opportunities are kept locally")
    crm = SalesforceCrm(settings, session)
    try:
        crm.login()
        crm._call("query one account", lambda sf: sf.query("SELECT Id FROM Account LIMIT 1"))
    except (RetryLater, PermanentFailure) as exc:
        return CheckResult(False, str(exc))
    assert crm._login is not None
    return CheckResult(True, f"logged in as {settings.salesforce_username} to {crm._login.instance_url}; "
                             "Accounts can be queried")
