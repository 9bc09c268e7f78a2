"""Incidents are episodes created as flagged records are written: who, which risk, first and
last seen, attempts, the worst severity, and which records are its attempts.

Existing incidents (one per record, made when the console was read) keep their status and
notes and become one-attempt episodes; flagged records that had none yet are grouped into
episodes (30-minute window, the policy default) once, here, so no read ever writes them.

Revision ID: 0007_queue
Revises: 0007_pupil
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

from schoolgate.episodes import Attempt, Episode, Status, group_attempts, subject_of

revision: str = "0007_queue"
down_revision: str | None = "0007_pupil"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)
_WINDOW = timedelta(minutes=30)
_BATCH = 10_000

# Frozen copies of the columns this revision reads and writes.
_access_log = sa.table("access_log", sa.column("id"), sa.column("ts", _TIME), sa.column("client_ip"), sa.column("username"),
                       sa.column("flag"), sa.column("flag_severity"), sa.column("ref"))
_incidents = sa.table("incidents", sa.column("id"), sa.column("record_id"), sa.column("ref"), sa.column("status"),
                      sa.column("updated_at", _TIME), sa.column("subject_kind"), sa.column("subject"), sa.column("flag"),
                      sa.column("severity"), sa.column("first_seen", _TIME), sa.column("last_seen", _TIME),
                      sa.column("attempts"))
_incident_records = sa.table("incident_records", sa.column("incident_id"), sa.column("record_id"))
_NEW_COLUMNS = (("subject_kind", sa.String()), ("subject", sa.String()), ("flag", sa.String()),
                ("severity", sa.Integer()), ("first_seen", _TIME), ("last_seen", _TIME), ("attempts", sa.Integer()))


def upgrade() -> None:
    op.create_table(
        "incident_records",
        sa.Column("incident_id", sa.BigInteger(), primary_key=True),
        sa.Column("record_id", sa.BigInteger(), primary_key=True),
    )
    op.create_index("ix_incident_records_record_id", "incident_records", ["record_id"])
    with op.batch_alter_table("incidents") as batch:
        for name, kind in _NEW_COLUMNS:
            batch.add_column(sa.Column(name, kind))
    _backfill(op.get_bind())
    with op.batch_alter_table("incidents") as batch:
        for name, kind in _NEW_COLUMNS:
            batch.alter_column(name, existing_type=kind, nullable=False)
    op.create_index("ix_incidents_severity_last_seen", "incidents", ["severity", "last_seen"])
    op.create_index("ix_incidents_subject_flag_last_seen", "incidents", ["subject", "flag", "last_seen"])


def _aware(value: Any) -> datetime:
    """SQLite hands back naive text or datetimes; both are UTC."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _attempt(row: Any) -> Attempt:
    kind, subject = subject_of(row.username, row.client_ip)
    return Attempt(row.id, _aware(row.ts), kind, subject, row.flag or "", row.flag_severity, row.ref)


def _backfill(bind: sa.Connection) -> None:
    a, i = _access_log.c, _incidents.c
    # Existing incidents: one attempt each, their record's facts.
    joined = (sa.select(i.id, i.status, i.updated_at, a.id.label("record_id"), a.ts, a.client_ip, a.username, a.flag,
                        a.flag_severity, a.ref)
              .select_from(_incidents.outerjoin(_access_log, a.id == i.record_id)))
    open_episodes: list[Episode] = []
    facts: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    for row in bind.execute(joined).all():
        if row.record_id is None:  # the record is gone (purged by hand): keep the incident, facts unknown
            when = _aware(row.updated_at)
            facts.append(dict(incident=row.id, subject_kind="device", subject="", flag="", severity=0,
                              first_seen=when, last_seen=when))
            continue
        attempt = _attempt(row)
        facts.append(dict(incident=row.id, subject_kind=attempt.subject_kind.value, subject=attempt.subject,
                          flag=attempt.flag, severity=attempt.severity, first_seen=attempt.ts, last_seen=attempt.ts))
        links.append(dict(incident_id=row.id, record_id=row.record_id))
        if row.status != Status.CLOSED:
            open_episodes.append(Episode(row.id, attempt.subject_kind, attempt.subject, attempt.flag, attempt.ts,
                                         attempt.ts, 1, attempt.severity, attempt.record_id, attempt.ref))
    if facts:  # one executemany each, not a statement per incident
        bind.execute(sa.update(_incidents).where(i.id == sa.bindparam("incident")).values(
            attempts=1, **{name: sa.bindparam(name) for name in facts[0] if name != "incident"}), facts)
    if links:
        bind.execute(sa.insert(_incident_records), links)
    # Flagged records without an incident, in time order, a batch at a time.
    missing = (sa.select(a.id, a.ts, a.client_ip, a.username, a.flag, a.flag_severity, a.ref)
               .where(a.flag_severity.is_not(None), ~sa.exists().where(i.record_id == a.id))
               .order_by(a.ts, a.id))
    now = datetime.now(UTC)
    rows = bind.execute(missing).all()
    for start in range(0, len(rows), _BATCH):
        episodes = group_attempts(open_episodes, [_attempt(r) for r in rows[start:start + _BATCH]], _WINDOW)
        started = [e for e in episodes if e.id is None]
        extended = [e for e in episodes if e.id is not None]
        if started:  # executemany, then the new ids by their record (unique)
            bind.execute(sa.insert(_incidents), [
                dict(status=Status.NEW.value, updated_at=now, subject_kind=e.subject_kind.value, subject=e.subject,
                     flag=e.flag, **_facts(e)) for e in started])
            ids = {record_id: incident_id for record_id, incident_id in bind.execute(
                sa.select(i.record_id, i.id).where(i.record_id.in_([e.record_id for e in started])))}
            for e in started:
                e.id = ids[e.record_id]
            open_episodes.extend(started)
        if extended:
            bind.execute(sa.update(_incidents).where(i.id == sa.bindparam("incident")).values(
                {name: sa.bindparam(name) for name in _facts(extended[0])}),
                [{"incident": e.id, **_facts(e)} for e in extended])
        bind.execute(sa.insert(_incident_records),
                     [dict(incident_id=e.id, record_id=r) for e in episodes for r in e.added])
        for e in episodes:
            e.added.clear()


def _facts(e: Episode) -> dict[str, Any]:
    return dict(record_id=e.record_id, ref=e.ref, severity=e.severity, first_seen=e.first_seen,
                last_seen=e.last_seen, attempts=e.attempts)


def downgrade() -> None:
    op.drop_index("ix_incidents_subject_flag_last_seen", "incidents")
    op.drop_index("ix_incidents_severity_last_seen", "incidents")
    with op.batch_alter_table("incidents") as batch:
        for name, _ in reversed(_NEW_COLUMNS):
            batch.drop_column(name)
    op.drop_table("incident_records")
