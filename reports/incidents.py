"""Incidents: the DSL's triage of flagged access records.

An incident is an episode (schoolgate.episodes): one pupil's flagged attempts on one
risk, created and extended by the gateway's record writer in the transaction that
stores the records (schoolgate.records.store_incidents), so reading the queue, an
incident or a report never writes them. Status changes and notes are kept with who
and when, and written to the audit trail in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schoolgate.db import access_log, incident_notes, incident_records, incidents
from schoolgate.episodes import OPEN, Status, SubjectKind
from schoolgate.live import record_audit
from schoolgate.records import AccessRecord, record_from_row

__all__ = ["OPEN", "Incident", "IncidentFilter", "IncidentNotFound", "Note", "Status"]


@dataclass(frozen=True, slots=True)
class Incident:
    id: int
    status: Status
    assigned: str | None
    updated_at: datetime
    updated_by: str | None
    subject_kind: SubjectKind  # who the attempts are put down to: a user, or a device nobody signed in on
    subject: str
    flag: str
    severity: int  # the worst attempt's
    first_seen: datetime
    last_seen: datetime
    attempts: int
    record_id: int  # the first attempt at the worst severity
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


def _within_episode(record: Any) -> ColumnElement[bool]:
    """The incident's record, one of its attempts, is between its first and last: said so,
    PostgreSQL reads only that day's partition of access_log (0008_partitions)."""
    return and_(record.c.id == incidents.c.record_id, record.c.ts.between(incidents.c.first_seen, incidents.c.last_seen))


def _record_of_incident(dialect: str) -> Any:
    """access_log, or on PostgreSQL a lookup of each incident's record (LATERAL): joined to a table with a
    partition a day, the planner costs a probe of every partition per incident and scans the whole table
    instead (3 s against 0.4 s for a device's incidents over 10 M records). SQLite has no LATERAL."""
    if dialect != "postgresql":
        return access_log
    return select(access_log).where(_within_episode(access_log)).limit(1).lateral("record")


def _joined(record: Any) -> Select[Any]:
    return select(incidents, record).join(record, _within_episode(record))


def _incident(row: Any, record: Any) -> Incident:
    values = row._mapping
    i = incidents.c
    return Incident(id=values[i.id], status=Status(values[i.status]), assigned=values[i.assigned],
                    updated_at=values[i.updated_at], updated_by=values[i.updated_by],
                    subject_kind=SubjectKind(values[i.subject_kind]), subject=values[i.subject], flag=values[i.flag],
                    severity=values[i.severity], first_seen=values[i.first_seen], last_seen=values[i.last_seen],
                    attempts=values[i.attempts], record_id=values[i.record_id],
                    record=record_from_row({col.name: values[col] for col in record.c}))


def _filtered(query: Select[Any], f: IncidentFilter) -> Select[Any]:
    i = incidents.c
    if f.start is not None:  # episodes that overlap the period
        query = query.where(i.last_seen >= f.start)
    if f.end is not None:
        query = query.where(i.first_seen < f.end)
    if f.min_severity is not None:
        query = query.where(i.severity >= f.min_severity)
    if f.flag is not None:
        query = query.where(i.flag == f.flag)
    if f.group is not None:
        query = query.where(i.group_name == f.group)
    if f.user is not None:
        query = query.where(i.subject_kind == SubjectKind.USER.value, i.subject == f.user)
    if f.device is not None:
        query = query.where(or_(and_(i.subject_kind == SubjectKind.DEVICE.value, i.subject == f.device),
                                i.client_ip == f.device))
    if f.statuses:
        query = query.where(incidents.c.status.in_([s.value for s in f.statuses]))
    return query


async def queue(engine: AsyncEngine, f: IncidentFilter, limit: int = 500) -> list[Incident]:
    """Incidents matching the filter, worst first, then the most recently seen."""
    i = incidents.c
    worst_first = (i.severity.desc(), i.last_seen.desc(), i.id.desc())
    # The page's incidents are chosen first, then their records read: joined before the LIMIT,
    # every matching incident's record would be read (thousands over a week, most not shown).
    page = _filtered(select(i.id), f).order_by(*worst_first).limit(limit)
    record = _record_of_incident(engine.dialect.name)
    query = _joined(record).where(i.id.in_(page.scalar_subquery())).order_by(*worst_first)
    async with engine.connect() as conn:
        return [_incident(row, record) for row in (await conn.execute(query)).all()]


