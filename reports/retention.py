"""Retention: personal data is deleted when the policy's [retention] says so.

- access records older than `records_days`, except flagged ones;
- flagged records older than `flagged_days`, with their incidents and notes
  (a safeguarding file is kept longer, but not for ever); a record of the
  illegal-content tier (rule `illegal`) is always kept that long, flagged or not;
- access requests and console login attempts older than `records_days`;
- console sessions that have ended or gone idle.

The audit trail is not purged: it is append-only (the database refuses DELETE)
and records who did what, not what pupils browsed. Each purge writes one audit
row and one log line with the counts, never any identity.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Delete

from schoolgate.db import (
    access_log,
    access_requests,
    console_sessions,
    incident_notes,
    incident_records,
    incidents,
    login_attempts,
)
from schoolgate.live import record_audit
from schoolgate.policy import Policy

log = logging.getLogger("schoolgate.retention")

SESSION_KEEP = timedelta(days=1)  # ended or idle sessions are only kept to explain a recent sign-out
PURGE_EVERY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    records: int
    flagged_records: int
    incidents: int
    incident_notes: int
    incident_records: int
    access_requests: int
    login_attempts: int
    sessions: int


async def purge(engine: AsyncEngine, policy: Policy, *, dry_run: bool = False,
                now: datetime | None = None) -> PurgeCounts:
    """Delete (or, with dry_run, count) what is past its retention, in one transaction."""
    now = now or datetime.now(UTC)
    records_before = now - timedelta(days=policy.retention.records_days)
    flagged_before = now - timedelta(days=policy.retention.flagged_days)
    c = access_log.c
    kept_long = or_(c.flag_severity.is_not(None), c.rule.startswith("illegal"))  # evidence for the DSL and police
    expired_flagged = select(c.id).where(kept_long, c.ts < flagged_before)
    expired_incidents = select(incidents.c.id).where(incidents.c.record_id.in_(expired_flagged))
    # Notes before incidents before records: each step finds its rows through the next.
    steps: list[tuple[str, Delete]] = [
        ("incident_notes", delete(incident_notes).where(incident_notes.c.incident_id.in_(expired_incidents))),
        ("incident_records", delete(incident_records).where(incident_records.c.incident_id.in_(expired_incidents))),
        ("incidents", delete(incidents).where(incidents.c.record_id.in_(expired_flagged))),
        ("flagged_records", delete(access_log).where(kept_long, c.ts < flagged_before)),
        ("records", delete(access_log).where(not_(kept_long), c.ts < records_before)),
        ("access_requests", delete(access_requests).where(access_requests.c.created_at < records_before)),
        ("login_attempts", delete(login_attempts).where(login_attempts.c.ts < records_before)),
        ("sessions", delete(console_sessions).where(console_sessions.c.last_seen < now - SESSION_KEEP)),
    ]
    counted: dict[str, int] = {}
    async with engine.begin() as conn:
        for name, statement in steps:
            counted[name] = await (_count(conn, statement) if dry_run else _delete(conn, statement))
        counts = PurgeCounts(**counted)
        if not dry_run:
            await record_audit(conn, "schoolgate", "system", "retention.purge", "retention", None, None,
                               {**asdict(counts), "records_days": policy.retention.records_days,
                                "flagged_days": policy.retention.flagged_days})
    log.info("%s: %s", "retention dry run, would delete" if dry_run else "retention purge deleted",
             ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in asdict(counts).items()))
    return counts


async def _delete(conn: AsyncConnection, statement: Delete) -> int:
    return (await conn.execute(statement)).rowcount or 0


async def _count(conn: AsyncConnection, statement: Delete) -> int:
    table = statement.table
    query = select(func.count()).select_from(table).where(statement.whereclause)  # type: ignore[arg-type]
    return (await conn.execute(query)).scalar_one()


async def purge_daily(engine: AsyncEngine, policy: Policy) -> None:
    """Purge now and then every day, for as long as the console runs; a failed purge is retried the next day."""
    while True:
        try:
            await purge(engine, policy)
        except Exception:  # keep the console up; the next run catches up
            log.exception("retention purge failed")
        await asyncio.sleep(PURGE_EVERY.total_seconds())
