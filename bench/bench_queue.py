"""The DSL's queue at volume: the one-off 0007 backfill, then reading the queue and the lost-records check.

    ./dev bench bench_queue.py                          # 1,000,000 records, 1 % flagged, SQLite
    ./dev bench bench_queue.py --records 10000000 --flagged 0.5

Fills an SQLite database at revision 0006 (records over the last `--days`, 300 pupils),
times the upgrade that groups the flagged records into episodes, then times reading the
open queue (worst first, 500 rows), one incident with its attempts, and the gaps-in-seq
query the queue and settings pages run. Reads take no write lock, so they cost the
gateway's record writer nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine as create_sync_engine

from schoolgate import db
from schoolgate.reports import incidents
from schoolgate.reports.incidents import IncidentFilter
from schoolgate.reports.queries import lost_records


def fill(path: Path, records: int, flagged_percent: float, days: int) -> int:
    engine = create_sync_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        config = db.alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")
    engine.dispose()
    every = max(1, round(100 / flagged_percent)) if flagged_percent else 0
    start = datetime.now(UTC) - timedelta(days=days)
    step = timedelta(days=days) / records
    flagged = 0
    with sqlite3.connect(path) as conn:
        rows = []
        for n in range(records):
            is_flagged = bool(every) and n % every == 0
            flagged += is_flagged
            rows.append(((start + step * n).strftime("%Y-%m-%d %H:%M:%S.%f"), n + 1, f"10.1.{n % 250}.{n % 200}",
                         f"pupil{(n // every if is_flagged else n) % 300}", f"www.site{n % 5000}.example",
                         ("self-harm", "pornography", "circumvention")[n % 3] if is_flagged else None,
                         (2 + n % 3) if is_flagged else None))
            if len(rows) == 50_000 or n == records - 1:
                conn.executemany("INSERT INTO access_log (ts, instance, seq, client_ip, username, group_name, method, "
                                 "scheme, host, categories, verdict, rule, reason, flag, flag_severity) VALUES "
                                 "(?, 'bench', ?, ?, ?, 'pupils', 'GET', 'https', ?, '', 'allow', 'default', 'r', ?, ?)",
                                 rows)
                rows.clear()
    return flagged


async def reads(url: str, repeats: int) -> dict[str, float]:
    engine = db.create_engine(url)
    timings: dict[str, list[float]] = {"queue": [], "incident": [], "lost": []}
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            items = await incidents.queue(engine, IncidentFilter(statuses=incidents.OPEN))
            timings["queue"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await incidents.get(engine, items[0].id)
            await incidents.attempts(engine, items[0].id)
            timings["incident"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await lost_records(engine, datetime.now(UTC))
            timings["lost"].append(time.perf_counter() - started)
    finally:
        await engine.dispose()
    return {name: statistics.median(values) * 1e3 for name, values in timings.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--flagged", type=float, default=1.0, help="percentage of records flagged")
    parser.add_argument("--days", type=int, default=30, help="the records span this many days up to now")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sg-bench-queue-"))
    try:
        path = workdir / "bench.db"
        print(f"configuration: SQLite in {workdir}, {args.records:,} records over {args.days} days, "
              f"{args.flagged:g} % flagged, 300 pupils; {platform.python_implementation()} "
              f"{platform.python_version()}, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f})")
        flagged = fill(path, args.records, args.flagged, args.days)
        url = f"sqlite+aiosqlite:///{path}"
        started = time.perf_counter()
        asyncio.run(db.upgrade(url))
        took = time.perf_counter() - started
        with sqlite3.connect(path) as conn:
            made = conn.execute("SELECT count(*) FROM incidents").fetchone()[0]
        print(f"upgrade to the latest revision (backfills of 0007_queue, 0008_queries): "
              f"{took:.1f} s for {flagged:,} flagged records into {made:,} incidents")
        timings = asyncio.run(reads(url, args.repeats))
        print(f"median of {args.repeats}: open queue (500 rows, worst first) {timings['queue']:.0f} ms; one incident "
              f"with its attempts {timings['incident']:.0f} ms; lost-records check (3 days) {timings['lost']:.0f} ms")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