async def get(engine: AsyncEngine, incident_id: int) -> Incident:
    record = _record_of_incident(engine.dialect.name)
    async with engine.connect() as conn:
        row = (await conn.execute(_joined(record).where(incidents.c.id == incident_id))).first()
    if row is None:
        raise IncidentNotFound(f"no incident #{incident_id}")
    return _incident(row, record)


async def attempts(engine: AsyncEngine, incident_id: int) -> list[tuple[int, AccessRecord]]:
    """The episode's attempts (record id and record), oldest first."""
    c = access_log.c
    query = (select(access_log).join(incident_records, incident_records.c.record_id == c.id)
             .join(incidents, and_(incidents.c.id == incident_records.c.incident_id,
                                   c.ts.between(incidents.c.first_seen, incidents.c.last_seen)))
             .where(incident_records.c.incident_id == incident_id).order_by(c.ts, c.id))
    async with engine.connect() as conn:
        return [(row.id, record_from_row(row._mapping)) for row in (await conn.execute(query)).all()]


async def ids_for_ref(engine: AsyncEngine, ref: str) -> list[int]:
    """Incidents with an attempt carrying a block-page reference (what alert links name), newest first."""
    query = (select(incident_records.c.incident_id).join(access_log, access_log.c.id == incident_records.c.record_id)
             .where(access_log.c.ref == ref).order_by(incident_records.c.incident_id.desc()))
    async with engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


async def notes(engine: AsyncEngine, incident_id: int) -> list[Note]:
    query = select(incident_notes).where(incident_notes.c.incident_id == incident_id).order_by(incident_notes.c.id)
    async with engine.connect() as conn:
        return [Note(author=r.author, ts=r.ts, text=r.text, status_from=r.status_from, status_to=r.status_to)
                for r in (await conn.execute(query)).all()]


async def update_incident(engine: AsyncEngine, incident_id: int, *, actor: str, role: str,
                          status: Status | None, note: str, assigned: str | None = None) -> None:
    """Change the status, the assignee (None: unchanged, "": nobody) and/or add a note.

    Audited as incident.<new status>, or incident.note / incident.assign when the status stays."""
    async with engine.begin() as conn:
        if not await _apply(conn, incident_id, actor=actor, role=role, status=status, note=note.strip(),
                            assigned=assigned):
            raise ValueError("change the status or the assignee, or write a note")


async def update_many(engine: AsyncEngine, incident_ids: Iterable[int], *, actor: str, role: str,
                      status: Status | None, assigned: str | None = None) -> int:
    """The queue's bulk action on a selection: one transaction, one audit row per incident changed.

    Incidents already in that state are left alone; returns how many changed."""
    async with engine.begin() as conn:
        return sum([await _apply(conn, incident_id, actor=actor, role=role, status=status, note="", assigned=assigned)
                    for incident_id in sorted(set(incident_ids))])


async def _apply(conn: AsyncConnection, incident_id: int, *, actor: str, role: str, status: Status | None,
                 note: str, assigned: str | None) -> bool:
    """Change one incident and audit it; False when there was nothing to change."""
    row = (await conn.execute(select(incidents).where(incidents.c.id == incident_id))).first()
    if row is None:
        raise IncidentNotFound(f"no incident #{incident_id}")
    changed = status is not None and status.value != row.status
    reassigned = assigned is not None and (assigned or None) != row.assigned
    if not changed and not note and not reassigned:
        return False
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
    return True


async def unread_count(engine: AsyncEngine, min_severity: int) -> int:
    """New incidents at `min_severity` or above that no DSL has opened yet (read-only;
    opening one is its first review, reports.outcomes.mark_reviewed)."""
    query = select(func.count()).select_from(incidents).where(
        incidents.c.severity >= min_severity, incidents.c.status == Status.NEW.value,
        incidents.c.first_reviewed_at.is_(None))
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())
