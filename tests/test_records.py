"""The access-record store against real SQLite files: batching, WAL, flush on close, locks, spooling."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate import db
from schoolgate import records as records_module
from schoolgate.metrics import REGISTRY
from schoolgate.policy import UrlLogging
from schoolgate.records import (
    AccessRecord,
    RecordWriter,
    default_spool_path,
    new_reference,
    normalise_reference,
    record_as_json,
    record_from_row,
    url_for_log,
)


def make_record(**changes: object) -> AccessRecord:
    record = AccessRecord(
        ts=datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC),
        instance="gw1",
        seq=0,
        client_ip="10.1.2.3",
        user="alice",
        group="pupils",
        method="GET",
        scheme="https",
        host="www.example.com",
        port=443,
        url="https://www.example.com/page?q=1",
        categories=("news", "games"),
        verdict="allow",
        rule="default",
        reason="allowed by default",
        status=200,
        bytes_in=0,
        bytes_out=1234,
        ref=None,
        decision_us=17,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def stored_rows(path: Path, columns: str = "instance, seq") -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute(f"SELECT {columns} FROM access_log ORDER BY id").fetchall()


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # So a locked database fails a write in 50 ms instead of waiting 5 s.
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 50)


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "mode", "expected"),
    [
        ("https://example.com/a?b=c", "https", "example.com", 443, UrlLogging.FULL, "https://example.com/a?b=c"),
        ("https://example.com/a?b=c", "https", "example.com", 443, UrlLogging.PATHLESS, "https://example.com"),
        ("http://example.com/a", "http", "example.com", 80, UrlLogging.PATHLESS, "http://example.com"),
        ("http://example.com:8080/a", "http", "example.com", 8080, UrlLogging.PATHLESS, "http://example.com:8080"),
        ("https://[::1]:8443/a", "https", "::1", 8443, UrlLogging.PATHLESS, "https://[::1]:8443"),
        ("https://example.com/a", "https", "example.com", None, UrlLogging.PATHLESS, "https://example.com"),
        ("https://example.com/a", "https", "example.com", 443, UrlLogging.NONE, None),
    ],
)
def test_url_for_log(url: str, scheme: str, host: str, port: int | None, mode: UrlLogging, expected: str | None) -> None:
    assert url_for_log(url, scheme, host, port, mode) == expected


def test_references_are_short_unambiguous_and_unique() -> None:
    references = [new_reference() for _ in range(10_000)]
    for reference in references:
        assert re.fullmatch(r"SG-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}", reference), reference
    assert len(set(references)) == len(references)


@pytest.mark.parametrize("typed", ["SG-7K3F-9QX2", "sg-7k3f-9qx2", "sg 7k3f 9qx2", "7K3F9QX2", "SG-7K3F-9QX2 "])
def test_references_are_normalised_as_people_type_them(typed: str) -> None:
    assert normalise_reference(typed) == "SG-7K3F-9QX2"


def test_misread_letters_in_a_reference_become_digits() -> None:
    assert normalise_reference("sg-1oil-ABCD") == "SG-1011-ABCD"


def test_a_connection_broken_mid_copy_is_retried_not_blamed_on_the_record() -> None:
    import asyncpg
    from asyncpg.exceptions._base import InternalClientError

    # What asyncpg raised when PostgreSQL was killed mid-COPY: the record was set aside as if it were bad.
    assert records_module.is_transient(InternalClientError("cannot switch to state 21; another operation (2) is in progress"))
    assert records_module.is_transient(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
    assert not records_module.is_transient(asyncpg.DataError("invalid input for query argument $1"))
    assert not records_module.is_transient(ValueError("a record the table cannot hold"))


def test_default_spool_path() -> None:
    assert default_spool_path("sqlite+aiosqlite:////var/lib/schoolgate/log.db") == Path("/var/lib/schoolgate/log.db.unwritten.jsonl")
    assert default_spool_path("postgresql+asyncpg://gw@db/schoolgate") == Path("schoolgate-unwritten.jsonl")


def test_upgrade_is_idempotent_and_matches_the_table_definitions(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    asyncio.run(db.upgrade(sqlite_url(path)))
    db._upgraded.discard(sqlite_url(path))  # as a second process would: the database is asked again
    asyncio.run(db.upgrade(sqlite_url(path)))

    heads = ScriptDirectory.from_config(db.alembic_config()).get_heads()
    assert len(heads) == 1, f"the migrations have several heads, {heads}: revise the newest one instead"
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(heads[0],)]
    engine = create_sync_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), db.metadata)
    engine.dispose()
    assert differences == [], "db.py and the migrations disagree; add a revision"


def test_a_database_stamped_with_both_0005_revisions_moves_to_the_single_head(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    engine = create_sync_engine(f"sqlite:///{path}")
    with engine.begin() as connection:  # as the build that had two heads left it
        config = db.alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "0005_front")
        command.upgrade(config, "0005_identity")
    engine.dispose()
    with sqlite3.connect(path) as connection:
        assert sorted(connection.execute("SELECT version_num FROM alembic_version").fetchall()) == [("0005_front",), ("0005_identity",)]

    asyncio.run(db.upgrade(sqlite_url(path)))

    [head] = ScriptDirectory.from_config(db.alembic_config()).get_heads()  # 0006 merged them; later ones follow
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]


def test_close_writes_every_submitted_record_in_batches_as_big_as_allowed(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    written_before = metric("schoolgate_records_written_total")
    batches_before = metric("schoolgate_record_write_seconds_count")

    async def scenario() -> None:
        # A long interval: only full batches and close() may trigger writes.
        writer = RecordWriter(sqlite_url(path), batch_size=500, max_batch_size=2000, flush_interval=60)
        await writer.start()
        for _ in range(5500):
            writer.submit(make_record())
        assert writer.queue_depth == 5500
        assert metric("schoolgate_record_queue_depth") == 5500
        await writer.close()
        assert writer.queue_depth == 0
        assert metric("schoolgate_record_queue_depth") == 0

    asyncio.run(scenario())

    # In order, also across SQLite statements of 1000 rows and the rest's executemany.
    assert stored_rows(path) == [("gw1", seq) for seq in range(1, 5501)]
    assert metric("schoolgate_records_written_total") - written_before == 5500
    # Everything waiting goes in one transaction, up to the cap: 2000 + 2000 + 1500.
    assert metric("schoolgate_record_write_seconds_count") - batches_before == 3
    assert not default_spool_path(sqlite_url(path)).exists()


def test_stored_columns(tmp_path: Path) -> None:
    path = tmp_path / "log.db"

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path))
        await writer.start()
        writer.submit(make_record(verdict="block", ref="SG-AAAA-BBBB", status=403, user=None))
        await writer.close()

    asyncio.run(scenario())
    columns = "ts, username, group_name, categories, verdict, ref, status, url"
    assert stored_rows(path, columns) == [
        ("2026-11-23 10:00:00.123456", None, "pupils", ",news,games,", "block", "SG-AAAA-BBBB", 403, "https://www.example.com/page?q=1")
    ]
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM access_log WHERE categories LIKE '%,games,%'").fetchone() == (1,)
        assert connection.execute("SELECT count(*) FROM access_log WHERE categories LIKE '%,game,%'").fetchone() == (0,)


def test_every_field_is_stored_as_submitted_also_in_statements_of_many_rows(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    records = [make_record(status=n, user=f"pupil{n}" if n % 3 else None, categories=("news",) * (n % 2),
                           ts=make_record().ts + timedelta(seconds=n), ref=f"SG-{n:04d}-TEST", url_cut=n % 5 == 0,
                           flag="self-harm" if n % 400 == 0 else None, flag_severity=3 if n % 400 == 0 else None,
                           duration_ms=n * 7, identity_source="portal")
               for n in range(1, 1202)]  # a statement of 1000 rows, then 201 by executemany

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), flush_interval=60)
        await writer.start()
        for record in records:
            writer.submit(record)
        await writer.close()

    asyncio.run(scenario())
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM access_log ORDER BY id").fetchall()
    stored = [record_from_row({**dict(row), "ts": datetime.fromisoformat(row["ts"]).replace(tzinfo=UTC),
                               "url_cut": bool(row["url_cut"])}) for row in rows]
    assert stored == [replace(record, seq=n) for n, record in enumerate(records, start=1)]


def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "log.db"

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path))
        await writer.start()
        await writer.close()

    asyncio.run(scenario())
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_the_writers_connections_get_a_bigger_page_cache_durable_commits_and_a_short_lock_wait(tmp_path: Path) -> None:
    # synchronous=FULL: the journal is emptied once a commit returns, so the commit must survive a power cut.
    async def pragmas(engine: AsyncEngine) -> tuple[int, int, int]:
        async with engine.connect() as connection:
            values = [(await connection.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
                      for name in ("cache_size", "synchronous", "busy_timeout")]
        await engine.dispose()
        return values[0], values[1], values[2]

    url = sqlite_url(tmp_path / "log.db")
    assert asyncio.run(pragmas(db.create_engine(url, statement_timeout=10))) == (-db.WRITER_CACHE_KIB, 2, db.WRITER_BUSY_TIMEOUT_MS)
    assert asyncio.run(pragmas(db.create_engine(url))) == (-2000, 1, db.BUSY_TIMEOUT_MS)  # SQLite's default cache, NORMAL


def test_records_are_written_by_the_timer_without_close(tmp_path: Path) -> None:
    path = tmp_path / "log.db"

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), flush_interval=0.05)
        await writer.start()
        for _ in range(3):
            writer.submit(make_record())
        await wait_until(lambda: path.exists() and len(stored_rows(path)) == 3)
        await writer.close()

    asyncio.run(scenario())


def test_seq_continues_from_the_database_and_records_submitted_before_start_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "log.db"

    async def run(*records: AccessRecord, submit_before_start: bool = False) -> None:
        writer = RecordWriter(sqlite_url(path))
        if submit_before_start:
            for record in records:
                writer.submit(record)
        await writer.start()
        if not submit_before_start:
            for record in records:
                writer.submit(record)
        await writer.close()

    asyncio.run(run(make_record(), make_record(instance="gw2"), make_record()))
    asyncio.run(run(make_record(), make_record(instance="gw2"), submit_before_start=True))
    assert stored_rows(path) == [("gw1", 1), ("gw2", 1), ("gw1", 2), ("gw1", 3), ("gw2", 2)]


def test_locked_database_keeps_records_queued_until_the_lock_is_released(tmp_path: Path, short_busy_timeout: None) -> None:
    path = tmp_path / "log.db"
    failures_before = metric("schoolgate_record_write_failures_total")

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), flush_interval=0.05)
        await writer.start()
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        for _ in range(20):
            writer.submit(make_record())
        await wait_until(lambda: metric("schoolgate_record_write_failures_total") - failures_before >= 2)
        assert writer.queue_depth == 20
        assert lock.execute("SELECT count(*) FROM access_log").fetchone() == (0,)

        lock.execute("COMMIT")
        lock.close()
        await wait_until(lambda: writer.queue_depth == 0)
        await writer.close()

    asyncio.run(scenario())
    assert stored_rows(path) == [("gw1", seq) for seq in range(1, 21)]
    assert not default_spool_path(sqlite_url(path)).exists()


def test_close_while_locked_spools_and_the_next_start_loads_the_spool(tmp_path: Path, short_busy_timeout: None) -> None:
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    spooled_before = metric("schoolgate_records_spooled_total")
    dropped_before = metric("schoolgate_records_dropped_total")
    lock = sqlite3.connect(path, isolation_level=None)

    async def close_while_locked() -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool, close_retry_seconds=0.3)
        await writer.start()
        lock.execute("BEGIN EXCLUSIVE")
        for n in range(10):
            writer.submit(make_record(instance=f"gw{n % 2}", status=n))
        await writer.close()
        assert writer.queue_depth == 0

    asyncio.run(close_while_locked())
    assert lock.execute("SELECT count(*) FROM access_log").fetchone() == (0,)
    lock.execute("ROLLBACK")
    lock.close()
    spooled = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [(r["instance"], r["seq"], r["status"]) for r in spooled] == [(f"gw{n % 2}", n // 2 + 1, n) for n in range(10)]
    assert metric("schoolgate_records_spooled_total") - spooled_before == 10

    async def restart() -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool)
        await writer.start()
        writer.submit(make_record(instance="gw0", status=99))  # numbered after the spooled ones
        await writer.close()

    asyncio.run(restart())
    expected = [(f"gw{n % 2}", n // 2 + 1, n) for n in range(10)] + [("gw0", 6, 99)]
    assert stored_rows(path, "instance, seq, status") == expected
    assert not spool.exists()
    assert not spool.with_name(spool.name + ".replaying").exists()
    assert metric("schoolgate_records_dropped_total") == dropped_before


def test_a_stop_during_a_write_the_database_never_answers_keeps_the_close_deadline(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    hanging = asyncio.Event()

    async def database_that_never_answers(records: list[AccessRecord]) -> None:
        hanging.set()
        await asyncio.Event().wait()

    async def scenario() -> float:
        # A write may wait 60 s for an answer, but a stop must not wait for it.
        writer = RecordWriter(sqlite_url(path), spool_path=spool, close_retry_seconds=0.5, write_timeout=60.0, flush_interval=0.05)
        await writer.start()
        writer._insert = database_that_never_answers  # type: ignore[method-assign]
        for n in range(5):
            writer.submit(make_record(status=n))
        await asyncio.wait_for(hanging.wait(), 5)
        started = time.monotonic()
        await writer.close()
        return time.monotonic() - started

    took = asyncio.run(scenario())
    assert took < 5, f"close() waited {took:.1f} s for a write already in flight"
    assert [json.loads(line)["status"] for line in spool.read_text().splitlines()] == list(range(5))


def test_replay_interrupted_after_commit_does_not_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    records = [make_record(seq=n, status=n) for n in range(1, 4)]

    async def write(*batch: AccessRecord) -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool)
        await writer.start()
        for record in batch:
            writer.submit(record)
        await writer.close()

    asyncio.run(write(*records[:2]))
    # As if a previous run stored the first two, then died before emptying its journal.
    spool.write_text("".join(json.dumps(record_as_json(r)) + "\n" for r in records))
    asyncio.run(write())
    assert stored_rows(path, "seq, status") == [(1, 1), (2, 2), (3, 3)]
    assert not spool.exists()


def test_a_record_the_database_rejects_is_spooled_without_blocking_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    set_aside_before = metric("schoolgate_records_set_aside_total")

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), batch_size=1, spool_path=spool)
        await writer.start()
        writer.submit(make_record(status=1))
        writer.submit(make_record(status=2, group=None))  # violates NOT NULL: can never be stored
        writer.submit(make_record(status=3))
        await writer.close()

    asyncio.run(scenario())
    assert stored_rows(path, "status") == [(1,), (3,)]
    assert not spool.exists()
    rejected = tmp_path / "spool.rejected.jsonl"
    assert [json.loads(line)["status"] for line in rejected.read_text().splitlines()] == [2]
    assert metric("schoolgate_records_set_aside_total") - set_aside_before == 1  # counted, for the alert rule


def test_one_rejected_record_in_a_big_batch_costs_a_few_transactions_not_one_per_record(tmp_path: Path) -> None:
    # Halving the refused batch finds the bad record in about 2 log2(n) transactions; one by one,
    # a batch of thousands would take longer than the write deadline on a busy machine.
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    transactions_before = metric("schoolgate_record_write_seconds_count")

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool, flush_interval=60)
        await writer.start()
        for n in range(1, 2001):
            writer.submit(make_record(status=n, group=None if n == 1234 else "pupils"))
        await writer.close()

    asyncio.run(scenario())
    assert stored_rows(path, "status") == [(n,) for n in range(1, 2001) if n != 1234]
    assert [json.loads(line)["status"] for line in (tmp_path / "spool.rejected.jsonl").read_text().splitlines()] == [1234]
    assert metric("schoolgate_record_write_seconds_count") - transactions_before <= 12  # log2(2000) = 11


def test_a_failure_making_incidents_keeps_the_flagged_record_aside_counted_and_stores_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Incidents are made in the transaction that stores their records: if that fails for good,
    # the flagged record must not vanish, nor hold up the others.
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    set_aside_before = metric("schoolgate_records_set_aside_total")

    def broken(*args: object) -> None:
        raise ValueError("a bug in making incidents")

    monkeypatch.setattr(records_module, "store_incidents", broken)

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool)
        await writer.start()
        writer.submit(make_record(status=1))
        writer.submit(make_record(status=2, flag="self-harm", flag_severity=4))
        writer.submit(make_record(status=3))
        await writer.close()

    asyncio.run(scenario())
    assert stored_rows(path, "status") == [(1,), (3,)]
    rejected = tmp_path / "spool.rejected.jsonl"
    assert [json.loads(line)["flag"] for line in rejected.read_text().splitlines()] == ["self-harm"]
    assert metric("schoolgate_records_set_aside_total") - set_aside_before == 1


def test_a_record_submitted_after_close_is_spooled(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool)
        await writer.start()
        writer.submit(make_record())
        await writer.close()
        writer.submit(make_record(status=504))

    asyncio.run(scenario())
    assert stored_rows(path, "seq, status") == [(1, 200)]
    assert [(r["seq"], r["status"]) for r in map(json.loads, spool.read_text().splitlines())] == [(2, 504)]


def test_database_journal_and_rejected_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "state" / "log.db"  # directories it creates are 0700 too
    spool = tmp_path / "spool" / "spool.jsonl"
    lock = None

    async def scenario() -> None:
        nonlocal lock
        writer = RecordWriter(sqlite_url(path), spool_path=spool, close_retry_seconds=0.3)
        await writer.start()
        writer.submit(make_record(group=None))  # rejected by the database: set aside in .rejected.jsonl
        await wait_until(lambda: (tmp_path / "spool" / "spool.rejected.jsonl").exists())
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        writer.submit(make_record())  # stays in the journal
        for f in (path, path.with_name("log.db-wal"), path.with_name("log.db-shm"), spool):
            assert oct(stat.S_IMODE(f.stat().st_mode)) == "0o600", f
        await writer.close()

    old_umask = os.umask(0)
    try:
        asyncio.run(scenario())
    finally:
        os.umask(old_umask)
        if lock is not None:
            lock.close()
    files = [path, spool, spool.with_name("spool.rejected.jsonl")]
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: "0o600" for f in files}
    assert oct(stat.S_IMODE(path.parent.stat().st_mode)) == oct(stat.S_IMODE(spool.parent.stat().st_mode)) == "0o700"


def test_an_existing_database_readable_by_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    asyncio.run(db.upgrade(sqlite_url(path)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def unclean_stops(cause: str) -> float:
    return REGISTRY.get_sample_value("schoolgate_record_unclean_stops_total", {"cause": cause}) or 0.0


def test_a_journal_never_closed_is_reported_as_a_killed_process_or_a_stopped_machine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    marker = tmp_path / "spool.jsonl.running"

    async def start_and_close() -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool)
        await writer.start()
        assert marker.exists()
        await writer.close()

    asyncio.run(start_and_close())
    assert not marker.exists()  # a clean stop leaves nothing to report
    killed_before = unclean_stops("process")
    machine_before = unclean_stops("machine")

    marker.write_text(Path("/proc/sys/kernel/random/boot_id").read_text())  # as a kill -9 leaves it
    asyncio.run(start_and_close())
    assert unclean_stops("process") - killed_before == 1

    marker.write_text("an-earlier-boot\n")  # as a power cut leaves it
    with caplog.at_level(logging.CRITICAL, "schoolgate.records"):
        asyncio.run(start_and_close())
    assert unclean_stops("machine") - machine_before == 1
    assert "may be lost" in caplog.text
