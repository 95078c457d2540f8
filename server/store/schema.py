"""The Postgres schema as SQLAlchemy Core tables: the single source the Alembic migrations and
the model/migration agreement check are compared against."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

metadata = MetaData()

NOW = text("now()")

# Rows of runs, steps and attempts are updated a few times each and then left alone, so these
# tables collect dead tuples at the pace of the work, and the partial indexes the timer loop
# scans (live attempts only) fill with entries of dead ones: measured, 25 ms per lease scan and
# +1.4 ms per step of latency after 12,000 runs. Postgres' default waits for 20% of a table to
# be dead; vacuum them after 2% or 2,000 rows, whichever is more.
HOT_TABLE = {"autovacuum_vacuum_scale_factor": "0.02", "autovacuum_vacuum_threshold": "2000"}

workflows = Table(
    "workflows",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("definition", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    UniqueConstraint("name", "version", name="workflows_name_version_key"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("workflow_id", BigInteger, ForeignKey("workflows.id"), nullable=False),
    Column("workflow_name", Text, nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("trigger", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("context", JSONB, nullable=False),
    Column("error", JSONB),
    Column("idempotency_key", Text),
    Column("payload_hash", Text, nullable=False),
    Column("source_run_id", UUID(as_uuid=True)),
    # A child run: the run (and its step) whose handler started it.
    Column("parent_run_id", UUID(as_uuid=True)),
    Column("parent_step", Text),
    # A run a schedule started: the schedule, the tick's nominal instant, when it actually
    # fired, and how ("tick", "manual", "backfill"). A replay keeps them (it is not the tick's
    # run: the tick's row in schedule_ticks names the one run it started).
    Column("schedule_id", Text),
    Column("schedule_nominal_at", DateTime(timezone=True)),
    Column("schedule_fired_at", DateTime(timezone=True)),
    Column("schedule_origin", String(16)),
    Column("last_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Index(
        "runs_idempotency_key",
        "workflow_name",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    # Keyset pagination, newest first, overall and per workflow / status.
    Index("runs_created", "created_at", "id"),
    Index("runs_workflow_created", "workflow_name", "created_at", "id"),
    Index("runs_status_created", "status", "created_at", "id"),
    Index(
        "runs_parent_created",
        "parent_run_id",
        "created_at",
        "id",
        postgresql_where=text("parent_run_id IS NOT NULL"),
    ),
    Index(
        "runs_schedule_created",
        "schedule_id",
        "created_at",
        "id",
        postgresql_where=text("schedule_id IS NOT NULL"),
    ),
    postgresql_with=HOT_TABLE,
)

steps = Table(
    "steps",
    metadata,
    Column("run_id", UUID(as_uuid=True), ForeignKey("runs.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt_count", Integer, nullable=False, server_default=text("0")),
    Column("output", JSONB),
    Column("error", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("ended_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("run_id", "name", name="steps_pkey"),
    postgresql_with=HOT_TABLE,
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("run_id", UUID(as_uuid=True), ForeignKey("runs.id"), nullable=False),
    Column("step_name", Text, nullable=False),
    Column("number", Integer, nullable=False),
    Column("token", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("queue", Text, nullable=False),
    Column("handler", Text, nullable=False),
    # "task" (published to a worker) or "wait" (a timer the server itself completes).
    Column("kind", String(16), nullable=False, server_default=text("'task'")),
    Column("worker_id", Text),
    Column("output", JSONB),
    Column("error", JSONB),
    Column("progress", JSONB),
    Column("heartbeat_timeout_ms", Integer, nullable=False),
    Column("attempt_timeout_ms", Integer),
    # Set at the claim from attempt_timeout_ms: past it the attempt fails as timed_out.
    Column("deadline_at", DateTime(timezone=True)),
    # The dispatch intent (outbox): due_at is when the attempt may run; kicked_at is when it
    # was last published (NULL: not yet, e.g. a retry waiting for its backoff).
    Column("due_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("kicked_at", DateTime(timezone=True)),
    Column("kick_count", Integer, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("lease_expires_at", DateTime(timezone=True)),
    # Set when the attempt was handed to its worker in the answer to this earlier attempt's
    # result (claimed at once, never published), so a worker resending that result after a
    # lost answer is handed it again.
    Column("handoff_from", UUID(as_uuid=True)),
    # When a progress change, and a decline by a worker without the handler, were last
    # recorded as run events: at most one of each a second per attempt.
    Column("progress_noted_at", DateTime(timezone=True)),
    Column("declined_noted_at", DateTime(timezone=True)),
    UniqueConstraint("run_id", "step_name", "number", name="attempts_run_step_number_key"),
    # Timer and reconciler scans touch only live attempts.
    Index(
        "attempts_timers_due",
        "due_at",
        postgresql_where=text("status = 'scheduled' AND kicked_at IS NULL"),
    ),
    Index(
        "attempts_scheduled_kicked",
        "kicked_at",
        postgresql_where=text("status = 'scheduled' AND kicked_at IS NOT NULL"),
    ),
    Index(
        "attempts_running_lease",
        "lease_expires_at",
        postgresql_where=text("status = 'running'"),
    ),
    # A worker's used slots (ListWorkers, ExplainRun).
    Index(
        "attempts_running_worker",
        "worker_id",
        postgresql_where=text("status = 'running'"),
    ),
    Index(
        "attempts_running_deadline",
        "deadline_at",
        postgresql_where=text("status = 'running' AND deadline_at IS NOT NULL"),
    ),
    postgresql_with=HOT_TABLE,
)

run_events = Table(
    "run_events",
    metadata,
    Column("run_id", UUID(as_uuid=True), ForeignKey("runs.id"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("type", String(32), nullable=False),
    Column("run_status", String(16), nullable=False),
    Column("step_name", Text),
    Column("attempt_number", Integer),
    Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    PrimaryKeyConstraint("run_id", "seq", name="run_events_pkey"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("queues", ARRAY(Text), nullable=False),
    Column("handlers", ARRAY(Text), nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("labels", JSONB, nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("last_seen_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("host", Text, nullable=False, server_default=text("''")),
    # When its attempt stream (to any replica) last opened and closed; live while it is open
    # (connected_at after disconnected_at) and last_seen_at is recent.
    Column("connected_at", DateTime(timezone=True)),
    Column("disconnected_at", DateTime(timezone=True)),
)

# A step that waits for something outside its run: a person (pause, approval), an event
# (wait_event) or a child run (wait_child). Open while resolved_at is NULL; the step's row says
# the rest. Deadlines are timers like any other: any replica's timer loop claims them.
waits = Table(
    "waits",
    metadata,
    Column("run_id", UUID(as_uuid=True), ForeignKey("runs.id"), nullable=False),
    Column("step_name", Text, nullable=False),
    # "pause", "approval", "event" or "child".
    Column("kind", String(16), nullable=False),
    # wait_event: the event name and the rendered correlation key; wait_child: the child's key
    # in correlation_key.
    Column("event_name", Text),
    Column("correlation_key", Text),
    Column("deadline_at", DateTime(timezone=True)),
    # Approvals so far: [{actor, comment, at, payload}].
    Column("votes", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("resolved_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("run_id", "step_name", name="waits_pkey"),
    Index(
        "waits_open_events",
        "event_name",
        "correlation_key",
        postgresql_where=text("resolved_at IS NULL AND kind = 'event'"),
    ),
    Index(
        "waits_open_deadlines",
        "deadline_at",
        postgresql_where=text("resolved_at IS NULL AND deadline_at IS NOT NULL"),
    ),
    Index(
        "waits_open_children",
        "run_id",
        postgresql_where=text("resolved_at IS NULL AND kind = 'child'"),
    ),
)

# Events published with PublishEvent, kept so that a run reaching its wait_event step after
# the publication still finds its event (look-back).
published_events = Table(
    "published_events",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("correlation_key", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("actor", Text, nullable=False, server_default=text("''")),
    Column("published_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    UniqueConstraint("name", "event_id", name="published_events_name_event_id_key"),
    Index("published_events_match", "name", "correlation_key", "published_at"),
)

# Every manual command on a run (cancel, replay, resume, approve, reject, an event that
# resolved a wait), applied or refused: the audit trail, and the record that makes a
# command's idempotency key return its first result. (An event's key is its event id, unique
# per event name: published_events de-duplicates those.)
run_commands = Table(
    "run_commands",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", UUID(as_uuid=True), ForeignKey("runs.id"), nullable=False),
    # "cancel", "replay", "resume", "approve", "reject", "event".
    Column("type", String(16), nullable=False),
    Column("step_name", Text),
    Column("actor", Text, nullable=False, server_default=text("''")),
    Column("comment", Text, nullable=False, server_default=text("''")),
    Column("idempotency_key", Text),
    # Hash of what the command asked (type, step, payload): a key reused for another request
    # is refused.
    Column("request_hash", Text, nullable=False, server_default=text("''")),
    # "applied", "refused" or "duplicate".
    Column("outcome", String(16), nullable=False),
    Column("refusal_reason", Text),
    Column("refusal_message", Text),
    Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Index("run_commands_run_created", "run_id", "created_at", "id"),
    Index(
        "run_commands_idempotency_key",
        "run_id",
        "idempotency_key",
        unique=True,
        postgresql_where=text(
            "idempotency_key IS NOT NULL AND outcome = 'applied' AND type <> 'event'"
        ),
    ),
)

# A cron schedule: a workflow's trigger fired on a spec, from a definition's cron trigger (id
# `<workflow>/<trigger>`, origin "definition") or created through the API (origin "api").
# `next_due_at` is the timer: when its next tick fires (the nominal instant plus the tick's
# deterministic jitter); any replica's timer loop claims due rows with FOR UPDATE SKIP LOCKED.
schedules = Table(
    "schedules",
    metadata,
    Column("id", Text, primary_key=True),
    Column("workflow", Text, nullable=False),
    Column("trigger", Text, nullable=False),
    Column("payload", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # The spec (server.engine.schedule.ScheduleSpec).
    Column("cron_expression", Text, nullable=False),
    Column("time_zone", Text, nullable=False),
    Column("start_at", DateTime(timezone=True)),
    Column("end_at", DateTime(timezone=True)),
    Column("jitter_ms", BigInteger, nullable=False, server_default=text("0")),
    # "run_at_gap_end" or "skip"; "first" or "last".
    Column("skipped_time_policy", String(16), nullable=False),
    Column("repeated_time_policy", String(16), nullable=False),
    # Policies: missed ticks ("skip", "run_latest", "run_all" up to max_catchup_runs) older
    # than the catch-up window, and ticks while the previous run is active ("skip",
    # "buffer_one", "allow_all", "cancel_other").
    Column("catchup_window_ms", BigInteger, nullable=False),
    Column("missed_tick_policy", String(16), nullable=False),
    Column("max_catchup_runs", Integer, nullable=False),
    Column("overlap_policy", String(16), nullable=False),
    # "active", "paused", or "stopped" (a newer version of its workflow dropped the trigger).
    Column("state", String(16), nullable=False),
    Column("pause_note", Text, nullable=False, server_default=text("''")),
    Column("paused_by", Text, nullable=False, server_default=text("''")),
    # "definition" or "api".
    Column("origin", String(16), nullable=False),
    # Incremented by every change: the etag UpdateSchedule checks.
    Column("revision", BigInteger, nullable=False, server_default=text("1")),
    # The next tick: its nominal instant (its identity) and when it fires; NULL when the spec
    # has no tick left (past its end).
    Column("next_nominal_at", DateTime(timezone=True)),
    Column("next_due_at", DateTime(timezone=True)),
    # The nominal instant of the last tick decided (started or not), and the last run a tick
    # started (the overlap policy looks at it).
    Column("last_tick_at", DateTime(timezone=True)),
    Column("last_run_id", UUID(as_uuid=True)),
    # With overlap policy "buffer_one": the nominal instant of the tick held until the last
    # run ends (the timer loop starts it then).
    Column("buffered_nominal_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Index(
        "schedules_buffered",
        "buffered_nominal_at",
        postgresql_where=text("buffered_nominal_at IS NOT NULL"),
    ),
    Index(
        "schedules_due",
        "next_due_at",
        postgresql_where=text("state = 'active' AND next_due_at IS NOT NULL"),
    ),
    Index("schedules_workflow", "workflow", "id"),
)

# Every tick decided, started or not: the row (schedule, nominal instant) is unique and written
# in the transaction that starts the tick's run, so no replica or restart starts a tick twice.
# No foreign key: the history outlives a deleted schedule, so that one created again with the
# same id never decides a tick twice (its run id, derived from the tick, is taken).
schedule_ticks = Table(
    "schedule_ticks",
    metadata,
    Column("schedule_id", Text, nullable=False),
    Column("nominal_at", DateTime(timezone=True), nullable=False),
    Column("fired_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("run_id", UUID(as_uuid=True)),
    # "tick", "manual" or "backfill".
    Column("origin", String(16), nullable=False),
    # "started", "skipped_overlap", "skipped_missed", "skipped_paused" or "failed".
    Column("outcome", String(24), nullable=False),
    Column("reason", Text, nullable=False, server_default=text("''")),
    PrimaryKeyConstraint("schedule_id", "nominal_at", name="schedule_ticks_pkey"),
)
