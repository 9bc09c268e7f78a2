"""How long the period report takes over a large access log (SQLite).

    ./dev bench bench_report.py                          # 1,000,000 records over 30 days, a 30-day report
    ./dev bench bench_report.py --records 10000000       # the 10 M a large school logs in a month
    ./dev bench bench_report.py --database /tmp/big.db   # keep (or reuse) the filled database

Fills a database with records shaped like a school's (5,000 sites, four groups, one in ten
blocked, one in a hundred flagged, bytes both ways), then times `build_report` for the
whole period and prints the configuration with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schoolgate.db import create_engine, upgrade
from schoolgate.reports.report import build_report

GROUPS = ("pupils-primary", "pupils-secondary", "staff", "guests")
CATEGORIES = (",news,", ",games,", ",social-media,", "", "", ",education,", ",pornography,", ",vpn-proxy,")
CHUNK = 50_000


def fill(path: Path, records: int, days: int, end: datetime) -> None:
    """Rows straight through sqlite3 (as SQLAlchemy stores them: naive UTC text), the indexes built after, for speed."""
    rng = random.Random(42)
    with sqlite3.connect(path) as db:
        indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'access_log' "
                             "AND sql IS NOT NULL").fetchall()
        for name, _ in indexes:
            db.execute(f'DROP INDEX "{name}"')
    span = days * 86400
    columns = ("ts", "instance", "seq", "client_ip", "username", "group_name", "method", "scheme", "host", "port",
               "categories", "verdict", "rule", "reason", "status", "bytes_in", "bytes_out", "decision_us",
               "flag", "flag_severity")
    sql = f"INSERT INTO access_log ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    with sqlite3.connect(path) as db:
        for first in range(0, records, CHUNK):
            rows = []
            for n in range(first, min(first + CHUNK, records)):
                blocked = rng.random() < 0.1
                flagged = rng.random() < 0.01
                site = int(rng.paretovariate(1.2)) % 5000
                ts = (end - timedelta(seconds=span * (records - n) / records)).replace(tzinfo=None)
                rows.append((ts.isoformat(sep=" ", timespec="microseconds"), "bench", n, f"10.{n % 4}.{n % 250}.{n % 200}",
                             f"pupil{n % 1500}", GROUPS[n % 4], "GET", "https", f"www.site{site}.co.uk", 443,
                             CATEGORIES[site % len(CATEGORIES)], "block" if blocked else "allow", "category", "bench",
                             403 if blocked else 200, 0 if blocked else 800, 2_000 if blocked else 40_000 + site, 10,
                             "self-harm" if flagged else None, 4 if flagged else None))
            db.executemany(sql, rows)
        for _, create in indexes:
            db.execute(create)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--database", type=Path, help="an SQLite file to fill (if new) and keep")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    with tempfile.TemporaryDirectory(prefix="sg-bench-report-") as scratch:
        path = args.database or Path(scratch) / "bench.db"
        fresh = not path.exists()
        asyncio.run(upgrade(f"sqlite+aiosqlite:///{path}"))
        if fresh:
            began = time.perf_counter()
            fill(path, args.records, args.days, end)
            print(f"filled {args.records:,} records over {args.days} days in {time.perf_counter() - began:.1f} s")
        with sqlite3.connect(path) as db:
            stored = db.execute("SELECT count(*) FROM access_log").fetchone()[0]
        print(f"configuration: SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}, "
              f"{os.cpu_count()} cores, {stored:,} records, {path.stat().st_size / 1e9:.2f} GB, "
              f"report over {args.days} days")

        async def report() -> float:
            engine = create_engine(f"sqlite+aiosqlite:///{path}")
            began = time.perf_counter()
            await build_report(engine, start, end)
            took = time.perf_counter() - began
            await engine.dispose()
            return took

        # The first report over a new log folds every settled day into the summaries (once per day,
        # normally spread over the days as reports are read); the ones after read the summaries.
        print(f"build_report, first (folds {2 * args.days} days): {asyncio.run(report()):.2f} s")
        times = sorted(asyncio.run(report()) for _ in range(args.runs))
        print(f"build_report, then: best {times[0]:.2f} s, median {times[len(times) // 2]:.2f} s over {args.runs} runs")


if __name__ == "__main__":
    main()
