"""Recording at volume: offer records to the RecordWriter at a fixed rate and report what it sustains.

    ./dev bench bench_records.py                       # SQLite in a temporary directory, 50,000/s for 10 s
    ./dev bench bench_records.py --rate 80000 --seconds 5
    ./dev bench bench_records.py --postgres            # a throwaway PostgreSQL server (tests/support/postgres.py)
    ./dev bench bench_records.py --database postgresql+asyncpg://...
    ./dev bench bench_records.py --flagged 2           # 2 % of records flagged: incidents made as they are written

Prints the configuration (and the write path: SQLite executemany through aiosqlite's thread, or
PostgreSQL COPY), then: records offered and stored per second (stored = the database had every
record by the end), the transactions and their mean size, the event loop's stalls while
recording (p50, p99, max lateness of a 1 ms timer: what every proxied request would feel) next
to the same timer's lateness with no writer for 2 s before (what the busy machine alone does) and
the most CPU the loop's thread spent within one wait of the timer (work on the loop, as against
waiting for a core or the GIL: on a shared machine the stalls are mostly the latter),
the deepest in-memory queue, and whether the writer had to fall back to reading its journal
(the database not keeping up).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from copy import copy
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from schoolgate.db import access_log, create_engine, incidents, is_sqlite
from schoolgate.metrics import REGISTRY
from schoolgate.records import AccessRecord, RecordWriter

TICK = 0.005  # records are offered in bursts this often, as requests finish


def make_record(n: int, flagged_percent: float) -> AccessRecord:
    """Every so often a flagged one, from one of 300 pupils: episodes that grow and episodes that start."""
    flagged = flagged_percent > 0 and n % round(100 / flagged_percent) == 0
    return AccessRecord(
        ts=datetime.now(UTC), instance="bench", seq=0, client_ip=f"10.1.{n % 250}.{n % 200}", user=f"pupil{n % 300}",
        group="pupils-secondary", method="GET", scheme="https", host=f"www.site{n % 5000}.example",
        port=443, url=f"https://www.site{n % 5000}.example/page/{n}?q=1", categories=("news",), verdict="allow",
        rule="default", reason="allowed by default", status=200, bytes_in=0, bytes_out=18_000,
        decision_us=12, flag="self-harm" if flagged else None, flag_severity=(3 + n % 2) if flagged else None,
        flag_detail="bench" if flagged else None, ref="SG-BENC-H000" if flagged else None,
    )


def percentiles(lateness: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max, in ms."""
    lateness = sorted(lateness)
    return statistics.median(lateness) * 1e3, lateness[int(len(lateness) * 0.99)] * 1e3, lateness[-1] * 1e3


def transactions() -> tuple[float, float]:
    """Transactions the writer committed and records they held, so far (its own metrics)."""
    return (REGISTRY.get_sample_value("schoolgate_record_write_seconds_count") or 0.0,
            REGISTRY.get_sample_value("schoolgate_records_written_total") or 0.0)


