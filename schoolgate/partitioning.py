"""The SQL of access_log's day partitions on PostgreSQL (schoolgate.partitions decides the days).

Partitions are made ahead of time by a maintenance step (`prepare_partitions`: at the
writer's start, every few hours while it runs, and before each retention purge), never
by a write: a record whose day has no partition lands in the default partition, and the
next maintenance moves it into a partition of its own day and logs a warning.

Every statement that needs access_log exclusively (attaching, detaching) waits at most
LOCK_TIMEOUT_MS for it, so the gateways' writers queue behind it no longer than that;
a maintenance that cannot get the lock fails and is tried again later. SQLite has no
partitions: everything here does nothing there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, column, exists, func, insert, select, table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.db import access_log, create_engine, dispose_within, is_sqlite
from schoolgate.partitions import DEFAULT, bounds, day_named, days_to_prepare, expired_days, name_of

log = logging.getLogger("schoolgate.partitions")

# PostgreSQL advisory lock: one maintenance at a time across the gateways sharing the database.
_PARTITION_LOCK_KEY = 0x5C0016DA7
LOCK_TIMEOUT_MS = 1000
SWAP_ATTEMPTS = 5
PREPARE_EVERY = timedelta(hours=6)

# The kept-records predicate retention passes in, applied to a table's columns.
Kept = Callable[[Any], ColumnElement[bool]]


def is_partitioned(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql" and connection.exec_driver_sql(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass('access_log')").scalar() == "p"


def day_partitions(connection: Connection) -> dict[date, str]:
    rows = connection.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'access_log'::regclass")
    return {day: name for (name,) in rows if (day := day_named(name)) is not None}


def _literal(ts: datetime) -> str:
    return f"'{ts.astimezone(UTC).isoformat()}'"


def _range(day: date) -> str:
    start, end = bounds(day)
    return f"FROM ({_literal(start)}) TO ({_literal(end)})"


def _new_table(connection: Connection, name: str) -> None:
    # With access_log's indexes, so attaching it links them instead of building them under the lock.
    connection.exec_driver_sql(f'CREATE TABLE "{name}" (LIKE access_log INCLUDING DEFAULTS INCLUDING INDEXES)')


def _attach(connection: Connection, name: str, day: date) -> None:
    """Attach a table holding only `day`'s records: a CHECK constraint proves it first, so attaching
    (which holds off no writer: SHARE UPDATE EXCLUSIVE on access_log) need not scan it."""
    start, end = bounds(day)
    check = f"{name}_bounds"
    connection.exec_driver_sql(f'ALTER TABLE "{name}" ADD CONSTRAINT "{check}" '
                               f"CHECK (ts >= {_literal(start)} AND ts < {_literal(end)})")
    connection.exec_driver_sql(f'ALTER TABLE access_log ATTACH PARTITION "{name}" FOR VALUES {_range(day)}')
    connection.exec_driver_sql(f'ALTER TABLE "{name}" DROP CONSTRAINT "{check}"')


def create_default_partition(connection: Connection) -> None:
    connection.exec_driver_sql(f'CREATE TABLE "{DEFAULT}" PARTITION OF access_log DEFAULT')


def create_day_partition(connection: Connection, day: date) -> int:
    """Make `day`'s partition, moving into it that day's records the default partition caught; returns how many."""
    name = name_of(day)
    start, end = bounds(day)
    _new_table(connection, name)
    moved = connection.exec_driver_sql(
        f'WITH moved AS (DELETE FROM "{DEFAULT}" WHERE ts >= {_literal(start)} AND ts < {_literal(end)} RETURNING *) '
        f'INSERT INTO "{name}" SELECT * FROM moved').rowcount
    _attach(connection, name, day)
    return moved or 0


def prepare_partitions(connection: Connection, today: date) -> list[date]:
    """Partitions for yesterday, today and the days ahead, and for any day whose records the
    default partition caught (said in a warning: a clock far off, or old records replayed late).
    Returns the days given a partition."""
    if not is_partitioned(connection):
        return []
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PARTITION_LOCK_KEY})")
    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
    caught = {day: n for day, n in connection.exec_driver_sql(
        f"SELECT (ts AT TIME ZONE 'UTC')::date, count(*) FROM \"{DEFAULT}\" GROUP BY 1")}
    days = sorted(set(days_to_prepare(day_partitions(connection), today)) | set(caught))
    for day in days:
        create_day_partition(connection, day)
    if caught:
        log.warning("%d access records of %d days from %s to %s had no partition of their day and were kept in %s; "
                    "moved to their days' new partitions", sum(caught.values()), len(caught), min(caught), max(caught),
                    DEFAULT)
    return days


async def prepare(engine: AsyncEngine) -> list[date]:
    async with engine.begin() as connection:
        return await connection.run_sync(prepare_partitions, datetime.now(UTC).date())


async def keep_partitions_ready(database_url: str) -> None:
    """Prepare the partitions now and every PREPARE_EVERY, for as long as a gateway runs (PostgreSQL only)."""
    if is_sqlite(database_url):
        return
    while True:
        engine = create_engine(database_url)
        try:
            await prepare(engine)
        except Exception as e:  # the days ahead are already there; the next run catches up
            log.warning("cannot prepare access_log's day partitions (tried again in %s): %s", PREPARE_EVERY, e)
        finally:
            await dispose_within(engine)
        await asyncio.sleep(PREPARE_EVERY.total_seconds())


# --- retention: whole days dropped -------------------------------------------------------

async def drop_expired_days(engine: AsyncEngine, before: datetime, kept: Kept) -> int:
    """Drop the partitions of days wholly before `before`; their `kept` records (flagged, illegal tier)
    move to a new partition of the same day first, so they stay. Returns the records dropped."""
    async with engine.connect() as connection:
        if not await connection.run_sync(is_partitioned):
            return 0
        days = expired_days(await connection.run_sync(day_partitions), before)
        left_over = [name for (name,) in await connection.exec_driver_sql(
            "SELECT relname FROM pg_class WHERE relname LIKE 'access\\_log\\_%\\_expired' AND relkind = 'r'")]
    dropped = 0
    for name in left_over:  # a purge stopped between detaching a day and dropping it
        day = day_named(name.removesuffix("_expired"))
        assert day is not None
        dropped += await _finish_day(engine, day, kept)
    for day in days:
        dropped += await _drop_day(engine, day, kept)
    return dropped


async def _drop_day(engine: AsyncEngine, day: date, kept: Kept) -> int:
    name = name_of(day)
    start, end = bounds(day)
    c = access_log.c
    in_day = and_(c.ts >= start, c.ts < end)
    async with engine.begin() as connection:  # reads only: the writers carry on
        keeping, total = (await connection.execute(
            select(func.count().filter(kept(c)), func.count()).where(in_day))).one()
        if total and keeping == total:
            return 0  # a day already reduced to its kept records
        if keeping:
            await connection.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}_kept"')
            await connection.run_sync(_new_table, f"{name}_kept")
            await connection.execute(insert(_as_table(f"{name}_kept")).from_select(
                [col.name for col in c], select(access_log).where(in_day, kept(c))))
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            async with engine.begin() as connection:
                await connection.run_sync(_swap, day, bool(keeping))
            break
        except DBAPIError as e:
            if "lock timeout" not in str(e) or attempt == SWAP_ATTEMPTS:
                raise
            log.warning("retention waited %d ms for access_log (a long query?); trying again", LOCK_TIMEOUT_MS)
            await asyncio.sleep(attempt)
    return await _finish_day(engine, day, kept)


def _swap(connection: Connection, day: date, keeping: bool) -> None:
    """Detach the day and attach its kept records in its place, in one transaction: a reader sees one
    or the other, and a writer waits for it only as long as the catalogue changes take."""
    name = name_of(day)
    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
    connection.exec_driver_sql(f'ALTER TABLE access_log DETACH PARTITION "{name}"')
    connection.exec_driver_sql(f'ALTER TABLE "{name}" RENAME TO "{name}_expired"')
    if keeping:
        connection.exec_driver_sql(f'ALTER TABLE "{name}_kept" RENAME TO "{name}"')
        _attach(connection, name, day)


async def _finish_day(engine: AsyncEngine, day: date, kept: Kept) -> int:
    """Put back the kept records a detached day received after they were copied, then drop it;
    returns the records dropped with it."""
    name = f"{name_of(day)}_expired"
    start, end = bounds(day)
    expired = _as_table(name)
    c = access_log.c
    async with engine.begin() as connection:
        already = select(c.id).where(c.ts >= start, c.ts < end, c.id == expired.c.id)
        await connection.execute(insert(access_log).from_select(
            [col.name for col in c], select(expired).where(kept(expired.c), ~exists(already))))
        dropped = (await connection.execute(select(func.count()).select_from(expired).where(~kept(expired.c)))).scalar_one()
        await connection.exec_driver_sql(f'DROP TABLE "{name}"')
    return int(dropped)


def _as_table(name: str) -> Any:
    return table(name, *(column(col.name, col.type) for col in access_log.c))
