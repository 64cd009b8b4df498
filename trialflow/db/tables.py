"""The schema. Alembic migrations in ``trialflow/migrations`` are generated from, and checked against, this."""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in and out, on SQLite (which stores naive text) as on PostgreSQL."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: trialflow stores UTC-aware datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
IdType = BigInteger().with_variant(Integer(), "sqlite")

trials = Table(
    "trials", metadata,
    Column("id", String(32), primary_key=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("domain", String(253), nullable=False, index=True),
    Column("name", String(200)),
    Column("company", String(200)),
    Column("source", String(100)),
    Column("case", String(32)),
    Column("state", String(32), nullable=False, index=True),
    Column("account_name", String(200)),
    Column("instance_host", String(253), index=True),
    Column("sdr", String(254)),
    Column("ae", String(254)),
    Column("ce", String(254)),
    Column("opportunity_id", String(64)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("kept", Boolean, nullable=False, default=False),
    Column("last_activity_at", UTCDateTime()),
    Column("mql_points", Integer, nullable=False, default=0),
    Column("pql_grade", String(1)),
)

trial_history = Table(
    "trial_history", metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("trial_id", String(32), ForeignKey("trials.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("from_state", String(32), nullable=False),
    Column("to_state", String(32), nullable=False),
    Column("trigger", String(64), nullable=False),
    Column("actor", String(254), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("detail", JSONType, nullable=False, default=dict),
)

accounts = Table(
    "accounts", metadata,
    Column("domain", String(253), primary_key=True),
    Column("account_name", String(200), nullable=False),
    Column("prequalified", Boolean, nullable=False, default=False),
    Column("named_account", Boolean, nullable=False, default=False),
    Column("named_sdr", String(254)),
    Column("owner_ae", String(254)),
    Column("owner_ce", String(254)),
    # Case 1 on a trial instance: a colleague's signup gets them an account (false: their admin is asked).
    Column("auto_add_colleagues", Boolean, nullable=False, default=True, server_default="1"),
    # The account's id in the CRM (Salesforce), when it was read from there: its Opportunities point at it.
    Column("crm_account_id", String(18)),
    # The prospect's lifecycle and onboarding emails (services.prospect_policies); false: none are sent.
    Column("prospect_emails", Boolean, nullable=False, default=True, server_default="1"),
)

staff = Table(
    "staff", metadata,
    Column("email", String(254), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(32), nullable=False, index=True),
    Column("slack_user_id", String(32), index=True),
    Column("github_login", String(64), index=True),
    Column("active", Boolean, nullable=False, default=True),
    # Absences and routing (services.rotation): away through away_until (inclusive), covered by
    # backup; weight is a share of the rotation, max_open_trials a cap (None: no cap).
    Column("away_until", Date),
    Column("backup", String(254)),
    Column("weight", Float, nullable=False, default=1.0, server_default="1"),
    Column("max_open_trials", Integer),
)

instances = Table(
    "instances", metadata,
    Column("host", String(253), primary_key=True),
    Column("admin_email", String(254)),
    Column("status", String(16), nullable=False, index=True),  # pool | live | terminated | moved
    Column("trial_id", String(32)),
    Column("claimed_at", UTCDateTime()),
    # What its admin API last answered (usage polls), and when trialflow last asked.
    Column("api_asked_at", UTCDateTime()),
    Column("api_answered_at", UTCDateTime()),
    # When admin_email was seen signed in: until then a claim is provisional (it may be a squatter's).
    Column("admin_seen_at", UTCDateTime()),
    # Terminated: when the cloud team confirmed the instance is gone. Until then it holds capacity.
    Column("teardown_confirmed_at", UTCDateTime()),
)

# One row per domain that has an instance: inserting the row is how a domain claims a pool
# instance, so two concurrent signups from one fresh domain serialise on its primary key.
domain_claims = Table(
    "domain_claims", metadata,
    Column("domain", String(253), primary_key=True),
    Column("instance_host", String(253)),  # NULL while the claim is being made
    Column("trial_id", String(32)),
    Column("claimed_at", UTCDateTime(), nullable=False),
)

timers = Table(
    "timers", metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("trial_id", String(32), ForeignKey("trials.id", ondelete="CASCADE")),
    Column("kind", String(48), nullable=False),
    Column("due_at", UTCDateTime(), nullable=False),
    Column("fired_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("trial_id", "kind", name="uq_timers_trial_id_kind"),
)
# The sweep only ever reads unfired timers by due time: the partial index keeps that cost
# proportional to what is due, not to everything ever stored.
Index("ix_timers_pending_due", timers.c.due_at,
      postgresql_where=timers.c.fired_at.is_(None), sqlite_where=timers.c.fired_at.is_(None))

outbox = Table(
    "outbox", metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("trial_id", String(32), index=True),
    Column("kind", String(48), nullable=False),
    Column("payload", JSONType, nullable=False),
    Column("status", String(16), nullable=False, default="pending"),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("last_error", Text),
    Column("result", JSONType),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime()),
    # When the Celery relay last sent a task for it: lets the relay re-send lost tasks without
    # flooding the queue with duplicates of tasks that are merely waiting their turn.
    Column("dispatched_at", UTCDateTime()),
    # When the first lease that may have called the provider was taken: a later attempt asks the
    # provider whether that call landed, looking back to here (null: no call can have happened).
    Column("first_attempt_at", UTCDateTime()),
)
Index("ix_outbox_pending", outbox.c.next_attempt_at,
      postgresql_where=outbox.c.status == "pending", sqlite_where=outbox.c.status == "pending")

round_robin = Table(
    "round_robin", metadata,
    Column("role", String(32), primary_key=True),
    Column("position", BigInteger, nullable=False, default=0),
)

# Smooth weighted round robin's running credit per person (services.rotation): kept in the
# database so the rotation is fair across processes and restarts.
rotation_credits = Table(
    "rotation_credits", metadata,
    Column("role", String(32), primary_key=True),
    Column("email", String(254), primary_key=True),
    Column("credit", Float, nullable=False, default=0.0),
)

locks = Table(
    "locks", metadata,
    Column("name", String(64), primary_key=True),
)

failed_signups = Table(
    "failed_signups", metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("body", Text, nullable=False),
    Column("error", Text, nullable=False),
)

kv = Table(
    "kv", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- people acting from Slack and GitHub, instance activity, marketing events -------------

# A GitHub delivery is processed once: X-GitHub-Delivery is the key.
github_deliveries = Table(
    "github_deliveries", metadata,
    Column("delivery_id", String(64), primary_key=True),
    Column("event", String(64), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    # What the delivery says (event, action, comment or issue, and when): a signed body replayed
    # under a fresh X-GitHub-Delivery id is the same content.
    Column("fingerprint", String(64), unique=True),
)

# A Slack request is processed once: Slack retries (X-Slack-Retry-Num) and double clicks map to one key.
slack_requests = Table(
    "slack_requests", metadata,
    Column("key", String(200), primary_key=True),
    Column("received_at", UTCDateTime(), nullable=False),
)

instance_activity = Table(
    "instance_activity", metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("host", String(253), nullable=False, index=True),
    Column("trial_id", String(32), index=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("active_users", Integer, nullable=False, default=0),
    Column("searches", Integer, nullable=False, default=0),
    Column("code_intel_actions", Integer, nullable=False, default=0),
    Column("repositories", Integer, nullable=False, default=0),
    # One report per instance per moment: a replayed (re-signed or retried) report is a no-op.
    UniqueConstraint("host", "at", name="uq_instance_activity_host_at"),
)

# Terminating a trial frees its instance and deletes the domain's claim by host: without this
# index each termination the sweep makes would scan every claim ever made.
Index("ix_domain_claims_instance_host", domain_claims.c.instance_host)

# The cloud team's requests trialflow raised as GitHub issues (termination, trial-extend,
# license-change, domain-change, pool-replenish), from the moment the issue was decided: closing
# the issue or commenting /done completes one; one still open past the SLA is chased once a day.
cloud_requests = Table(
    "cloud_requests", metadata,
    Column("key", String(200), primary_key=True),        # the github.issue effect's idempotency key
    Column("trial_id", String(32), index=True),
    Column("kind", String(32), nullable=False),
    Column("ref", String(200), nullable=False),
    Column("detail", JSONType, nullable=False, default=dict),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("completed_at", UTCDateTime()),
    Column("completed_by", String(64)),
    Column("chased_at", UTCDateTime()),
)
Index("ix_cloud_requests_open", cloud_requests.c.requested_at,
      postgresql_where=cloud_requests.c.completed_at.is_(None), sqlite_where=cloud_requests.c.completed_at.is_(None))

marketing_events = Table(
    "marketing_events", metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("email", String(254), nullable=False, index=True),
    Column("kind", String(48), nullable=False),
    Column("points", Integer, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("trial_id", String(32), index=True),
)

# --- aggregates kept as the data changes, and bounded storage (services.aggregates, services.prune) --

# One row per trial: what the funnel needs to know about it, refreshed in the transaction of each
# of the trial's steps. The funnel reads the rows of its weeks, never ``trials`` or ``trial_history``.
trial_facts = Table(
    "trial_facts", metadata,
    Column("trial_id", String(32), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False, index=True),
    Column("week", String(8), nullable=False),    # its cohort: the ISO week (UTC) it was requested in
    Column("case", String(32)),
    Column("source", String(100)),
    Column("ae", String(254)),
    Column("ce", String(254)),
    Column("reason", String(200)),            # why it was disqualified (the disqualify step's reason)
    Column("state", String(32), nullable=False),
    Column("pql_grade", String(1)),
    Column("started", Boolean, nullable=False, default=False),
    Column("signup_to_start", Float),         # seconds in each funnel step it completed
    Column("triage_to_qualified", Float),
    Column("requested_to_ready", Float),
    Column("ready_to_handed_off", Float),
)

# Trials by (state, PQL grade) as deltas: each step appends +1/-1 rows (no hot row for concurrent
# signups to queue on) and the sweep folds them into one row per pair.
trial_counts = Table(
    "trial_counts", metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("state", String(32), nullable=False),
    Column("pql_grade", String(1)),
    Column("n", BigInteger, nullable=False),
)

# Delivered effects by kind and latency bucket (index into metrics.LATENCY_BUCKETS, len: +Inf),
# appended with the delivery's result and folded by the sweep: the histogram outlives pruning.
delivery_stats = Table(
    "delivery_stats", metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("kind", String(48), nullable=False),
    Column("bucket", Integer, nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("seconds", Float, nullable=False),
)

# Idempotency keys of delivered effects whose rows were pruned: an effect decided again under
# such a key is not inserted, so it cannot be sent twice.
pruned_keys = Table(
    "pruned_keys", metadata,
    Column("key", String(200), primary_key=True),
    Column("delivered_at", UTCDateTime(), nullable=False),
)

# The effects not delivered yet, in id order: `trialflow outbox list` pages them, /metrics counts them
# and finds the oldest (few rows, however many were delivered); pruning finds delivered rows past
# retention by delivery time.
Index("ix_outbox_open", outbox.c.id,
      postgresql_where=outbox.c.status != "delivered", sqlite_where=outbox.c.status != "delivered")
Index("ix_outbox_delivered_at", outbox.c.delivered_at,
      postgresql_where=outbox.c.status == "delivered", sqlite_where=outbox.c.status == "delivered")
# `/trial mine`: a person's open trials (SDR, AE or CE), each column with the state, so the few
# open ones are found without reading every trial that person ever had.
Index("ix_trials_sdr_state", trials.c.sdr, trials.c.state)
Index("ix_trials_ae_state", trials.c.ae, trials.c.state)
Index("ix_trials_ce_state", trials.c.ce, trials.c.state)
