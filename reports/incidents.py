"""Incidents: the DSL's triage of flagged access records.

Every flagged record (flag_severity set by the gateway) is one incident. They are
created lazily: each read of the queue, an incident or a report first inserts the
incidents missing for flagged records, in one INSERT ... SELECT, so the gateway's
write path stays untouched and nothing is ever missed. Status changes and notes
are kept with who and when, and written to the audit trail in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, and_, exists, func, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schoolgate.db import access_log, incident_notes, incidents
from schoolgate.live import record_audit
from schoolgate.records import AccessRecord, record_from_row


class Status(StrEnum):
    NEW = "new"
    REVIEWING = "reviewing"
    ESCALATED = "escalated"
    CLOSED = "closed"


OPEN = (Status.NEW, Status.REVIEWING, Status.ESCALATED)


@dataclass(frozen=True, slots=True)
class Incident:
    id: int
    status: Status
    assigned: str | None
    updated_at: datetime
    updated_by: str | None
    record_id: int
    record: AccessRecord


@dataclass(frozen=True, slots=True)
class Note:
    author: str
    ts: datetime
    text: str
    status_from: str | None
    status_to: str | None


@dataclass(frozen=True, slots=True)
class IncidentFilter:
    """The queue's filters; None means "any"."""

    start: datetime | None = None
    end: datetime | None = None
    min_severity: int | None = None
    flag: str | None = None  # the risk: self-harm, circumvention, ...
    group: str | None = None
    user: str | None = None
    device: str | None = None  # client address
    statuses: tuple[Status, ...] = field(default=())

    def describe(self) -> dict[str, Any]:
        """What was asked for, for the audit trail."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if v not in (None, ())}


class IncidentNotFound(LookupError):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


async def open_missing(conn: AsyncConnection) -> None:
    """Create the incidents of flagged records that do not have one yet.

    Two readers at once (two DSLs, the reminders) may both find a record missing; the
    second insert then skips it (ON CONFLICT DO NOTHING) rather than failing."""
    c = access_log.c
    missing = select(c.id, c.ref, literal(Status.NEW.value), literal(_now(), incidents.c.updated_at.type)).where(
        c.flag_severity.is_not(None), ~exists().where(incidents.c.record_id == c.id))
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    await conn.execute(dialect_insert(incidents).from_select(["record_id", "ref", "status", "updated_at"], missing)
                       .on_conflict_do_nothing(index_elements=["record_id"]))


def _joined() -> Select[Any]:
    return select(incidents, access_log).join(access_log, access_log.c.id == incidents.c.record_id)


def _incident(row: Any) -> Incident:
    values = row._mapping
    return Incident(id=values[incidents.c.id], status=Status(values[incidents.c.status]),
                    assigned=values[incidents.c.assigned], updated_at=values[incidents.c.updated_at],
                    updated_by=values[incidents.c.updated_by], record_id=values[incidents.c.record_id],
                    record=record_from_row({col.name: values[col] for col in access_log.c}))


def _filtered(query: Select[Any], f: IncidentFilter) -> Select[Any]:
    c = access_log.c
    if f.start is not None:
        query = query.where(c.ts >= f.start)
    if f.end is not None:
        query = query.where(c.ts < f.end)
    if f.min_severity is not None:
        query = query.where(c.flag_severity >= f.min_severity)
    if f.flag is not None:
        query = query.where(c.flag == f.flag)
    if f.group is not None:
        query = query.where(c.group_name == f.group)
    if f.user is not None:
        query = query.where(c.username == f.user)
    if f.device is not None:
        query = query.where(c.client_ip == f.device)
    if f.statuses:
        query = query.where(incidents.c.status.in_([s.value for s in f.statuses]))
    return query


async def queue(engine: AsyncEngine, f: IncidentFilter, limit: int = 500) -> list[Incident]:
    """Incidents matching the filter, newest record first."""
    async with engine.begin() as conn:
        await open_missing(conn)
        query = _filtered(_joined(), f).order_by(access_log.c.ts.desc(), access_log.c.id.desc()).limit(limit)
        return [_incident(row) for row in (await conn.execute(query)).all()]


async def get(engine: AsyncEngine, incident_id: int) -> Incident:
    async with engine.begin() as conn:
        await open_missing(conn)
        row = (await conn.execute(_joined().where(incidents.c.id == incident_id))).first()
    if row is None:
        raise IncidentNotFound(f"no incident #{incident_id}")
    return _incident(row)


async def ids_for_ref(engine: AsyncEngine, ref: str) -> list[int]:
    """Incidents whose record carries a block-page reference (what alert links name)."""
    async with engine.begin() as conn:
        await open_missing(conn)
        rows = await conn.execute(select(incidents.c.id).where(incidents.c.ref == ref).order_by(incidents.c.id.desc()))
        return list(rows.scalars())


async def notes(engine: AsyncEngine, incident_id: int) -> list[Note]:
    query = select(incident_notes).where(incident_notes.c.incident_id == incident_id).order_by(incident_notes.c.id)
    async with engine.connect() as conn:
        return [Note(author=r.author, ts=r.ts, text=r.text, status_from=r.status_from, status_to=r.status_to)
                for r in (await conn.execute(query)).all()]


async def update_incident(engine: AsyncEngine, incident_id: int, *, actor: str, role: str,
                          status: Status | None, note: str, assigned: str | None = None) -> None:
    """Change the status, the assignee (None: unchanged, "": nobody) and/or add a note.

    Audited as incident.<new status>, or incident.note / incident.assign when the status stays."""
    note = note.strip()
    async with engine.begin() as conn:
        row = (await conn.execute(select(incidents).where(incidents.c.id == incident_id))).first()
        if row is None:
            raise IncidentNotFound(f"no incident #{incident_id}")
        changed = status is not None and status.value != row.status
        reassigned = assigned is not None and (assigned or None) != row.assigned
        if not changed and not note and not reassigned:
            raise ValueError("change the status or the assignee, or write a note")
        now = _now()
        after: dict[str, Any] = {"status": status.value if status is not None and changed else row.status}
        values: dict[str, Any] = dict(updated_at=now, updated_by=actor, status=after["status"])
        if reassigned:
            values["assigned"] = after["assigned"] = assigned or None
        await conn.execute(update(incidents).where(incidents.c.id == incident_id).values(**values))
        if note or changed:
            await conn.execute(insert(incident_notes).values(
                incident_id=incident_id, author=actor, ts=now, text=note,
                status_from=row.status if changed else None, status_to=after["status"] if changed else None))
        action = f"incident.{after['status']}" if changed else "incident.note" if note else "incident.assign"
        # Only that a note was written: its text is kept with the incident and purged with it,
        # while the audit trail is kept for good.
        await record_audit(conn, actor, role, action, "incident", incident_id,
                           {"status": row.status, "assigned": row.assigned}, {**after, "note_added": bool(note)})


async def mark_opened(engine: AsyncEngine, incident_id: int) -> None:
    """A DSL has opened the incident: it no longer counts as unread (the first time is kept)."""
    async with engine.begin() as conn:
        await conn.execute(update(incidents).where(incidents.c.id == incident_id, incidents.c.opened_at.is_(None))
                           .values(opened_at=_now()))


async def unread_count(engine: AsyncEngine, min_severity: int) -> int:
    """Flagged records at `min_severity` or above that no DSL has opened yet, read-only: a
    record whose incident is not made yet counts too, so the badge needs no write per page."""
    c = access_log.c
    query = (select(func.count()).select_from(access_log.outerjoin(incidents, incidents.c.record_id == c.id))
             .where(c.flag_severity >= min_severity,
                    or_(incidents.c.id.is_(None), and_(incidents.c.status == Status.NEW.value,
                                                       incidents.c.opened_at.is_(None)))))
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())