async def measure(database_url: str, spool_dir: Path, rate: int, seconds: float, batch_size: int,
                  max_batch_size: int, flagged_percent: float) -> dict[str, float]:
    lateness: list[float] = []
    loop_work: list[float] = []  # the loop thread's CPU time within each wait
    stop = asyncio.Event()

    async def monitor() -> None:
        while not stop.is_set():
            before, cpu_before = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - before - 0.001)
            loop_work.append(time.thread_time() - cpu_before)

    watcher = asyncio.create_task(monitor())
    await asyncio.sleep(2)  # the machine alone: no writer yet
    idle = percentiles(lateness)
    lateness.clear()
    loop_work.clear()
    writer = RecordWriter(database_url, spool_path=spool_dir / "bench.unwritten.jsonl", batch_size=batch_size,
                          max_batch_size=max_batch_size)
    await writer.start()
    transactions_before, written_before = transactions()
    records = [make_record(n, flagged_percent) for n in range(min(rate, 100_000))]  # built up front: the bench measures the writer
    offered = 0
    max_queue = 0
    went_to_journal = False
    started = time.perf_counter()
    cpu_started = time.process_time()
    loop_cpu_started = time.thread_time()  # this thread runs the event loop
    burst = max(1, int(rate * TICK * 4))  # up to four ticks' worth, as timers fire late
    while (elapsed := time.perf_counter() - started) < seconds:
        # At most one burst per tick: a producer that has fallen behind does not catch up in one
        # long stall of its own (the rate offered is then below the target, and says so).
        for _ in range(min(burst, int(rate * elapsed) - offered)):
            writer.submit(copy(records[offered % len(records)]))  # a fresh record each time: submit numbers it
            offered += 1
        max_queue = max(max_queue, writer.queue_depth)
        went_to_journal = went_to_journal or writer.spool_bytes > 0
        await asyncio.sleep(TICK)
    offering_took = time.perf_counter() - started
    loop_cpu = time.thread_time() - loop_cpu_started  # before close, which waits on the database
    stop.set()
    await watcher
    await writer.close()
    took = time.perf_counter() - started
    cpu = time.process_time() - cpu_started  # every thread of this process: loop, journal reads, SQLite
    transactions_after, written_after = transactions()
    engine = create_engine(database_url)
    async with engine.connect() as connection:
        stored = (await connection.execute(select(func.count()).select_from(access_log))).scalar_one()
        made = (await connection.execute(select(func.count(), func.sum(incidents.c.attempts)))).one()
    await engine.dispose()
    stall = percentiles(lateness)
    work = percentiles(loop_work)
    return {
        "offered_per_s": offered / offering_took,
        "stored": stored,
        "incidents": made[0],
        "attempts": made[1] or 0,
        "offered": offered,
        "stored_per_s": stored / took,
        "close_s": took - offering_took,
        "transactions": transactions_after - transactions_before,
        "records_per_transaction": (written_after - written_before) / max(transactions_after - transactions_before, 1),
        "stall_p50_ms": stall[0], "stall_p99_ms": stall[1], "stall_max_ms": stall[2],
        "idle_p50_ms": idle[0], "idle_p99_ms": idle[1], "idle_max_ms": idle[2],
        "work_p99_ms": work[1], "work_max_ms": work[2],
        "max_queue": max_queue,
        "journal": went_to_journal,
        "cpu_us_per_record": cpu / max(stored, 1) * 1e6,
        "loop_cpu_us_per_record": loop_cpu / max(offered, 1) * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=50_000, help="records offered per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=500, help="records waiting that wake the writer")
    parser.add_argument("--max-batch-size", type=int, default=5000, help="the most one transaction takes")
    parser.add_argument("--flagged", type=float, default=0.0, help="percentage of records flagged for the DSL")
    parser.add_argument("--database", help="SQLAlchemy URL (default: SQLite in a temporary directory)")
    parser.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL server")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sg-bench-records-"))
    server = None
    try:
        if args.postgres:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from support.postgres import start_postgres

            server = start_postgres()
            database_url = server.create_database("bench")
        else:
            database_url = args.database or f"sqlite+aiosqlite:///{workdir}/bench.db"
        path = "SQLite INSERTs of 1000 rows (aiosqlite thread)" if is_sqlite(database_url) else "PostgreSQL COPY (asyncpg)"
        print(f"configuration: {database_url.split('@')[-1]}, {path}, {args.rate} records/s offered for {args.seconds:g} s "
              f"in {TICK * 1e3:g} ms bursts, batch {args.batch_size} up to {args.max_batch_size}, {args.flagged:g} % "
              f"flagged, journal in {workdir}; "
              f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs "
              f"(load {os.getloadavg()[0]:.1f})")
        result = asyncio.run(measure(database_url, workdir, args.rate, args.seconds, args.batch_size,
                                     args.max_batch_size, args.flagged))
    finally:
        if server is not None:
            server.stop("immediate")
            shutil.rmtree(server.root, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"offered {result['offered_per_s']:,.0f} records/s; stored {result['stored']:,} of {result['offered']:,} "
          f"({result['stored_per_s']:,.0f}/s including {result['close_s']:.2f} s to finish at close) in "
          f"{result['transactions']:,.0f} transactions of {result['records_per_transaction']:,.0f} records on average")
    if args.flagged:
        print(f"incidents made as records were written: {result['incidents']:,} holding {result['attempts']:,} "
              "flagged attempts")
    print(f"event-loop stall: p50 {result['stall_p50_ms']:.2f} ms, p99 {result['stall_p99_ms']:.2f} ms, "
          f"max {result['stall_max_ms']:.1f} ms (the machine alone, before: p50 {result['idle_p50_ms']:.2f} ms, "
          f"p99 {result['idle_p99_ms']:.2f} ms, max {result['idle_max_ms']:.1f} ms); deepest queue {result['max_queue']:,}; "
          f"fell back to the journal: {'yes' if result['journal'] else 'no'}")
    print(f"CPU the loop's thread spent within one wait of the timer: p99 {result['work_p99_ms']:.2f} ms, "
          f"max {result['work_max_ms']:.1f} ms (offering included)")
    print(f"CPU per record stored (offering included): {result['cpu_us_per_record']:.1f} µs, so one idle core "
          f"would carry about {1e6 / result['cpu_us_per_record']:,.0f} records/s; of it on the event loop, while "
          f"offering: {result['loop_cpu_us_per_record']:.1f} µs per record offered")
    return 0 if result["stored"] == result["offered"] else 1


if __name__ == "__main__":
    sys.exit(main())
