"""The access-log schema, engines and migrations.

Types are dialect-neutral so the same tables and Alembic revisions serve
SQLite now and PostgreSQL later. Column names avoid SQL reserved words
(`user`, `group`) so IT staff can query the table by hand without quoting.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

# Alembic logs INFO lines (plugin set-up on import, DDL mode) that would land in
# every gateway start's log; schoolgate says what changed itself.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402

from schoolgate import commaset  # noqa: E402

log = logging.getLogger("schoolgate.db")

# How long an SQLite connection waits for another's write lock before failing.
# The record writer retries failed batches itself, so this only smooths over
# short contention (a report query checkpointing, a second gateway process).
BUSY_TIMEOUT_MS = 5000
# The record writer's connections wait less: it retries by itself, and a call stuck in
# SQLite's thread cannot be cancelled, so a short wait keeps its shutdown bounded.
WRITER_BUSY_TIMEOUT_MS = 1000
# The record writer's page cache (SQLite's default is 2 MiB): thousands of inserts a second touch
# pages all over access_log's nine indexes, and re-reading them costs about 15 % more CPU per record.
WRITER_CACHE_KIB = 64 * 1024


class CommaSet(TypeDecorator[tuple[str, ...]]):
    """Names (categories, groups) stored as ",a,b," ("" when none), so `LIKE '%,a,%'` finds a
    member on every backend; tuples in and out. A str is bound as it is: a LIKE pattern."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: tuple[str, ...] | str | None, dialect: Dialect) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return commaset.encode(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> tuple[str, ...] | None:
        return None if value is None else commaset.decode(value)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the backend keeps.

    SQLite has no time zones and hands back naive values; PostgreSQL converts
    to the session zone. Normalising here keeps comparisons and output right on both."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; access records need aware UTC times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT on PostgreSQL; SQLite only auto-increments a column declared INTEGER.
_BIG_ID = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

