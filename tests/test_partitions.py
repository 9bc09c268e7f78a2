"""access_log partitioned by UTC day on a real PostgreSQL (0008_partitions): the migration keeps
every record, each day's records land in that day's partition, a record no partition covers is
still stored, and retention drops whole days while keeping their flagged records."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, insert, select
from test_records import make_record
from test_retention import policy_in

from schoolgate import db
from schoolgate.partitioning import prepare
from schoolgate.partitions import (
    DEFAULT,
    day_of,
    expired,
    month_bounds,
    month_name_of,
    months_to_merge,
    name_of,
    span_named,
)
from schoolgate.records import _INSERT_COLUMNS, AccessRecord, RecordWriter, _row_values
from schoolgate.reports.incidents import IncidentFilter, attempts, queue
from schoolgate.reports.queries import find_by_ref, recent
from schoolgate.reports.retention import purge

from support.postgres import journal_of, postgres_bin

pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (apt install postgresql)")

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.date()


def upgrade_to(connection: Connection, revision: str) -> None:
    config = db.alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def write(url: str, made: list[AccessRecord]) -> None:
    writer = RecordWriter(url, spool_path=journal_of(url))
    await writer.start()
    for record in made:
        writer.submit(record)
    await writer.close()


async def rows_of(url: str, sql: str) -> list[Any]:
    engine = db.create_engine(url)
    try:
        async with engine.connect() as connection:
            return list((await connection.exec_driver_sql(sql)).all())
    finally:
        await engine.dispose()


def where_each_host_is(url: str) -> dict[str, str]:
    return dict(asyncio.run(rows_of(url, "SELECT host, tableoid::regclass::text FROM access_log")))


def test_the_migration_from_0007_moves_every_record_and_queries_still_find_them(database_url: str) -> None:
    made = [make_record(ts=NOW - timedelta(days=days, minutes=n), host=f"site{n}.example", seq=n + 1,
                        ref=f"REF{n}", **({"flag": "self-harm", "flag_severity": 4, "user": f"pupil{n}"}
                                          if n % 3 == 0 else {}))
            for n, days in enumerate([40, 40, 12.5, 3, 1, 0])]

    async def scenario() -> tuple[list[Any], list[Any], int, int, list[str]]:
        engine = db.create_engine(database_url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(upgrade_to, "0007_reports")
                await connection.execute(insert(db.access_log), [
                    dict(zip(_INSERT_COLUMNS, _row_values(r, False), strict=True)) for r in made])
                # Incidents as 0007 made them (store_incidents writes today's columns, which come later).
                for row in (await connection.execute(select(db.access_log).where(
                        db.access_log.c.flag_severity.is_not(None)))).all():
                    incident = (await connection.execute(insert(db.incidents).values(
                        record_id=row.id, ref=row.ref, status="new", updated_at=row.ts, subject_kind="user",
                        subject=row.username, flag=row.flag, severity=row.flag_severity, first_seen=row.ts,
                        last_seen=row.ts, attempts=1).returning(db.incidents.c.id))).scalar_one()
                    await connection.execute(insert(db.incident_records).values(incident_id=incident, record_id=row.id))
            async with engine.connect() as connection:
                before = (await connection.execute(select(db.access_log).order_by(db.access_log.c.id))).all()
            await db.upgrade(database_url)
            async with engine.connect() as connection:
                after = (await connection.execute(select(db.access_log).order_by(db.access_log.c.id))).all()
            incidents = await queue(engine, IncidentFilter())
            linked = sum([len(await attempts(engine, i.id)) for i in incidents])
            found = [r.host for ref in ("REF0", "REF2", "REF5") for r in await find_by_ref(engine, ref)]
            return before, after, len(incidents), linked, found + [r.host for r in await recent(engine, limit=2)]
        finally:
            await engine.dispose()

    before, after, incidents, linked, found = asyncio.run(scenario())
    assert after == before and len(after) == len(made)  # every record, with its id
    assert incidents == linked == 2  # each flagged record still its incident's attempt
    assert found == ["site0.example", "site2.example", "site5.example", "site5.example", "site4.example"]
    placed = where_each_host_is(database_url)
    assert placed == {r.host: name_of(day_of(r.ts)) for r in made}
    assert asyncio.run(rows_of(database_url, "SELECT to_regclass('access_log_unpartitioned')")) == [(None,)]

    # New records continue the same id sequence: no id is reused.
    asyncio.run(write(database_url, [make_record(ts=NOW, host="new.example", seq=100)]))
    assert asyncio.run(rows_of(database_url, "SELECT id FROM access_log WHERE host = 'new.example'"))[0][0] > max(
        row.id for row in after)


def test_each_day_lands_in_its_partition_and_a_record_with_none_is_still_stored(
        database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    made = [make_record(ts=NOW + timedelta(days=days), host=f"in{days}.example", seq=n + 1)
            for n, days in enumerate([0, 1, 5, 60, -200])]
    asyncio.run(write(database_url, made))
    placed = where_each_host_is(database_url)
    # Today and the days ahead were prepared as the writer started; the far ones had no partition.
    assert placed == {"in0.example": name_of(TODAY), "in1.example": name_of(TODAY + timedelta(days=1)),
                      "in5.example": name_of(TODAY + timedelta(days=5)), "in60.example": DEFAULT,
                      "in-200.example": DEFAULT}

    async def maintain() -> None:
        engine = db.create_engine(database_url)
        try:
            await prepare(engine)
        finally:
            await engine.dispose()

    with caplog.at_level(logging.WARNING, logger="schoolgate.partitions"):
        asyncio.run(maintain())
    assert "2 access records of 2 days" in caplog.text
    placed = where_each_host_is(database_url)
    assert placed["in60.example"] == name_of(day_of(NOW + timedelta(days=60)))
    assert placed["in-200.example"] == name_of(day_of(NOW - timedelta(days=200)))
    assert len(placed) == len(made)


def test_retention_drops_whole_days_and_keeps_their_flagged_records(tmp_path: Path, database_url: str) -> None:
    """Four records an hour for 40 days, one in four of them flagged: with records_days 30 the days
    wholly before the cut-off lose their partition (their flagged records get a new one), the day of
    the cut-off is deleted up to it, and everything newer is untouched."""
    policy = policy_in(tmp_path)
    policy = replace(policy, gateway=replace(policy.gateway, database=database_url))
    cutoff = NOW - timedelta(days=30)
    made = [make_record(ts=NOW - timedelta(hours=hours, minutes=n * 15), host=f"h{hours}-{n}.example", seq=0,
                        **({"flag": "self-harm", "flag_severity": 4, "user": f"pupil{hours}"} if n == 0 else {}))
            for hours in range(40 * 24) for n in range(4)]
    asyncio.run(write(database_url, made))

    async def scenario() -> tuple[Any, Any, int, int]:
        engine = db.create_engine(database_url)
        try:
            await prepare(engine)  # the older days were in the default partition: each gets its own
            incidents = len(await queue(engine, IncidentFilter(statuses=())))
            counted = await purge(engine, policy, now=NOW, dry_run=True)
            deleted = await purge(engine, policy, now=NOW)
            return counted, deleted, incidents, len(await queue(engine, IncidentFilter(statuses=())))
        finally:
            await engine.dispose()

    counted, deleted, incidents_before, incidents_after = asyncio.run(scenario())
    expired = [r for r in made if r.flag_severity is None and r.ts < cutoff]
    assert deleted.records == counted.records == len(expired) > 0
    assert incidents_after == incidents_before  # flagged records are kept 365 days, and their incidents with them
    left = {row.host for row in asyncio.run(rows_of(database_url, "SELECT host FROM access_log"))}
    assert left == {r.host for r in made} - {r.host for r in expired}
    partitions = dict(asyncio.run(rows_of(database_url,
        "SELECT tableoid::regclass::text, count(*) FILTER (WHERE flag_severity IS NULL) FROM access_log GROUP BY 1")))
    for day in {day_of(r.ts) for r in made}:
        # Days wholly expired: a new partition with the day's flagged records only; the cut-off's day: what
        # is after the cut-off; newer days: all of them.
        assert partitions[name_of(day)] == sum(r.flag_severity is None and day_of(r.ts) == day and r.ts >= cutoff
                                               for r in made)
    # No detached day is left behind, and nothing waits in the default partition.
    assert asyncio.run(rows_of(database_url, "SELECT count(*) FROM pg_class WHERE relname LIKE '%expired' "
                                             "OR relname LIKE '%kept'")) == [(0,)]
    assert DEFAULT not in partitions
    audit = asyncio.run(rows_of(database_url, "SELECT after FROM audit_log WHERE action = 'retention.purge'"))
    assert f'"records": {len(expired)}' in audit[0][0]


def test_days_reduced_to_their_flagged_records_merge_into_one_partition_a_month(tmp_path: Path,
                                                                                  database_url: str) -> None:
    """Flagged records are kept for years: a month of days holding only them becomes one partition,
    so the table does not grow a partition a day for ever."""
    policy = policy_in(tmp_path)
    policy = replace(policy, gateway=replace(policy.gateway, database=database_url))
    made = [make_record(ts=NOW - timedelta(days=days), host=f"{kind}{days}.example", seq=0,
                        **({"flag": "self-harm", "flag_severity": 4, "user": f"pupil{days}"} if kind == "flagged"
                           else {"rule": "illegal iwf", "verdict": "block"} if kind == "illegal" else {}))
            for days in range(0, 120, 3) for kind in ("ordinary", "flagged", "illegal")]
    asyncio.run(write(database_url, made))

    async def purge_twice() -> None:
        engine = db.create_engine(database_url)
        try:
            await purge(engine, policy, now=NOW)
            await purge(engine, policy, now=NOW)  # nothing more to do: the same partitions
        finally:
            await engine.dispose()

    asyncio.run(purge_twice())
    cutoff = NOW - timedelta(days=30)
    placed = where_each_host_is(database_url)
    kept = {r.host for r in made if r.ts >= cutoff or not r.host.startswith("ordinary")}
    assert set(placed) == kept
    for r in made:
        if r.host in kept:
            merged = month_bounds(day_of(r.ts))[1] <= cutoff
            assert placed[r.host] == (month_name_of(day_of(r.ts)) if merged else name_of(day_of(r.ts))), r.host
    assert len({name for name in placed.values() if len(name) == len("access_log_YYYYMM")}) >= 2
    assert len(asyncio.run(queue_of(database_url))) == sum(r.host.startswith("flagged") for r in made)


async def queue_of(url: str) -> list[Any]:
    engine = db.create_engine(url)
    try:
        return await queue(engine, IncidentFilter(statuses=()))
    finally:
        await engine.dispose()


def test_a_purge_cut_short_after_detaching_a_day_loses_none_of_its_kept_records(tmp_path: Path,
                                                                                 database_url: str) -> None:
    """Stopped between detaching a day and dropping it (a crash, a lost connection): the next purge puts
    back the day's flagged records the new partition does not have, and drops the rest."""
    policy = policy_in(tmp_path)
    policy = replace(policy, gateway=replace(policy.gateway, database=database_url))
    old = NOW - timedelta(days=50)
    made = [make_record(ts=old, host="old.example", seq=0),
            make_record(ts=old, host="old-flagged.example", seq=0, flag="self-harm", flag_severity=4),
            make_record(ts=NOW, host="new.example", seq=0)]
    asyncio.run(write(database_url, made))
    day = name_of(day_of(old))

    async def interrupted_then_purged() -> Any:
        engine = db.create_engine(database_url)
        try:
            await prepare(engine)  # the old day gets its partition
            async with engine.begin() as connection:
                await connection.exec_driver_sql(f"ALTER TABLE access_log DETACH PARTITION {day}")
                await connection.exec_driver_sql(f"ALTER TABLE {day} RENAME TO {day}_expired")
            return await purge(engine, policy, now=NOW)
        finally:
            await engine.dispose()

    deleted = asyncio.run(interrupted_then_purged())
    assert deleted.records == 1
    assert set(where_each_host_is(database_url)) == {"old-flagged.example", "new.example"}
    assert asyncio.run(rows_of(database_url, f"SELECT to_regclass('{day}_expired')")) == [(None,)]


