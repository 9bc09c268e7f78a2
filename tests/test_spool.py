"""The runtime spool: while the database refuses writes, records move to a local
file and go in, in order, once it is back. SQLite stands in for an unreachable
server by holding an exclusive lock (see tests/test_postgres.py for the real thing)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import pytest
from test_records import make_record, metric, short_busy_timeout, sqlite_url, stored_rows, wait_until  # noqa: F401

from schoolgate.records import RecordWriter, record_as_json


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
