"""Read-side queries over the access log, for IT staff and reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schoolgate.db import access_log, audit_log
from schoolgate.records import AccessRecord, SeqGap, record_from_row, seq_gaps

_NEWEST_FIRST = (access_log.c.ts.desc(), access_log.c.id.desc())
LOST_RECORDS_DAYS = 3  # how far back the console looks for records a gateway lost


@dataclass(frozen=True, slots=True)
class Counts:
    since: datetime
    by_verdict: dict[str, int]
    by_group: dict[str, int]


async def find_by_ref(engine: AsyncEngine, ref: str) -> list[AccessRecord]:
    """Records carrying a block-page reference, newest first.

    Usually one; references are random, so over years a repeat is possible
    and the time tells them apart."""
    query = select(access_log).where(access_log.c.ref == ref).order_by(*_NEWEST_FIRST)
    async with engine.connect() as connection:
        rows = await connection.execute(query)
        return [record_from_row(row) for row in rows.mappings()]


async def recent(
    engine: AsyncEngine,
    *,
    limit: int = 50,
    offset: int = 0,
    verdict: str | None = None,
    user: str | None = None,
    client_ip: str | None = None,
    host: str | None = None,
    since: datetime | None = None,
    before: datetime | None = None,
) -> list[AccessRecord]:
    """The latest records matching every filter given, newest first, skipping `offset` (paging).

    `host` also matches its subdomains, so "youtube.com" finds www.youtube.com."""
    c = access_log.c
    query = select(access_log).order_by(*_NEWEST_FIRST).limit(limit).offset(offset)
    if verdict is not None:
        query = query.where(c.verdict == verdict)
    if user is not None:
        query = query.where(c.username == user)
    if client_ip is not None:
        query = query.where(c.client_ip == client_ip)
    if host is not None:
        query = query.where(or_(c.host == host, c.host.endswith("." + host, autoescape=True)))
    if since is not None:
        query = query.where(c.ts >= since)
    if before is not None:
        query = query.where(c.ts < before)
    async with engine.connect() as connection:
        rows = await connection.execute(query)
        return [record_from_row(row) for row in rows.mappings()]


@dataclass(frozen=True, slots=True)
class LogSearch:
    """The console's access-log search. The time range is always bounded, so every query
    walks an index on (column, ts) or on ts alone rather than the whole table."""

    start: datetime
    end: datetime
    text: str = ""  # a substring of the host or URL
    group: str | None = None
    verdict: str | None = None
    user: str | None = None  # for the DSL's searches only

    def describe(self) -> dict[str, str]:
        """What was asked for, for the audit trail."""
        values = {"start": self.start.isoformat(), "end": self.end.isoformat(), "text": self.text,
                  "group": self.group, "verdict": self.verdict, "user": self.user}
        return {k: v for k, v in values.items() if v}


async def search(engine: AsyncEngine, wanted: LogSearch, *, before_id: int | None = None,
                 limit: int = 50) -> tuple[list[tuple[int, AccessRecord]], bool]:
    """One page of matching records, newest first, older than record `before_id` when given
    (keyset paging: no OFFSET, so a deep page costs what the first does); and whether more follow."""
    c = access_log.c
    query = select(access_log).where(c.ts >= wanted.start, c.ts < wanted.end)
    if wanted.text:
        query = query.where(or_(c.host.contains(wanted.text, autoescape=True),
                                c.url.contains(wanted.text, autoescape=True)))
    for column, value in ((c.group_name, wanted.group), (c.verdict, wanted.verdict), (c.username, wanted.user)):
        if value:
            query = query.where(column == value)
    async with engine.connect() as connection:
        if before_id is not None:
            last_ts = (await connection.execute(select(c.ts).where(c.id == before_id))).scalar()
            if last_ts is None:
                return [], False
            query = query.where(or_(c.ts < last_ts, and_(c.ts == last_ts, c.id < before_id)))
        rows = (await connection.execute(query.order_by(*_NEWEST_FIRST).limit(limit + 1))).mappings().all()
    return [(row["id"], record_from_row(row)) for row in rows[:limit]], len(rows) > limit


async def counts(engine: AsyncEngine, since: datetime) -> Counts:
    """How many access attempts since a time, by verdict and by group."""
    async with engine.connect() as connection:
        by_verdict = await _count_by(connection, access_log.c.verdict, since)
        by_group = await _count_by(connection, access_log.c.group_name, since)
    return Counts(since=since, by_verdict=by_verdict, by_group=by_group)


async def _count_by(connection: AsyncConnection, column: ColumnElement[str], since: datetime) -> dict[str, int]:
    query = select(column, func.count()).where(access_log.c.ts >= since).group_by(column).order_by(column)
    rows = await connection.execute(query)
    return {key: count for key, count in rows}


async def surrounding(engine: AsyncEngine, record_id: int, minutes: int = 10) -> list[tuple[int, AccessRecord]]:
    """The same person's requests in the minutes either side of a record, oldest first.

    "The same person" is the signed-in user when there is one, else the device's address."""
    async with engine.connect() as connection:
        row = (await connection.execute(select(access_log).where(access_log.c.id == record_id))).first()
        if row is None:
            return []
        c = access_log.c
        same_person = c.username == row.username if row.username else c.client_ip == row.client_ip
        window = timedelta(minutes=minutes)
        query = (select(access_log).where(same_person, c.ts.between(row.ts - window, row.ts + window))
                 .order_by(c.ts, c.id))
        rows = await connection.execute(query)
        return [(values["id"], record_from_row(values)) for values in rows.mappings()]


async def list_changes(engine: AsyncEngine, limit: int = 100) -> list[Any]:
    """The managed allow and block lists' history from the audit trail, newest first:
    who added or removed which entry, when, and why."""
    query = (select(audit_log).where(audit_log.c.object_kind == "list_entry")
             .order_by(audit_log.c.ts.desc(), audit_log.c.id.desc()).limit(limit))
    async with engine.connect() as connection:
        return list((await connection.execute(query)).all())


async def lost_records(engine: AsyncEngine, now: datetime, days: int = LOST_RECORDS_DAYS) -> list[SeqGap]:
    """Records gateways lost (a kill -9, a power cut) over the last days: gaps in each one's `seq`, read only."""
    async with engine.connect() as connection:
        return await seq_gaps(connection, now - timedelta(days=days))


class LostRecords:
    """`lost_records` as the queue and settings pages show it, asked at most once a minute by one
    console rather than on every view (it counts days of index entries: under 0.1 s warm, about
    0.3 s cold, over 10 M records)."""

    FRESH_FOR = timedelta(minutes=1)

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._found: list[SeqGap] = []
        self._at: datetime | None = None

    async def gaps(self, now: datetime) -> list[SeqGap]:
        if self._at is None or not self._at <= now < self._at + self.FRESH_FOR:
            self._found, self._at = await lost_records(self.engine, now), now
        return self._found