def test_retention_drops_a_day_past_every_limit_with_its_incidents(tmp_path: Path, database_url: str) -> None:
    policy = policy_in(tmp_path)
    policy = replace(policy, gateway=replace(policy.gateway, database=database_url))
    old = NOW - timedelta(days=400)
    made = [make_record(ts=old, host="old.example", seq=0),
            make_record(ts=old, host="old-flagged.example", seq=0, flag="self-harm", flag_severity=4),
            make_record(ts=NOW, host="new.example", seq=0)]
    asyncio.run(write(database_url, made))

    async def scenario() -> tuple[Any, int]:
        engine = db.create_engine(database_url)
        try:
            deleted = await purge(engine, policy, now=NOW)
            return deleted, len(await queue(engine, IncidentFilter(statuses=())))
        finally:
            await engine.dispose()

    deleted, incidents = asyncio.run(scenario())
    assert (deleted.records, deleted.flagged_records, deleted.incidents, incidents) == (1, 1, 1, 0)
    assert where_each_host_is(database_url) == {"new.example": name_of(TODAY)}
    assert asyncio.run(rows_of(database_url, f"SELECT to_regclass('{name_of(day_of(old))}')")) == [(None,)]
    assert asyncio.run(rows_of(database_url, "SELECT count(*) FROM access_log")) == [(1,)]