# On PostgreSQL (0008_partitions) partitioned by UTC day, with primary key (id, ts): schoolgate.partitioning.
access_log = Table(
    "access_log",
    metadata,
    Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    Column("ts", UtcDateTime(), nullable=False),
    Column("instance", String(), nullable=False),  # which gateway process wrote it
    Column("seq", BigInteger(), nullable=False),  # per-instance order; a gap means a lost record
    Column("client_ip", String(), nullable=False),
    Column("username", String()),
    Column("group_name", String(), nullable=False),
    Column("method", String(), nullable=False),
    Column("scheme", String(), nullable=False),
    Column("host", String(), nullable=False),
    Column("port", Integer()),
    Column("url", Text()),  # full, path-less or NULL, as the policy's log_urls says
    Column("categories", Text(), nullable=False),  # ",news,games," so LIKE '%,games,%' works everywhere
    Column("verdict", String(), nullable=False),
    Column("rule", Text(), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("status", Integer()),
    Column("bytes_in", BigInteger()),
    Column("bytes_out", BigInteger()),
    Column("ref", String()),
    Column("decision_us", Integer()),
    Column("search_engine", String()),
    Column("search_term", Text()),
    Column("flag", String()),
    Column("flag_severity", Integer()),
    Column("flag_detail", Text()),
    Column("url_cut", Boolean()),  # the URL was longer than is kept and was cut (0005_front)
    Column("duration_ms", BigInteger()),  # how long the request or connection lasted (0005_front)
    Column("identity_source", String()),  # how the user or group was known (0005_identity)
    Index("ix_access_log_ts", "ts"),
    Index("ix_access_log_username_ts", "username", "ts"),
    Index("ix_access_log_client_ip_ts", "client_ip", "ts"),
    # Not unique: references are 40 random bits shown on the block page, so a
    # school with a million blocks will see a repeat; a unique index would turn
    # that into a record the writer can never store. Lookups list every match.
    # Only the records that have one (blocks and warnings, a few %): the others cost
    # the writer and the purge nothing here (0008_queries).
    Index("ix_access_log_ref", "ref", sqlite_where=text("ref IS NOT NULL"), postgresql_where=text("ref IS NOT NULL")),
    Index("ix_access_log_verdict_ts", "verdict", "ts"),
    Index("ix_access_log_instance_seq", "instance", "seq"),
    # The flagged records alone (about 1 %), by time: reports read them without scanning the table (0007_volume).
    Index("ix_access_log_flagged_ts", "ts", sqlite_where=text("flag_severity IS NOT NULL"),
          postgresql_where=text("flag_severity IS NOT NULL")),
    Index("ix_access_log_group_name_ts", "group_name", "ts"),  # the console's log search by group (0007_itconsole)
)


# Which user is on which device address, as the sign-in page or a Wi-Fi controller said
# (0005_identity): shared by every gateway process, so any worker knows a signed-in device.
address_sessions = Table(
    "address_sessions",
    metadata,
    Column("address", String(), primary_key=True),
    Column("username", String(), nullable=False),
    Column("source", String(), nullable=False),  # portal | accounting
    Column("groups", CommaSet(), nullable=False),  # directory groups from the sign-in
    Column("origin", String(), nullable=False),  # "portal" or the Wi-Fi controller's address
    Column("expires_at", UtcDateTime(), nullable=False),  # an ended session expires at once, so others see it end
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_address_sessions_updated_at", "updated_at"),
)


# --- live policy: what IT staff and teachers change while the gateway runs -------

exceptions = Table(
    "exceptions",
    metadata,
    Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    Column("kind", String(), nullable=False),  # domain | url | category
    Column("host", String()),  # canonical host for domain/url exceptions
    Column("path", String()),  # URL prefix for url exceptions
    Column("category", String()),  # for category exceptions
    Column("scope_kind", String(), nullable=False),  # group | users | network | user
    Column("scope", Text(), nullable=False),  # group name, ",a,b," user list, CIDR, or a user
    Column("starts_at", UtcDateTime(), nullable=False),
    Column("ends_at", UtcDateTime(), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("granted_by", String(), nullable=False),
    Column("granted_role", String(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime()),
    Column("revoked_by", String()),
    Column("request_id", BigInteger()),
    Column("scope_label", String()),  # "class 9X", "room lab-2": the scope as chosen
    Index("ix_exceptions_ends_at", "ends_at"),
)

# Class lists (`schoolgate classes import`): a class's exception covers its members at grant time.
class_members = Table(
    "class_members",
    metadata,
    Column("class_name", String(), primary_key=True),
    Column("username", String(), primary_key=True),
    Column("source", String(), nullable=False),  # the file it was imported from
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_class_members_username", "username"),
)

list_entries = Table(
    "list_entries",
    metadata,
    Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    Column("action", String(), nullable=False),  # allow | block
    Column("entry", String(), nullable=False),  # as written by IT staff
    Column("host", String(), nullable=False),
    Column("path", String(), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("added_by", String(), nullable=False),
    Column("added_at", UtcDateTime(), nullable=False),
    Column("removed_at", UtcDateTime()),
    Column("removed_by", String()),
)

access_requests = Table(
    "access_requests",
    metadata,
    Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    Column("ref", String()),  # the block page's reference
    Column("created_at", UtcDateTime(), nullable=False),
    Column("client_ip", String(), nullable=False),
    Column("username", String()),
    Column("group_name", String(), nullable=False),
    Column("url", Text(), nullable=False),
    Column("host", String(), nullable=False),
    Column("categories", CommaSet(), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("status", String(), nullable=False),  # pending | approved | refused
    Column("decided_by", String()),
    Column("decided_role", String()),
    Column("decided_at", UtcDateTime()),
    Column("note", Text()),
    Column("exception_id", BigInteger()),
    Index("ix_access_requests_status", "status", "created_at"),
)

# Append-only: the migration adds triggers that refuse UPDATE and DELETE.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    Column("ts", UtcDateTime(), nullable=False),
    Column("actor", String(), nullable=False),
    Column("role", String(), nullable=False),
    Column("action", String(), nullable=False),  # e.g. exception.grant, request.approve, list.add
    Column("object_kind", String(), nullable=False),
    Column("object_id", BigInteger()),
    Column("before", Text()),  # JSON
    Column("after", Text()),  # JSON
    Index("ix_audit_log_ts", "ts"),
    Index("ix_audit_log_object_kind_ts", "object_kind", "ts"),  # e.g. the managed lists' history (0007_itconsole)
)

# One row; bumped by every change above, so gateways poll one integer, not the tables.
live_version = Table(
    "live_version",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("version", BigInteger(), nullable=False),
)

# --- the period report's per-day summaries (0007_reports): counts only, no identities ---

report_days = Table(
    "report_days",
    metadata,
    Column("day", UtcDateTime(), primary_key=True),  # the UTC day's midnight
    Column("records", BigInteger(), nullable=False),  # access_log rows that day when folded; a change refolds it
    Column("folded_at", UtcDateTime(), nullable=False),
)

report_day_totals = Table(
    "report_day_totals",
    metadata,
    Column("day", UtcDateTime(), nullable=False),
    Column("group_name", String(), nullable=False),
    Column("verdict", String(), nullable=False),
    Column("categories", Text(), nullable=False),
    Column("flag_severity", Integer()),
    Column("flag", String()),
    Column("requests", BigInteger(), nullable=False),
    Column("bytes", BigInteger(), nullable=False),
    Index("ix_report_day_totals_day", "day"),
)

report_day_sites = Table(
    "report_day_sites",
    metadata,
    Column("day", UtcDateTime(), nullable=False),
    Column("host", String(), nullable=False),
    Column("blocked", Boolean(), nullable=False),
    Column("requests", BigInteger(), nullable=False),
    Column("bytes", BigInteger(), nullable=False),
    Index("ix_report_day_sites_day", "day"),
)

# --- review console (reports/console): accounts, incidents, login throttling, sessions ---

console_accounts = Table(
    "console_accounts",
    metadata,
    Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    Column("username", String(), nullable=False, unique=True),
    Column("role", String(), nullable=False),  # dsl | it_admin | teacher
    Column("password_hash", String(), nullable=False),  # argon2id, PHC string
    Column("groups", CommaSet(), nullable=False),  # groups a teacher may grant exceptions for
    Column("created_at", UtcDateTime(), nullable=False),
    Column("disabled_at", UtcDateTime()),
)

# One per episode (schoolgate.episodes): a pupil's flagged attempts on one risk, created
# by the record writer in the transaction that stores them (0007_queue).
# No foreign key: access records are purged on their own schedule (reports.retention).
incidents = Table(
    "incidents",
    metadata,
    Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    Column("record_id", BigInteger(), nullable=False, unique=True),  # the first attempt at the worst severity
    Column("ref", String()),  # that record's block-page reference
    Column("status", String(), nullable=False),  # new | reviewing | closed | escalated
    Column("assigned", String()),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("updated_by", String()),
    Column("reminded_at", UtcDateTime()),  # the last reminder that it is still new (0007_itconsole)
    Column("reminders_sent", Integer()),
    # The first time a DSL opened or changed it: time to first review is this less first_seen.
    Column("first_reviewed_at", UtcDateTime()),
    Column("first_reviewed_by", String()),
    Column("subject_kind", String(), nullable=False),  # user | device (nobody signed in: the client address)
    Column("subject", String(), nullable=False),
    Column("flag", String(), nullable=False),
    Column("severity", Integer(), nullable=False),  # the worst seen
    Column("first_seen", UtcDateTime(), nullable=False),
    Column("last_seen", UtcDateTime(), nullable=False),
    Column("attempts", Integer(), nullable=False),
    # The shown record's group and address, so the queue filters on them without reading
    # a record per incident (0008_queries; kept by schoolgate.records.copy_shown_record).
    Column("group_name", String()),
    Column("client_ip", String()),
    # The queue of one status (or the open ones) worst first, from the index alone (0008_queries).
    Index("ix_incidents_status_severity_last_seen", "status", "severity", "last_seen"),
    Index("ix_incidents_severity_last_seen", "severity", "last_seen"),  # the queue, worst first
    Index("ix_incidents_subject_flag_last_seen", "subject", "flag", "last_seen"),  # the open episode to extend
)

# Which access records are an incident's attempts.
incident_records = Table(
    "incident_records",
    metadata,
    Column("incident_id", BigInteger(), primary_key=True),
    Column("record_id", BigInteger(), primary_key=True),
    Index("ix_incident_records_record_id", "record_id"),
)

incident_notes = Table(
    "incident_notes",
    metadata,
    Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    Column("incident_id", BigInteger(), nullable=False),
    Column("author", String(), nullable=False),
    Column("ts", UtcDateTime(), nullable=False),
    Column("text", Text(), nullable=False),
    Column("status_from", String()),
    Column("status_to", String()),  # set when the note went with a status change
    Index("ix_incident_notes_incident_id", "incident_id"),
)

# What a DSL did about an incident, from fixed categories (reports/outcomes.py), each with the
# day it happened; purged with the incident.
incident_outcomes = Table(
    "incident_outcomes",
    metadata,
    Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    Column("incident_id", BigInteger(), nullable=False),
    Column("outcome", String(), nullable=False),  # no-concern | spoke-to-pupil | parents-contacted | ...
    Column("outcome_date", Date(), nullable=False),
    Column("note", Text(), nullable=False),
    Column("author", String(), nullable=False),
    Column("ts", UtcDateTime(), nullable=False),
    Index("ix_incident_outcomes_incident_id", "incident_id"),
)

# A DSL's notes on a pupil (not on one incident), and the pupils a DSL watches.
pupil_notes = Table(
    "pupil_notes",
    metadata,
    Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    Column("username", String(), nullable=False),
    Column("author", String(), nullable=False),
    Column("ts", UtcDateTime(), nullable=False),
    Column("text", Text(), nullable=False),
    Index("ix_pupil_notes_username", "username"),
)

# A pupil's year group and form as the directory last gave them (`[directory] year_attribute`,
# `form_attribute`), written by the gateway when it looks a user up.
pupil_directory = Table(
    "pupil_directory",
    metadata,
    Column("username", String(), primary_key=True),
    Column("year_group", String()),
    Column("form", String()),
    Column("updated_at", UtcDateTime(), nullable=False),
)

watch_list = Table(
    "watch_list",
    metadata,
    Column("username", String(), primary_key=True),
    Column("reason", Text(), nullable=False),
    Column("added_by", String(), nullable=False),
    Column("added_at", UtcDateTime(), nullable=False),
)

login_attempts = Table(
    "login_attempts",
    metadata,
    Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    Column("ts", UtcDateTime(), nullable=False),
    Column("username", String(), nullable=False),
    Column("client_ip", String(), nullable=False),
    Column("succeeded", Integer(), nullable=False),  # 0 | 1
    Index("ix_login_attempts_username_ts", "username", "ts"),
    Index("ix_login_attempts_client_ip_ts", "client_ip", "ts"),
)

# Server-side sessions, so logging out, disabling an account and the idle timeout
# end a session for good; the signed cookie carries only the token.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(), primary_key=True),  # sha256 of the cookie's token
    Column("username", String(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_seen", UtcDateTime(), nullable=False),
    Column("ended_at", UtcDateTime()),
)


def is_sqlite(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "sqlite"


# How long connecting to PostgreSQL may take: a paused or unreachable server is an error, not a wait.
CONNECT_TIMEOUT_SECONDS = 5.0


def create_engine(database_url: str, *, statement_timeout: float | None = None) -> AsyncEngine:
    """An async engine; SQLite connections get WAL, synchronous=NORMAL and a busy timeout.

    With `statement_timeout` (the record writer's deadline), PostgreSQL statements
    time out after it and SQLite waits at most WRITER_BUSY_TIMEOUT_MS for a lock, so
    no call outlives the writer's deadline (and gets a page cache of WRITER_CACHE_KIB and
    synchronous=FULL).
    PostgreSQL connections time out after CONNECT_TIMEOUT_SECONDS."""
    connect_args: dict[str, Any] = {}
    if make_url(database_url).get_backend_name() == "postgresql":
        connect_args["timeout"] = CONNECT_TIMEOUT_SECONDS
        # No JIT: access_log has a partition a day (0008_partitions), which makes plans look costly enough
        # to compile, and compiling each partition's expressions took 0.5 s of a 60 ms console query.
        connect_args["server_settings"] = {"jit": "off"}
        if statement_timeout is not None:
            connect_args["command_timeout"] = statement_timeout
    engine = create_async_engine(database_url, connect_args=connect_args)
    if is_sqlite(database_url):
        _make_private(make_url(database_url).database)
        writer = statement_timeout is not None
        event.listen(engine.sync_engine, "connect",
                     lambda connection, record: _sqlite_pragmas(connection, record, writer=writer))
    return engine


def _make_private(database: str | None) -> None:
    """Access records are personal data: the SQLite file is 0600 in a 0700 directory it
    creates, whatever the umask (SQLite gives its -wal and -shm files the same mode)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Never open() and close() an existing database file: closing any descriptor of it drops
    # every POSIX lock this process holds on it (SQLite's own connections included).
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
            log.warning("%s was readable by other users; now 0600 (it holds pupils' access records)", path)
    for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if companion.exists() and companion.stat().st_mode & 0o077:
            companion.chmod(0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, *, writer: bool = False) -> None:
    # WAL lets reports read while the gateway writes; NORMAL is durable across
    # application crashes and only risks the last commits on power loss.
    cursor = dbapi_connection.cursor()
    busy_ms = min(BUSY_TIMEOUT_MS, WRITER_BUSY_TIMEOUT_MS) if writer else BUSY_TIMEOUT_MS
    cursor.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    if writer:
        cursor.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        # The writer empties its journal once a commit returns, so the commit must outlive a power cut
        # too (NORMAL syncs the WAL only at checkpoints). One fsync per transaction of up to thousands
        # of records: no difference measured in CPU or time per record.
        cursor.execute("PRAGMA synchronous = FULL")
    cursor.close()


def alembic_config() -> Config:
    migrations = files("schoolgate.migrations")
    config = Config(str(migrations / "alembic.ini"))
    config.set_main_option("script_location", str(migrations))
    return config


async def dispose_within(engine: AsyncEngine, seconds: float = 1.0) -> None:
    """Release an engine's connections, but never wait long for a hung database
    (asyncpg closes gracefully, without a deadline, and a frozen server never answers)."""
    disposal = asyncio.create_task(engine.dispose())
    done, _ = await asyncio.wait({disposal}, timeout=seconds)
    if not done:
        disposal.cancel()


# Databases this process has brought up to date: the add-ons that need the schema each
# ask at start, and only the first asks the database.
_upgraded: set[str] = set()


async def upgrade(database_url: str) -> None:
    """Bring the schema to the latest revision; safe to run on every start."""
    if database_url in _upgraded:
        return
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade_head)
    finally:
        await engine.dispose()
    _upgraded.add(database_url)


# Any fixed number; PostgreSQL advisory locks are named by integers.
_MIGRATION_LOCK_KEY = 0x5C0016A7E


def _upgrade_head(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Gateways starting together would race to create the same tables: one
        # migrates while the others wait here, then find nothing left to do.
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
    config = alembic_config()
    config.attributes["connection"] = connection
    context = MigrationContext.configure(connection)
    # A database from before 0006 may carry both 0005 revisions at once.
    before = ",".join(context.get_current_heads())
    command.upgrade(config, "head")
    after = MigrationContext.configure(connection).get_current_revision()
    if after != before:
        log.info("database schema upgraded from %s to %s", before or "empty", after)
