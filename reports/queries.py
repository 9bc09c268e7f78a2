"""Read-side queries over the access log, for IT staff and reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schoolgate.db import access_log
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
    verdict: str | None = None,
    user: str | None = None,
    client_ip: str | None = None,
    host: str | None = None,
    since: datetime | None = None,
) -> list[AccessRecord]:
    """The latest records matching every filter given, newest first.

    `host` also matches its subdomains, so "youtube.com" finds www.youtube.com."""
    c = access_log.c
    query = select(access_log).order_by(*_NEWEST_FIRST).limit(limit)
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
    async with engine.connect() as connection:
        rows = await connection.execute(query)
        return [record_from_row(row) for row in rows.mappings()]


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


async def lost_records(engine: AsyncEngine, now: datetime, days: int = LOST_RECORDS_DAYS) -> list[SeqGap]:
    """Records gateways lost (a kill -9, a power cut) over the last days: gaps in each one's `seq`, read only."""
    async with engine.connect() as connection:
        return await seq_gaps(connection, now - timedelta(days=days))
