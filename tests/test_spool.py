"""The runtime spool: while the database refuses writes, records move to a local
file and go in, in order, once it is back. SQLite stands in for an unreachable
server by holding an exclusive lock (see tests/test_postgres.py for the real thing)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from test_records import make_record, metric, short_busy_timeout, sqlite_url, stored_rows, wait_until  # noqa: F401

from schoolgate.records import RecordWriter, read_spool, record_as_json, record_from_json, record_from_row


@pytest.mark.usefixtures("short_busy_timeout")
def test_an_outage_moves_the_queue_to_the_spool_and_recovery_loads_it_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    spooled_before = metric("schoolgate_records_spooled_total")
    dropped_before = metric("schoolgate_records_dropped_total")

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool, flush_interval=0.05, spool_after_seconds=0.3)
        await writer.start()
        writer.submit(make_record(status=0))
        await wait_until(lambda: len(stored_rows(path)) == 1)

        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        for n in range(1, 41):
            writer.submit(make_record(instance=f"gw{n % 2}", status=n))
            await asyncio.sleep(0.02)
        # Past spool_after_seconds the queue is on disk, not in memory.
        await wait_until(lambda: writer.queue_depth == 0 and spool.exists())
        assert metric("schoolgate_record_spool_bytes") == writer.spool_bytes > 0
        for n in range(41, 51):
            writer.submit(make_record(instance=f"gw{n % 2}", status=n))  # newer than the spool: must follow it

        lock.execute("ROLLBACK")
        lock.close()
        await wait_until(lambda: len(stored_rows(path)) == 51)
        await wait_until(lambda: writer.spool_bytes == 0)
        assert metric("schoolgate_record_spool_bytes") == 0
        assert spool.stat().st_size == 0  # the journal is emptied once everything in it is stored
        await writer.close()
        assert not spool.exists()

    with caplog.at_level(logging.ERROR, "schoolgate.records"):
        asyncio.run(scenario())

    rows = stored_rows(path, "instance, seq, status")
    assert [status for _, _, status in rows] == list(range(51))
    for instance in ("gw0", "gw1"):
        seqs = [seq for name, seq, _ in rows if name == instance]
        assert seqs == list(range(1, len(seqs) + 1)), f"{instance} out of order or with gaps: {seqs}"
    assert metric("schoolgate_records_spooled_total") - spooled_before >= 40
    assert metric("schoolgate_records_dropped_total") == dropped_before
    assert "the database has refused access records" in caplog.text and str(spool) in caplog.text


@pytest.mark.usefixtures("short_busy_timeout")
def test_a_full_spool_drops_loudly_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    line_bytes = len(json.dumps(record_as_json(make_record(seq=1))) + "\n")
    dropped_before = metric("schoolgate_records_dropped_total")

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool, close_retry_seconds=0.2,
                              max_spool_bytes=int(line_bytes * 3.5))
        await writer.start()
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        for _ in range(5):
            writer.submit(make_record())
        await writer.close()
        lock.execute("ROLLBACK")
        lock.close()

    with caplog.at_level(logging.CRITICAL, "schoolgate.records"):
        asyncio.run(scenario())
    assert [json.loads(line)["seq"] for line in spool.read_text().splitlines()] == [1, 2, 3]
    assert metric("schoolgate_records_dropped_total") - dropped_before == 2
    assert "LOST 2 access records (gw1#4 onwards)" in caplog.text


def test_the_next_start_loads_the_journal_and_sets_aside_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    # A power cut mid-append cut the last line short.
    spool.write_text("".join(json.dumps(record_as_json(make_record(seq=n, status=n))) + "\n" for n in (1, 2, 3))
                     + '{"ts": "2026-11-23T10:0')

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool)
        await writer.start()
        writer.submit(make_record(status=4))  # numbered after every journalled record
        await writer.close()

    asyncio.run(scenario())
    assert stored_rows(path, "seq, status") == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert not spool.exists()
    assert (tmp_path / "spool.rejected.jsonl").read_text() == '{"ts": "2026-11-23T10:0\n'


# A journal line exactly as the json-encoding writer before msgspec appended it (every field, spaces
# after separators, the time with +00:00): a journal left by that version must load after an upgrade.
OLD_JOURNAL_LINE = (
    '{"ts": "2026-11-23T10:00:00.123456+00:00", "instance": "gw1", "seq": 7, "client_ip": "10.1.2.3", '
    '"user": "alice", "group": "pupils", "method": "GET", "scheme": "https", "host": "www.example.com", '
    '"port": 443, "url": "https://www.example.com/caf\\u00e9?q=1", "categories": ["news", "games"], '
    '"verdict": "block", "rule": "category news", "reason": "blocked", "status": 403, "bytes_in": 0, '
    '"bytes_out": 1234, "ref": "SG-7K3F-9QX2", "decision_us": 17, "search_engine": "google", '
    '"search_term": "how to", "flag": "self-harm", "flag_severity": 4, "flag_detail": "phrase", '
    '"url_cut": false, "duration_ms": 85, "identity_source": "portal"}\n'
)


def test_a_journal_written_by_the_json_encoding_version_loads_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    spool.write_text(OLD_JOURNAL_LINE)

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool)
        await writer.start()
        writer.submit(make_record(status=200))  # numbered after the journalled record
        await writer.close()

    asyncio.run(scenario())
    expected = record_from_json(json.loads(OLD_JOURNAL_LINE))
    assert stored_rows(path, "seq, status") == [(7, 403), (8, 200)]
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        row = connection.execute("SELECT * FROM access_log WHERE seq = 7").fetchone()
    assert record_from_row({**dict(row), "ts": datetime.fromisoformat(row["ts"]).replace(tzinfo=UTC)}) == expected
    assert row["url"] == "https://www.example.com/café?q=1"
    # Its incident was made as for a record from the queue.
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT subject, flag, attempts FROM incidents").fetchall() == [("alice", "self-harm", 1)]
    assert not spool.exists()


def test_journal_lines_read_back_as_the_same_record_with_json_too(tmp_path: Path) -> None:
    # An older version (a rollback) and `json` readers of the journal see the same record.
    path = tmp_path / "log.db"
    spool = tmp_path / "spool.jsonl"
    records = [make_record(ref="SG-7K3F-9QX2", flag="self-harm", flag_severity=4, search_term="naïve ☃"),
               make_record(ts=datetime(2026, 11, 23, 10, 0, tzinfo=timezone(timedelta(hours=1))), user=None, port=None),
               make_record(url="https://www.example.com/\udc80")]  # a lone surrogate (undecodable bytes): json's escape

    async def scenario() -> None:
        writer = RecordWriter(sqlite_url(path), spool_path=spool, flush_interval=60)
        await writer.start()
        for record in records:
            writer.submit(record)
        lines = spool.read_text(errors="surrogateescape").splitlines()
        assert [record_from_json(json.loads(line)) for line in lines] == records
        assert [record for record in read_spool(spool)] == records
        await writer.close()

    asyncio.run(scenario())
