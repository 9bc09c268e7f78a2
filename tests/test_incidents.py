"""Incidents made as flagged records are written (SQLite and PostgreSQL): episodes merged
and split at the window and after closing, records replayed from the journal, reads that
never write, the migration's backfill, and gaps in seq (lost records) per gateway."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import bindparam, event, insert, select, text
from test_records import make_record, metric, sqlite_url

from schoolgate import db
from schoolgate import records as records_module
from schoolgate.db import access_log, incident_records, incidents
from schoolgate.episodes import Attempt, Episode, SubjectKind, group_attempts
from schoolgate.records import AccessRecord, RecordWriter, record_as_json, seq_gaps
from schoolgate.reports import incidents as triage
from schoolgate.reports.incidents import IncidentFilter, Status

from support.postgres import postgres_bin

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=30)


def flagged(minutes: float, *, user: str | None = "alice", flag: str = "self-harm", severity: int = 3,
            client_ip: str = "10.1.2.3", **changes: object) -> AccessRecord:
    return make_record(ts=T0 + timedelta(minutes=minutes), user=user, client_ip=client_ip, flag=flag,
                       flag_severity=severity, flag_detail="test", ref=f"SG-{int(minutes * 10):04d}-TEST", **changes)


# --- the decision: plain Python ------------------------------------------------------------

def attempt(record_id: int, minutes: float, severity: int = 3, subject: str = "alice", flag: str = "self-harm") -> Attempt:
    return Attempt(record_id, T0 + timedelta(minutes=minutes), SubjectKind.USER, subject, flag, severity, None)


def test_attempts_within_the_window_are_one_episode_and_a_longer_pause_starts_another() -> None:
    episodes = group_attempts([], [attempt(3, 29), attempt(1, 0), attempt(2, 1, severity=4), attempt(4, 60)], WINDOW)
    assert [(e.id, e.attempts, e.severity, e.record_id, sorted(e.added)) for e in episodes] == [
        (None, 3, 4, 2, [1, 2, 3]), (None, 1, 3, 4, [4])]
    assert (episodes[0].first_seen, episodes[0].last_seen) == (T0, T0 + timedelta(minutes=29))


def test_other_pupils_and_other_risks_are_other_episodes() -> None:
    episodes = group_attempts([], [attempt(1, 0), attempt(2, 1, subject="bob"), attempt(3, 2, flag="pornography")],
                              WINDOW)
    assert len(episodes) == 3


def test_only_the_open_episodes_offered_are_extended() -> None:
    open_one = Episode(7, SubjectKind.USER, "alice", "self-harm", T0, T0, 2, 3, 100, None)
    touched = group_attempts([open_one], [attempt(1, 10), attempt(2, 11, subject="bob")], WINDOW)
    assert touched[0] is open_one and (open_one.attempts, open_one.added) == (3, [1])
    assert touched[1].id is None


# --- at write time, on both databases -------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "log.db")
        return
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed")
    yield request.getfixturevalue("database_url")


def write(url: str, *records: AccessRecord, spool: Path | None = None, **options: object) -> None:
    async def run() -> None:
        writer = RecordWriter(url, spool_path=spool, **options)  # type: ignore[arg-type]
        await writer.start()
        for record in records:
            writer.submit(record)
        await writer.close()

    asyncio.run(run())


def incident_rows(url: str) -> list[tuple]:
    async def read() -> list[tuple]:
        engine = db.create_engine(url)
        try:
            async with engine.connect() as conn:
                i = incidents.c
                rows = (await conn.execute(select(i.id, i.subject_kind, i.subject, i.flag, i.severity, i.attempts,
                                                  i.first_seen, i.last_seen, i.status).order_by(i.id))).all()
                links = (await conn.execute(select(incident_records))).all()
        finally:
            await engine.dispose()
        attempts = {row.id: sum(1 for link in links if link.incident_id == row.id) for row in rows}
        return [(r.subject_kind, r.subject, r.flag, r.severity, r.attempts, attempts[r.id],
                 r.first_seen - T0, r.last_seen - T0, r.status) for r in rows]

    return asyncio.run(read())


M = timedelta(minutes=1)


def test_a_batch_of_flagged_records_makes_episodes_as_it_is_written(url: str, tmp_path: Path) -> None:
    write(url,
          flagged(0), flagged(0.1, severity=4), flagged(0.2),  # one page load, three flagged requests
          make_record(ts=T0, user="alice"),  # not flagged: no incident
          flagged(25),  # within 30 minutes of the last: the same episode
          flagged(70),  # 45 minutes later: a new one
          flagged(1, user=None, client_ip="10.9.9.9", flag="pornography", severity=2),  # nobody signed in
          spool=tmp_path / "journal.jsonl")
    assert incident_rows(url) == [
        ("user", "alice", "self-harm", 4, 4, 4, 0 * M, 25 * M, "new"),
        ("device", "10.9.9.9", "pornography", 2, 1, 1, 1 * M, 1 * M, "new"),
        ("user", "alice", "self-harm", 3, 1, 1, 70 * M, 70 * M, "new"),
    ]
    # A later batch extends the open episode it belongs to, and the worst attempt is the one shown.
    write(url, flagged(80, severity=5, client_ip="10.7.7.7", group="sixth-form"), spool=tmp_path / "journal.jsonl")
    assert incident_rows(url)[2] == ("user", "alice", "self-harm", 5, 2, 2, 70 * M, 80 * M, "new")

    async def shown() -> tuple[triage.Incident, list[int], list[list[int]]]:
        engine = db.create_engine(url)
        try:
            item = await triage.get(engine, 3)
            # The queue's group and device are the shown record's, which the worse attempt changed.
            found = [[i.id for i in await triage.queue(engine, wanted)] for wanted in (
                IncidentFilter(device="10.7.7.7"), IncidentFilter(group="sixth-form"), IncidentFilter(group="pupils"))]
            return item, [record.flag_severity for _, record in await triage.attempts(engine, 3)], found
        finally:
            await engine.dispose()

    item, severities, found = asyncio.run(shown())
    assert item.record.flag_severity == 5 and item.record_id != 0 and severities == [3, 5]
    assert found == [[3], [3], [1, 2]]


def test_an_attempt_after_closing_starts_a_new_episode(url: str, tmp_path: Path) -> None:
    spool = tmp_path / "journal.jsonl"
    write(url, flagged(0), flagged(5), spool=spool)

    async def close() -> None:
        engine = db.create_engine(url)
        try:
            await triage.update_incident(engine, 1, actor="dsl", role="dsl", status=Status.CLOSED, note="spoke to her")
        finally:
            await engine.dispose()

    asyncio.run(close())
    write(url, flagged(10), spool=spool)  # well within the window, but the first is closed
    assert incident_rows(url) == [
        ("user", "alice", "self-harm", 3, 2, 2, 0 * M, 5 * M, "closed"),
        ("user", "alice", "self-harm", 3, 1, 1, 10 * M, 10 * M, "new"),
    ]


def test_records_replayed_from_the_journal_make_their_incidents_once(url: str, tmp_path: Path) -> None:
    spool = tmp_path / "journal.jsonl"
    records = [flagged(n, seq=n + 1) for n in range(4)]
    write(url, *records[:2], spool=spool)
    # As if a previous run stored the first two, then died before emptying its journal.
    spool.write_text("".join(json.dumps(record_as_json(r)) + "\n" for r in records))
    write(url, spool=spool)
    assert incident_rows(url) == [("user", "alice", "self-harm", 3, 4, 4, 0 * M, 3 * M, "new")]


def test_the_window_is_the_policy_s(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "log.db")
    write(url, flagged(0), flagged(8), episode_window=lambda: timedelta(minutes=5))
    assert [row[4] for row in incident_rows(url)] == [1, 1]


def test_reading_the_queue_and_an_incident_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    write(sqlite_url(path), flagged(0), flagged(1, severity=5, user="bob"), make_record(ts=T0))
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # as the gateway's writer holds it, mid-batch

    async def read() -> tuple[list[int], int]:
        engine = db.create_engine(sqlite_url(path))
        try:
            # Queue reads used to INSERT the missing incidents first: "database is locked" here.
            items = await triage.queue(engine, IncidentFilter())
            one = await triage.get(engine, items[0].id)
            return [i.severity for i in items], len(await triage.attempts(engine, one.id))
        finally:
            await engine.dispose()

    try:
        assert asyncio.run(asyncio.wait_for(read(), 3)) == ([5, 3], 1)  # worst first
    finally:
        lock.execute("ROLLBACK")
        lock.close()


def test_the_queue_chooses_its_page_from_the_incidents_before_reading_their_records(url: str) -> None:
    """Worst first, then the most recently seen, for each filter, the page cut at `limit`; the page is
    chosen from the incidents' index alone (joined first, every open incident's record was read
    before the LIMIT: over a week at 10 M records, most of the queue's 200 ms)."""
    write(url, *[flagged(n * 60, user=f"pupil{n}", severity=2 + n % 3, group=("primary", "secondary")[n % 2],
                         client_ip=f"10.0.0.{n % 3}") for n in range(9)])
    severity = {f"pupil{n}": 2 + n % 3 for n in range(9)}

    def expected(names: list[str]) -> list[str]:  # seen an hour apart, in order: the later, the more recent
        return sorted(names, key=lambda name: (severity[name], int(name[5:])), reverse=True)[:3]

    async def scenario() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        engine = db.create_engine(url)
        statements: list[tuple[str, object]] = []
        try:
            for name in ("pupil4", "pupil7"):
                [item] = await triage.queue(engine, IncidentFilter(user=name))
                await triage.update_incident(engine, item.id, actor="dsl", role="dsl", status=Status.CLOSED, note="")
            filters = {"open": IncidentFilter(statuses=triage.OPEN), "closed": IncidentFilter(statuses=(Status.CLOSED,)),
                       "all": IncidentFilter(), "group": IncidentFilter(group="primary", statuses=triage.OPEN),
                       "device": IncidentFilter(device="10.0.0.1", statuses=triage.OPEN)}
            found = {name: [i.subject for i in await triage.queue(engine, wanted, limit=3)]
                     for name, wanted in filters.items()}
            if engine.dialect.name != "sqlite":
                return found, {}
            event.listen(engine.sync_engine, "before_cursor_execute",
                         lambda conn, cursor, sql, params, *rest: statements.append((sql, params)))
            for name in ("open", "group", "device"):
                await triage.queue(engine, filters[name])
            async with engine.connect() as conn:
                plans = {name: [row[-1] for row in await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
                         for name, (sql, params) in zip(("open", "group", "device"),
                                                        [s for s in statements if s[0].startswith("SELECT")], strict=True)}
            return found, plans
        finally:
            await engine.dispose()

    found, plans = asyncio.run(scenario())
    if plans:  # SQLite: the page from the incidents alone, then the records of the page
        assert "SEARCH incidents USING COVERING INDEX ix_incidents_status_severity_last_seen (status=?)" in plans["open"]
        assert all(sum("access_log" in line for line in plan) == 1 for plan in plans.values()), plans
    everyone = [f"pupil{n}" for n in range(9)]
    open_ones = [name for name in everyone if name not in ("pupil4", "pupil7")]
    assert found == {"open": expected(open_ones), "closed": expected(["pupil4", "pupil7"]), "all": expected(everyone),
                     "group": expected([f"pupil{n}" for n in (0, 2, 6, 8)]),
                     "device": expected([f"pupil{n}" for n in (1,)])}


def test_the_migration_backfills_old_flagged_records_into_episodes(url: str) -> None:
    def to_0006(connection) -> None:
        config = db.alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")

    async def as_before() -> None:
        engine = db.create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(to_0006)
                for n, (minutes, severity, user) in enumerate([(0, 3, "alice"), (1, 4, "alice"), (2, 3, "alice"),
                                                               (3, 3, "bob"), (90, 3, "alice")], start=1):
                    record = flagged(minutes, user=user, severity=severity, seq=n)
                    await conn.execute(insert(access_log).values(
                        id=n, ts=record.ts, instance=record.instance, seq=n, client_ip=record.client_ip,
                        username=user, group_name="pupils", method="GET", scheme="https", host="x.example",
                        categories="", verdict="allow", rule="r", reason="r", flag=record.flag,
                        flag_severity=severity, ref=record.ref))
                # The first record already had an incident, made when the console was read, and was closed.
                await conn.execute(text("INSERT INTO incidents (record_id, ref, status, updated_at) "
                                        "VALUES (1, 'SG-0000-TEST', 'closed', :at)")
                                   .bindparams(bindparam("at", type_=db.UtcDateTime())), {"at": T0 + timedelta(hours=1)})
        finally:
            await engine.dispose()

    asyncio.run(as_before())
    asyncio.run(db.upgrade(url))
    assert incident_rows(url) == [
        ("user", "alice", "self-harm", 3, 1, 1, 0 * M, 0 * M, "closed"),  # kept as it was: one attempt
        ("user", "alice", "self-harm", 4, 2, 2, 1 * M, 2 * M, "new"),
        ("user", "bob", "self-harm", 3, 1, 1, 3 * M, 3 * M, "new"),
        ("user", "alice", "self-harm", 3, 1, 1, 90 * M, 90 * M, "new"),
    ]


# --- lost records: gaps in seq ----------------------------------------------------------

def test_gaps_are_found_per_gateway_and_the_metric_counts_only_its_own(url: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    write(url, *[make_record(ts=now - timedelta(minutes=10 - n), instance="gw-other", seq=n) for n in (1, 2, 6, 7)],
          spool=tmp_path / "other.jsonl")
    write(url, *[make_record(ts=now - timedelta(minutes=5 - n), instance="gw-own", seq=n) for n in (1, 2, 3)],
          spool=tmp_path / "own.jsonl", instance="gw-own")
    assert metric("schoolgate_record_seq_missing") == 0  # gw-other's three lost records are not this gateway's

    async def gaps() -> list:
        engine = db.create_engine(url)
        try:
            async with engine.connect() as conn:
                return await seq_gaps(conn, now - timedelta(hours=1))
        finally:
            await engine.dispose()

    [gap] = asyncio.run(gaps())
    assert (gap.instance, gap.missing, gap.after_seq) == ("gw-other", 3, 2)
    assert (gap.after, gap.before) == (now - timedelta(minutes=8), now - timedelta(minutes=4))

    write(url, make_record(ts=now, instance="gw-own", seq=9), spool=tmp_path / "own.jsonl", instance="gw-own")
    write(url, spool=tmp_path / "own.jsonl", instance="gw-own")  # the next start counts again
    assert metric("schoolgate_record_seq_missing") == 5


def test_gaps_are_counted_from_the_instance_seq_index_not_by_reading_the_period_s_records(tmp_path: Path) -> None:
    """The period is bisected in seq, then counted in (instance, seq): the time index would read
    every record of the period from the table (a second for three days at 10 M records)."""
    url = sqlite_url(tmp_path / "log.db")
    now = datetime.now(UTC)
    old = [make_record(ts=now - timedelta(days=10), instance="gw-retired", seq=n) for n in (1, 3)]
    write(url, *old, *[make_record(ts=now - timedelta(hours=50 - n), instance="gw-hall", seq=n)
                       for n in (*range(1, 40), *range(45, 50))], spool=tmp_path / "spool.jsonl")
    statements: list[tuple[str, object]] = []

    async def scenario() -> tuple[list, list[str]]:
        engine = db.create_engine(url)
        try:
            def remember(conn: object, cursor: object, sql: str, params: object, *rest: object) -> None:
                statements.append((sql, params))

            event.listen(engine.sync_engine, "before_cursor_execute", remember)
            async with engine.connect() as conn:
                found = await seq_gaps(conn, now - timedelta(hours=24))
                event.remove(engine.sync_engine, "before_cursor_execute", remember)
                plans = [row[-1] for sql, params in statements
                         for row in await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
            return found, plans
        finally:
            await engine.dispose()

    [gap], plans = asyncio.run(scenario())
    assert (gap.instance, gap.missing, gap.after_seq) == ("gw-hall", 5, 39)  # gw-retired's gap is older
    assert (gap.after, gap.before) == (now - timedelta(hours=11), now - timedelta(hours=5))
    assert not [p for p in plans if "ix_access_log_ts" in p or p.startswith("SCAN access_log")], plans


def test_the_console_asks_for_lost_records_at_most_once_a_minute(url: str, tmp_path: Path) -> None:
    from schoolgate.reports.queries import LostRecords

    now = datetime.now(UTC)
    write(url, *[make_record(ts=now - timedelta(minutes=10 - n), instance="gw-hall", seq=n) for n in (1, 2, 5)],
          spool=tmp_path / "hall.jsonl")

    async def scenario() -> list[list[int]]:
        engine = db.create_engine(url)
        lost = LostRecords(engine)
        try:
            first = await lost.gaps(now)
            await asyncio.to_thread(write, url, make_record(ts=now, instance="gw-hall", seq=9),
                                    spool=tmp_path / "hall.jsonl")  # three more lost: 6, 7 and 8
            within_the_minute = await lost.gaps(now + timedelta(seconds=30))
            after_it = await lost.gaps(now + timedelta(seconds=61))
            return [[g.missing for g in found] for found in (first, within_the_minute, after_it)]
        finally:
            await engine.dispose()

    assert asyncio.run(scenario()) == [[2], [2], [2, 3]]


def stored_statuses(url: str) -> list[int]:
    async def read() -> list[int]:
        engine = db.create_engine(url)
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(select(access_log.c.status).order_by(access_log.c.id))).scalars())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_a_failure_making_incidents_takes_the_batch_back_so_no_flagged_record_is_stored_without_one(
        url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # On PostgreSQL the rows go in by COPY on asyncpg's own connection, which SQLAlchemy's
    # transaction (begun at its first statement) does not see: they must still commit or roll
    # back with their incidents, or a retry stores them twice and a flagged one without its incident.
    def broken(*args: object) -> None:
        raise ValueError("a bug in making incidents")

    monkeypatch.setattr(records_module, "store_incidents", broken)
    write(url, make_record(status=1), flagged(0, status=2), make_record(status=3), spool=tmp_path / "journal.jsonl")
    assert stored_statuses(url) == [1, 3]
    assert [json.loads(line)["status"] for line in (tmp_path / "journal.rejected.jsonl").read_text().splitlines()] == [2]


def test_a_big_batch_is_copied_in_slices_in_one_transaction(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # asyncpg encodes a COPY's rows on the event loop without yielding (about 1.7 µs each):
    # a batch of thousands goes in as several COPY statements, still one transaction.
    asyncpg = pytest.importorskip("asyncpg")
    copied: list[int] = []
    real_copy = asyncpg.Connection.copy_records_to_table

    async def counting_copy(self: object, table_name: str, *, records: list[tuple], **options: object) -> object:
        copied.append(len(records))
        return await real_copy(self, table_name, records=records, **options)

    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", counting_copy)
    transactions_before = metric("schoolgate_record_write_seconds_count")
    records = [make_record(status=n) for n in range(1, 2501)] + [flagged(0, status=2501)]
    write(database_url, *records, spool=tmp_path / "journal.jsonl", flush_interval=60, max_batch_size=5000)
    assert copied == [1000, 1000, 501]
    assert metric("schoolgate_record_write_seconds_count") - transactions_before == 1
    assert stored_statuses(database_url) == list(range(1, 2502))
    assert incident_rows(database_url) == [("user", "alice", "self-harm", 3, 1, 1, 0 * M, 0 * M, "new")]


def test_a_journal_loaded_again_skips_exactly_the_records_stored_with_the_same_time(url: str, tmp_path: Path) -> None:
    # Stored times are compared as the driver returns them (a string on SQLite, a datetime on
    # PostgreSQL): a record stored already is skipped, another with its seq but a different time is not.
    journal = tmp_path / "journal.jsonl"
    write(url, make_record(seq=1, status=1), make_record(seq=2, status=2), spool=journal)
    later = make_record(seq=2, status=20, ts=make_record().ts + timedelta(minutes=1))
    journal.write_text("".join(json.dumps(record_as_json(r)) + "\n"
                               for r in (make_record(seq=1, status=1), later, make_record(seq=3, status=3))))
    write(url, spool=journal)
    assert stored_statuses(url) == [1, 2, 20, 3]
