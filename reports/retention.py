"""Retention: personal data is deleted when the policy's [retention] says so.

- access records older than `records_days`, except flagged ones;
- flagged records older than `flagged_days`, with their incidents, notes and outcomes
  (a safeguarding file is kept longer, but not for ever); a record of the
  illegal-content tier (rule `illegal`) is always kept that long, flagged or not;
  notes on pupils are kept as long as flagged records;
- access requests and console login attempts older than `records_days`;
- console sessions that have ended or gone idle.

Access records go in short transactions of a few thousand rows, oldest first,
so the gateway's record writer is never held up for long and SQLite's WAL stays
small (checkpointed between batches, truncated at the end). On PostgreSQL, whose
access_log is partitioned by UTC day (schoolgate.partitioning), a day wholly past
`records_days` goes as one partition: its flagged and illegal-tier records move to a
new partition of that day first, and the day the cut-off falls in is deleted row by
row up to the cut-off, so what is kept is exactly what SQLite keeps.

The audit trail is not purged: it is append-only (the database refuses DELETE)
and records who did what, not what pupils browsed. Each purge writes one audit
row and one log line with the counts, never any identity.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, delete, func, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Delete

from schoolgate.db import (
    access_log,
    access_requests,
    console_sessions,
    incident_notes,
    incident_outcomes,
    incident_records,
    incidents,
    login_attempts,
    pupil_directory,
    pupil_notes,
)
from schoolgate.live import record_audit
from schoolgate.partitioning import drop_expired, partitioned, prepare
from schoolgate.partitions import bounds, day_of
from schoolgate.policy import Policy

log = logging.getLogger("schoolgate.retention")

SESSION_KEEP = timedelta(days=1)  # ended or idle sessions are only kept to explain a recent sign-out
PURGE_EVERY = timedelta(days=1)


# Rows deleted per transaction: each holds SQLite's write lock for a fraction of a second
# (the gateway's writer waits at most that long), and the WAL stays tens of megabytes.
BATCH_ROWS = 2000
# SQLite's page cache for a batch (KiB): a batch dirties pages of every index, and a
# smaller cache would spill them to the WAL mid-transaction, again and again.
BATCH_CACHE_KIB = 65536


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    records: int
    flagged_records: int
    incidents: int
    incident_notes: int
    incident_outcomes: int
    incident_records: int
    pupil_notes: int
    pupil_directory: int
    access_requests: int
    login_attempts: int
    sessions: int


async def purge(engine: AsyncEngine, policy: Policy, *, dry_run: bool = False,
                now: datetime | None = None, batch_rows: int = BATCH_ROWS) -> PurgeCounts:
    """Delete (or, with dry_run, count) what is past its retention.

    Access records go oldest first in transactions of `batch_rows`, each with its
    incidents and their notes, so the gateway's writer never waits long for the
    database; a purge cut short leaves only whole batches done, and the next run
    carries on. The small tables and the audit row go in one last transaction."""
    now = now or datetime.now(UTC)
    records_before = now - timedelta(days=policy.retention.records_days)
    flagged_before = now - timedelta(days=policy.retention.flagged_days)
    c = access_log.c
    kept_long = _kept_long(c)
    expired_flagged = and_(kept_long, c.ts < flagged_before)
    expired_records = and_(not_(kept_long), c.ts < records_before)
    others: list[tuple[str, Delete]] = [
        ("pupil_notes", delete(pupil_notes).where(pupil_notes.c.ts < flagged_before)),
        # Year groups and forms of pupils the directory has not been asked about for a while.
        ("pupil_directory", delete(pupil_directory).where(pupil_directory.c.updated_at < records_before)),
        ("access_requests", delete(access_requests).where(access_requests.c.created_at < records_before)),
        ("login_attempts", delete(login_attempts).where(login_attempts.c.ts < records_before)),
        ("sessions", delete(console_sessions).where(console_sessions.c.last_seen < now - SESSION_KEEP)),
    ]
    counted: dict[str, int] = {}
    if dry_run:
        async with engine.connect() as conn:
            expired_incidents = select(incidents.c.id).where(incidents.c.record_id.in_(select(c.id).where(expired_flagged)))
            counted["incident_notes"] = await _count(conn, incident_notes, incident_notes.c.incident_id.in_(expired_incidents))
            counted["incident_outcomes"] = await _count(conn, incident_outcomes,
                                                        incident_outcomes.c.incident_id.in_(expired_incidents))
            counted["incident_records"] = await _count(conn, incident_records,
                                                       incident_records.c.incident_id.in_(expired_incidents))
            counted["incidents"] = await _count(conn, incidents, incidents.c.id.in_(expired_incidents))
            counted["flagged_records"] = await _count(conn, access_log, expired_flagged)
            counted["records"] = await _count(conn, access_log, expired_records)
            for name, statement in others:
                counted[name] = await _count(conn, statement.table, statement.whereclause)  # type: ignore[arg-type]
    else:
        flagged = await _delete_records(engine, expired_flagged, batch_rows, with_incidents=True)
        counted.update(incident_records=flagged[4], incident_outcomes=flagged[3], incident_notes=flagged[2],
                       incidents=flagged[1], flagged_records=flagged[0])
        dropped = 0
        if await partitioned(engine):
            await prepare(engine)  # records the default partition caught get their day's partition, to go with it
            dropped = await drop_expired(engine, records_before, _kept_long)
            # Left for deleting row by row: the day the cut-off falls in.
            expired_records = and_(expired_records, c.ts >= bounds(day_of(records_before))[0])
        counted["records"] = dropped + (await _delete_records(engine, expired_records, batch_rows,
                                                              with_incidents=False))[0]
        async with engine.begin() as conn:
            for name, statement in others:
                counted[name] = (await conn.execute(statement)).rowcount or 0
            await record_audit(conn, "schoolgate", "system", "retention.purge", "retention", None, None,
                               {**asdict(PurgeCounts(**counted)), "records_days": policy.retention.records_days,
                                "flagged_days": policy.retention.flagged_days})
        if engine.dialect.name == "sqlite":
            async with engine.connect() as conn:  # give the disk and memory back
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                await conn.exec_driver_sql("PRAGMA cache_size = -2000")  # SQLite's default
    counts = PurgeCounts(**counted)
    log.info("%s: %s", "retention dry run, would delete" if dry_run else "retention purge deleted",
             ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in asdict(counts).items()))
    return counts


def _kept_long(c: Any) -> ColumnElement[bool]:
    """Records kept `flagged_days`: evidence for the DSL and police."""
    return or_(c.flag_severity.is_not(None), c.rule.startswith("illegal"))


async def _delete_records(engine: AsyncEngine, expired: ColumnElement[bool], batch_rows: int, *,
                          with_incidents: bool) -> tuple[int, int, int, int, int]:
    """Delete the access records matching `expired`, oldest first, one short transaction per batch
    (with their incidents, notes, outcomes and attempt links when asked); returns records, incidents,
    notes, outcomes and links deleted."""
    c = access_log.c
    deleted = [0, 0, 0, 0, 0]
    after: tuple[datetime, int] | None = None  # the last row of the previous batch, so kept rows are read once
    while True:
        query = select(c.ts, c.id).where(expired).order_by(c.ts, c.id).limit(batch_rows)
        if after is not None:
            query = query.where(c.ts >= after[0], or_(c.ts > after[0], c.id > after[1]))
        async with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                await conn.exec_driver_sql(f"PRAGMA cache_size = -{BATCH_CACHE_KIB}")
            rows = (await conn.execute(query)).all()
            if not rows:
                break
            ids = [row.id for row in rows]
            if with_incidents:
                their_incidents = select(incidents.c.id).where(incidents.c.record_id.in_(ids))
                deleted[2] += await _rowcount(conn, delete(incident_notes).where(
                    incident_notes.c.incident_id.in_(their_incidents)))
                deleted[3] += await _rowcount(conn, delete(incident_outcomes).where(
                    incident_outcomes.c.incident_id.in_(their_incidents)))
                deleted[4] += await _rowcount(conn, delete(incident_records).where(
                    incident_records.c.incident_id.in_(their_incidents)))
                deleted[1] += await _rowcount(conn, delete(incidents).where(incidents.c.record_id.in_(ids)))
            deleted[0] += await _rowcount(conn, delete(access_log).where(c.id.in_(ids)))
        after = (rows[-1].ts, rows[-1].id)
        if engine.dialect.name == "sqlite":
            async with engine.connect() as conn:  # keep the WAL from growing batch after batch
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        if len(rows) < batch_rows:
            break
    return deleted[0], deleted[1], deleted[2], deleted[3], deleted[4]


async def _rowcount(conn: AsyncConnection, statement: Delete) -> int:
    return (await conn.execute(statement)).rowcount or 0


async def _count(conn: AsyncConnection, table: Table, where: ColumnElement[bool]) -> int:
    return (await conn.execute(select(func.count()).select_from(table).where(where))).scalar_one()


async def purge_daily(engine: AsyncEngine, policy: Policy) -> None:
    """Purge now and then every day, for as long as the console runs; a failed purge is retried the next day."""
    while True:
        try:
            await purge(engine, policy)
        except Exception:  # keep the console up; the next run catches up
            log.exception("retention purge failed")
        await asyncio.sleep(PURGE_EVERY.total_seconds())
