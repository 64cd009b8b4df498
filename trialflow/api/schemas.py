"""What the API takes and answers, as the OpenAPI document shows it (``/openapi.json``, ``/docs``).

The routes read their bodies themselves (a signature covers the exact bytes; the signup is the
hot path), so these models document rather than parse: ``json_body``/``form_body`` give a route's
``openapi_extra``, ``answers`` its ``responses``. Tests hold the two together: schemathesis sends
what this document describes and checks every answer against it, and the fuzz suites send what it
does not.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel

from trialflow import scoring
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import CASES
from trialflow.services.activity import COUNTERS

# Text a signup field may hold: one line, no markup (trialflow.services.signups refuses the rest).
PLAIN_LINE = r"^[^\x00-\x1f\x7f<>]*$"
TRIAL_ID = r"^tr_[0-9a-f]{16}$"


class ErrorAnswer(BaseModel):
    """Every refusal: a sentence a person can act on, and the field it concerns when there is one."""
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})
    error: str = Field(description="What is wrong and how to put it right.")
    field: str | None = Field(default=None, description="The field, parameter or header concerned.")


# --- signups -----------------------------------------------------------------------------------

class SignupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254, json_schema_extra={"format": "email"},
                       description="The person's work email; its domain decides the route.")
    name: str | None = Field(default=None, max_length=200, pattern=PLAIN_LINE)
    company: str | None = Field(default=None, max_length=200, pattern=PLAIN_LINE)
    source: str | None = Field(default=None, max_length=100, pattern=PLAIN_LINE,
                               description="Where the signup came from (a campaign, a page).")


class SignupAnswer(BaseModel):
    trial_id: str | None = Field(description="null only when the signup was kept for support (state received).")
    case: str | None = Field(json_schema_extra={"enum": [*CASES, None]})
    state: str = Field(description="The trial's state, or received when the signup was kept for support.")
    redirect_url: str | None = Field(description="Where to send the person: their instance's sign-in page.")
    message: str


# --- trials ------------------------------------------------------------------------------------

class Assignees(BaseModel):
    sdr: str | None
    ae: str | None
    ce: str | None


class TrialSummary(BaseModel):
    trial_id: str = Field(pattern=TRIAL_ID)
    email: str
    domain: str
    case: str | None
    state: str = Field(json_schema_extra={"enum": list(lc.STATES)})
    instance_url: str | None
    account_name: str | None
    assignees: Assignees
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    started_at: str | None = Field(json_schema_extra={"format": "date-time"})


class HistoryEntry(BaseModel):
    from_state: str
    to_state: str
    trigger: str
    actor: str = Field(description="A Slack user id, a GitHub login, or system.")
    at: str = Field(json_schema_extra={"format": "date-time"})
    detail: dict[str, Any] | None = Field(default=None, description="What came with the step (a reason, a host).")


class LeadScore(BaseModel):
    mql_points: int
    pql_grade: str | None = Field(json_schema_extra={"enum": ["A", "B", "C", "D", None]})


class TrialDetail(TrialSummary):
    name: str | None
    company: str | None
    source: str | None
    opportunity_id: str | None
    kept: bool | None
    lead_score: LeadScore
    deadlines: dict[str, str] = Field(description="Timer kind → when it is due (ISO-8601).")
    history: list[HistoryEntry]


class TrialList(BaseModel):
    trials: list[TrialSummary]
    count: int


class Health(BaseModel):
    status: str = Field(json_schema_extra={"enum": ["ok"]})


# --- lead scoring ------------------------------------------------------------------------------

class EventRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254, json_schema_extra={"format": "email"})
    kind: str = Field(json_schema_extra={"enum": list(scoring.MQL_POINTS)},
                      description="; ".join(f"{k}: {p} points" for k, p in scoring.MQL_POINTS.items()))
    at: str | None = Field(default=None, json_schema_extra={"format": "date-time"},
                           description="When it happened (default: now); not more than 5 minutes ahead.")


class EventAnswer(BaseModel):
    email: str
    kind: str
    points: int
    at: str = Field(json_schema_extra={"format": "date-time"})
    trial_id: str | None
    mql_points: int
    mql: bool


class RecordedEvent(BaseModel):
    kind: str
    points: int
    at: str = Field(json_schema_extra={"format": "date-time"})
    trial_id: str | None


class EventList(BaseModel):
    email: str
    mql_points: int
    mql: bool
    mql_threshold: int
    events: list[RecordedEvent]


# --- instances ---------------------------------------------------------------------------------

_COUNT: dict[str, JsonValue] = {"type": "integer", "minimum": 0, "maximum": 10**9}


class ActivityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "properties": {**{name: _COUNT for name in COUNTERS},
                       "at": {"type": ["string", "null"], "format": "date-time"}}})
    active_users: int = 0
    searches: int = 0
    code_intel_actions: int = 0
    repositories: int = 0
    at: str | None = None


class ActivityAnswer(BaseModel):
    recorded: bool = Field(description="false: this instance already reported this moment (a replay).")
    duplicate: bool
    host: str
    trial_id: str | None
    active: bool = Field(description="The report shows use (users, searches or code-intel actions).")
    last_activity_at: str | None = Field(json_schema_extra={"format": "date-time"})


# --- Slack and GitHub --------------------------------------------------------------------------

class InteractionForm(BaseModel):
    payload: str = Field(description="The interaction's JSON (a block_actions or view_submission payload), "
                                     "as Slack sends it.", json_schema_extra={"contentMediaType": "application/json"})


class SlashCommandForm(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": {"type": "string"}})
    command: str | None = Field(default=None, description="/trial")
    text: str | None = Field(default=None, description="status <email|domain> · mine · queue · domain <trial|email> "
                                                       "<subdomain> · help")
    user_id: str | None = None
    trigger_id: str | None = None
    response_url: str | None = None


class SlackEvent(BaseModel):
    """Slack's Events API request: a ``url_verification`` challenge, or an ``event_callback`` (trialflow
    reads ``app_home_opened``)."""
    model_config = ConfigDict(extra="allow")
    type: str = Field(json_schema_extra={"examples": ["event_callback", "url_verification"]})
    challenge: str | None = None
    event_id: str | None = None
    event: dict[str, Any] | None = None


class SlackEventAnswer(BaseModel):
    """The challenge, echoed (url_verification); otherwise ``ok``."""
    model_config = ConfigDict(extra="allow")
    challenge: str | None = None
    ok: bool | None = None


class SlackAnswer(BaseModel):
    """An ephemeral message, or a modal's response_action (errors on its fields, or a new view)."""
    model_config = ConfigDict(extra="allow")
    response_type: str | None = None
    text: str | None = None
    response_action: str | None = Field(default=None, json_schema_extra={"enum": ["errors", "update", None]})


class DeliveryAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str = Field(json_schema_extra={"enum": ["pong", "duplicate", "ignored", "needs_url", "refused",
                                                    "instance_ready", "request_done"]})
    reason: str | None = None
    trial_id: str | None = None



# --- growth ------------------------------------------------------------------------------------

class FunnelStep(BaseModel):
    key: str
    label: str


class CohortNumbers(BaseModel):
    week: str = Field(description="ISO week, like 2026-W02 (the total: N weeks).")
    week_start: str = Field(json_schema_extra={"format": "date"})
    requests: int = Field(description="Signups, joiners excluded.")
    joiners: int = Field(description="Colleagues who joined their company's existing instance (never a trial start).")
    starts: int
    start_rate: float | None = Field(description="null: no requests that week.")
    activated: int
    activation_rate: float | None
    converted: int
    conversion_rate: float | None
    median_seconds: dict[str, float | None] = Field(description="Step key → median seconds (null: none completed).")
    completed: dict[str, int]


class FunnelAnswer(BaseModel):
    as_of: str = Field(json_schema_extra={"format": "date-time"})
    weeks: int
    steps: list[FunnelStep]
    cohorts: list[CohortNumbers]
    total: CohortNumbers


class FunnelGroup(FunnelAnswer):
    value: str | None = Field(description="The group's value (null: not set, e.g. no AE assigned).")


class FunnelSplit(BaseModel):
    by: str = Field(description="source, case, ae, ce or reason.")
    groups: list[FunnelGroup]


class FunnelOrSplit(RootModel[FunnelAnswer | FunnelSplit]):
    """The funnel; with ``by``, one funnel per value of it."""
