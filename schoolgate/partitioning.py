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

from sqlalchemy import ColumnElement, Connection, column, exists, func, insert, select, table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.db import access_log, create_engine, dispose_within, is_sqlite
from schoolgate.partitions import (
    DEFAULT,
    Span,
    bounds,
    day_named,
    days_to_prepare,
    expired,
    month_name_of,
    months_to_merge,
    name_of,
    span_named,
)

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


def partition_names(connection: Connection) -> list[str]:
    return list(connection.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'access_log'::regclass").scalars())


def day_partitions(connection: Connection) -> dict[date, str]:
    return {day: name for name in partition_names(connection) if (day := day_named(name)) is not None}


def _literal(ts: datetime) -> str:
    return f"'{ts.astimezone(UTC).isoformat()}'"


def _new_table(connection: Connection, name: str) -> None:
    # With access_log's indexes, so attaching it links them instead of building them under the lock.
    connection.exec_driver_sql(f'CREATE TABLE "{name}" (LIKE access_log INCLUDING DEFAULTS INCLUDING INDEXES)')


def _attach(connection: Connection, name: str, span: Span) -> None:
    """Attach a table holding only records of `span`: a CHECK constraint proves it first, so attaching
    (which holds off no writer: SHARE UPDATE EXCLUSIVE on access_log) need not scan it."""
    start, end = span
    check = f"{name}_bounds"
    connection.exec_driver_sql(f'ALTER TABLE "{name}" ADD CONSTRAINT "{check}" '
                               f"CHECK (ts >= {_literal(start)} AND ts < {_literal(end)})")
    connection.exec_driver_sql(f'ALTER TABLE access_log ATTACH PARTITION "{name}" '
                               f"FOR VALUES FROM ({_literal(start)}) TO ({_literal(end)})")
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
    _attach(connection, name, bounds(day))
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

async def partitioned(engine: AsyncEngine) -> bool:
    if engine.dialect.name != "postgresql":
        return False
    async with engine.connect() as connection:
        return await connection.run_sync(is_partitioned)


async def drop_expired(engine: AsyncEngine, before: datetime, kept: Kept) -> int:
    """Drop the partitions wholly before `before`, keeping their `kept` records (flagged, illegal tier)
    in a new partition of the same span, then merge each month of such days into one partition.
    Returns the records dropped."""
    async with engine.connect() as connection:
        names = await connection.run_sync(partition_names)
        left_over = list((await connection.exec_driver_sql(
            "SELECT relname FROM pg_class WHERE relname LIKE 'access\\_log\\_%\\_expired' AND relkind = 'r'")).scalars())
    dropped = 0
    for name in left_over:  # a purge stopped between detaching a partition and dropping it
        dropped += await _finish(engine, name.removesuffix("_expired"), kept)
    for name in expired(names, before):
        dropped += await _reduce(engine, name, kept)
    async with engine.connect() as connection:
        months = months_to_merge(await connection.run_sync(day_partitions), before)
    for month, days in months.items():
        dropped += await _replace(engine, [name_of(day) for day in days], month_name_of(month), kept)
    return dropped


async def _reduce(engine: AsyncEngine, name: str, kept: Kept) -> int:
    """A partition past retention down to its kept records (none left: gone)."""
    span = span_named(name)
    assert span is not None
    c = access_log.c
    async with engine.connect() as connection:  # reads only: the writers carry on
        keeping, total = (await connection.execute(
            select(func.count().filter(kept(c)), func.count()).where(c.ts >= span[0], c.ts < span[1]))).one()
    if total and keeping == total:
        return 0  # reduced already
    return await _replace(engine, [name], name, kept)


async def _replace(engine: AsyncEngine, names: list[str], new: str, kept: Kept) -> int:
    """Put the kept records of partitions `names` into one new partition `new` covering `new`'s span
    (none if there are none), and drop the old ones; returns the records dropped with them."""
    span = span_named(new)
    assert span is not None
    c = access_log.c
    async with engine.begin() as connection:  # the copy: reads only, the writers carry on
        await connection.exec_driver_sql(f'DROP TABLE IF EXISTS "{new}_kept"')
        await connection.run_sync(_new_table, f"{new}_kept")
        keeping = (await connection.execute(insert(_as_table(f"{new}_kept")).from_select(
            [col.name for col in c], select(access_log).where(c.ts >= span[0], c.ts < span[1], kept(c))))).rowcount
        if not keeping:
            await connection.exec_driver_sql(f'DROP TABLE "{new}_kept"')
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            async with engine.begin() as connection:
                await connection.run_sync(_swap, names, new if keeping else None, span)
            break
        except DBAPIError as e:
            if "lock timeout" not in str(e) or attempt == SWAP_ATTEMPTS:
                raise
            log.warning("retention waited %d ms for access_log (a long query?); trying again", LOCK_TIMEOUT_MS)
            await asyncio.sleep(attempt)
    return sum([await _finish(engine, name, kept) for name in names])


def _swap(connection: Connection, names: list[str], new: str | None, span: Span) -> None:
    """Detach the old partitions and attach the new one in their place, in one transaction: a reader
    sees the one or the others, and a writer waits for it only as long as the catalogue changes take."""
    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
    for name in names:
        connection.exec_driver_sql(f'ALTER TABLE access_log DETACH PARTITION "{name}"')
        connection.exec_driver_sql(f'ALTER TABLE "{name}" RENAME TO "{name}_expired"')
    if new:
        connection.exec_driver_sql(f'ALTER TABLE "{new}_kept" RENAME TO "{new}"')
        _attach(connection, new, span)


async def _finish(engine: AsyncEngine, name: str, kept: Kept) -> int:
    """Put back the kept records a detached partition received after they were copied, then drop it;
    returns the records dropped with it."""
    span = span_named(name)
    assert span is not None
    expired_table = _as_table(f"{name}_expired")
    c = access_log.c
    async with engine.begin() as connection:
        already = select(c.id).where(c.ts >= span[0], c.ts < span[1], c.id == expired_table.c.id)
        await connection.execute(insert(access_log).from_select(
            [col.name for col in c], select(expired_table).where(kept(expired_table.c), ~exists(already))))
        dropped = (await connection.execute(
            select(func.count()).select_from(expired_table).where(~kept(expired_table.c)))).scalar_one()
        await connection.exec_driver_sql(f'DROP TABLE "{name}_expired"')
    return int(dropped)


def _as_table(name: str) -> Any:
    return table(name, *(column(col.name, col.type) for col in access_log.c))