def test_sqlite_is_not_partitioned(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sg.db"
    asyncio.run(write(url, [make_record(ts=NOW, seq=1)]))
    assert [name for (name,) in asyncio.run(rows_of(url, "SELECT name FROM sqlite_master WHERE type = 'table' "
                                                         "AND name LIKE 'access_log%'"))] == ["access_log"]


def test_which_partitions_are_past_retention_and_which_months_merge() -> None:
    """Whole spans only: the partition the cut-off falls in stays (its rows go one by one, up to the cut-off)."""
    cutoff = datetime(2027, 1, 3, 9, 30, tzinfo=UTC)
    names = ["access_log_20270104", "access_log_20270103", "access_log_20270102", "access_log_202612",
             "access_log_default", "audit_log"]
    assert expired(names, cutoff) == ["access_log_202612", "access_log_20270102"]
    assert expired(names, datetime(2027, 1, 3, tzinfo=UTC)) == ["access_log_202612", "access_log_20270102"]
    assert span_named("access_log_202612") == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    days = [datetime(2026, 11, d, tzinfo=UTC).date() for d in (3, 30)] + [datetime(2026, 12, 31, tzinfo=UTC).date()]
    assert months_to_merge(days, datetime(2027, 1, 1, tzinfo=UTC)) == {
        datetime(2026, 11, 1, tzinfo=UTC).date(): days[:2], datetime(2026, 12, 1, tzinfo=UTC).date(): days[2:]}
    assert list(months_to_merge(days, datetime(2026, 12, 31, 23, tzinfo=UTC))) == [datetime(2026, 11, 1).date()]
