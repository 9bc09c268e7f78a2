"""The review side at a school's volume: how long each query takes over a filled database, against its target.

    ./dev bench fill_records.py /tmp/sg-volume.db                  # 10 M records first (minutes)
    ./dev bench bench_queries.py /tmp/sg-volume.db                 # every query, cold and warm, and the purge
    ./dev bench bench_queries.py /tmp/sg-volume.db --only log      # names starting with "log"
    ./dev bench bench_queries.py /tmp/sg-volume.db --no-purge
    ./dev bench bench_queries.py postgresql+asyncpg://...          # a database filled by fill_records.py

Each query runs in a fresh Python process. *Cold*: before that process starts, the
database's pages are evicted from the OS page cache with posix_fadvise(DONTNEED) on the
SQLite file and its -wal/-shm (only this file's pages, so other work on the machine keeps
its cache; root's drop_caches would not); for PostgreSQL only the process is fresh (its
shared buffers are not dropped). *Warm*: the median of the next five runs in that process.
`log` is timed as the whole `schoolgate log` process (start-up, imports, query, output).

The queue, incident and report queries are the console's own code as it is (reports.incidents,
reports.queries.surrounding, reports.report.build_report), with the console's default
"open" status beside each filter. After every figure: its target and the plan of each
statement it ran (EXPLAIN QUERY PLAN / EXPLAIN).

The purge runs on a copy of the database with records_days set so that the oldest
30 days go, while a second connection stands in for the gateway's writer: it commits one
record every 20 ms and the longest it waited for the write lock is reported, with the WAL's
peak size (SQLite). On PostgreSQL (copies made with CREATE DATABASE ... TEMPLATE on the same
server) it runs twice in the same run: on the day-partitioned table as it is (whole days
dropped), and on a copy taken back to 0007_reports, an unpartitioned table, where the purge
deletes row by row as it did before 0008_partitions. Nothing is timed-asserted: the figures
are printed, with the configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.commandline import default_policy_path
from schoolgate.db import access_log, alembic_config, create_engine, is_sqlite, upgrade
from schoolgate.policy import Policy, RetentionSettings, load_policy
from schoolgate.reports.incidents import OPEN, IncidentFilter, Status, queue
from schoolgate.reports.queries import surrounding
from schoolgate.reports.recent import LogFilter, read
from schoolgate.reports.report import build_report
from schoolgate.reports.retention import purge

WARM_RUNS = 5
SLOW_SECONDS = 5.0
ROOT = Path(__file__).resolve().parents[1]
SCHOOLGATE = ROOT / ".venv" / "bin" / "schoolgate"

# name -> (target in ms, what it runs)
Query = Callable[[AsyncEngine, dict[str, Any]], Awaitable[object]]


def _queue(**filters: Any) -> Query:
    async def run(engine: AsyncEngine, sample: dict[str, Any]) -> object:
        values = {k: sample[v] if isinstance(v, str) and v in sample else v for k, v in filters.items()}
        return await queue(engine, replace(IncidentFilter(statuses=OPEN), **values))
    return run


async def _context(engine: AsyncEngine, sample: dict[str, Any]) -> object:
    return await surrounding(engine, sample["record_id"], 10)


async def _report(engine: AsyncEngine, sample: dict[str, Any]) -> object:
    return await build_report(engine, sample["month_start"], sample["now"])


def _log_query(**filters: Any) -> Query:
    async def run(engine: AsyncEngine, sample: dict[str, Any]) -> object:
        values = {k: sample[v] if isinstance(v, str) and v in sample else v for k, v in filters.items()}
        return await read(engine, LogFilter(limit=50, **values))
    return run


QUERIES: dict[str, tuple[float, Query]] = {
    "queue": (100, _queue()),
    "queue date (last 7 days)": (100, _queue(start="week_start")),
    "queue severity >= high": (100, _queue(min_severity=3)),
    "queue risk self-harm": (100, _queue(flag="self-harm")),
    "queue group pupils-primary": (100, _queue(group="pupils-primary")),
    "queue user": (100, _queue(user="user")),
    "queue device": (100, _queue(device="device")),
    "queue status closed": (100, _queue(statuses=(Status.CLOSED,))),
    "incident context (10 min)": (50, _context),
    "monthly report (30 days)": (2000, _report),
}
# `schoolgate log` arguments -> the same query in-process, for its plan
LOG_COMMANDS: dict[str, tuple[list[str], Query]] = {
    "log": ([], _log_query()),
    "log --verdict block": (["--verdict", "block"], _log_query(verdict="block")),
    "log --user": (["--user", "{user}"], _log_query(user="user")),
    "log --client": (["--client", "{device}"], _log_query(client_ip="device")),
    "log --host (popular)": (["--host", "google.com"], _log_query(host="google.com")),
    "log --host (rare)": (["--host", "{rare_host}"], _log_query(host="rare_host")),
    "log --since 1d": (["--since", "1d"], _log_query(since="day_start")),
    "log --user --since 1d": (["--user", "{user}", "--since", "1d"], _log_query(user="user", since="day_start")),
}
LOG_TARGET_MS = 200


def _warm_runs(cold_seconds: float) -> int:
    """A query that takes seconds (a full scan) is run warm once, not five times."""
    return WARM_RUNS if cold_seconds < SLOW_SECONDS else 1


def evict(url: str) -> str:
    """Drop the database's pages from the OS page cache; says what was done."""
    if not is_sqlite(url):
        return "fresh process (PostgreSQL's shared buffers kept)"
    database = make_url(url).database or ""
    for suffix in ("", "-wal", "-shm"):
        path = Path(database + suffix)
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return "fresh process, file pages evicted with posix_fadvise(DONTNEED)"


async def find_sample(engine: AsyncEngine) -> dict[str, Any]:
    """A recent flagged record's person and device, and the times the filters use."""
    c = access_log.c
    async with engine.connect() as conn:
        now = (await conn.execute(select(func.max(c.ts)))).scalar_one()
        row = (await conn.execute(select(c.id, c.username, c.client_ip).where(
            c.flag_severity.is_not(None), c.username.is_not(None)).order_by(c.ts.desc()).limit(1))).one()
    return {"now": now, "record_id": row.id, "user": row.username, "device": row.client_ip,
            "week_start": now - timedelta(days=7), "day_start": now - timedelta(days=1),
            "month_start": now - timedelta(days=30), "rare_host": "no-such-site.example"}


def plans_of(engine: AsyncEngine, statements: list[tuple[str, Any]]) -> list[str]:
    """The plan of each statement run, in the backend's own words."""
    sqlite = engine.dialect.name == "sqlite"

    async def explain() -> list[str]:
        out = []
        async with engine.connect() as conn:
            for sql, params in statements:
                if not sql.lstrip().upper().startswith(("SELECT", "INSERT", "DELETE", "WITH")):
                    continue
                rows = (await conn.exec_driver_sql(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql,
                                                   params)).all()
                plan = "\n".join(f"    {'  ' * _depth(rows, r)}{r[-1]}" if sqlite else f"    {r[0]}" for r in rows)
                out.append(f"  {' '.join(sql.split())[:160]}\n{plan}")
            await conn.rollback()
        return out
    return asyncio.run(explain())


def _depth(rows: Sequence[Any], row: Any) -> int:
    parents = {r[0]: r[1] for r in rows}
    depth, parent = 0, row[1]
    while parent in parents:
        depth, parent = depth + 1, parents[parent]
    return depth


def child(url: str, name: str) -> dict[str, Any]:
    """Run one query cold, then warm; return the times and the plans of the cold run's statements."""
    run = QUERIES[name][1] if name in QUERIES else LOG_COMMANDS[name][1]
    engine = create_engine(url)
    statements: list[tuple[str, Any]] = []
    capture = threading.Event()

    def remember(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        if capture.is_set():
            statements.append((sql, params))

    event.listen(engine.sync_engine, "before_cursor_execute", remember)

    async def timed() -> tuple[float, list[float], int]:
        sample = await find_sample(engine)  # not timed: the console has these from the request
        evict(url)
        capture.set()
        started = time.perf_counter()
        result = await run(engine, sample)
        cold = time.perf_counter() - started
        capture.clear()
        warm = []
        for _ in range(_warm_runs(cold)):
            started = time.perf_counter()
            await run(engine, sample)
            warm.append(time.perf_counter() - started)
        await engine.dispose()
        return cold, warm, len(result) if isinstance(result, list) else 1

    cold, warm, rows = asyncio.run(timed())
    engine = create_engine(url)
    plans = plans_of(engine, statements)
    asyncio.run(engine.dispose())
    return {"cold_ms": cold * 1e3, "warm_ms": statistics.median(warm) * 1e3, "rows": rows, "plans": plans}


def run_child(url: str, name: str) -> dict[str, Any]:
    evict(url)
    out = subprocess.run([sys.executable, __file__, url, "--child", name], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def time_log_command(url: str, name: str, sample: dict[str, Any]) -> tuple[float, float, float]:
    """The whole `schoolgate log` process: cold (evicted) and warm (median of five) wall time, and
    the warm runs' median CPU time (user + system), which other work on the machine does not inflate."""
    arguments = [a.format(**sample) for a in LOG_COMMANDS[name][0]]
    command = [str(SCHOOLGATE), "log", "--database", url, "--limit", "50", *arguments]
    cpu: list[float] = []

    def once() -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        took = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        return took

    evict(url)
    cold = once()
    cpu.clear()
    warm = statistics.median(once() for _ in range(_warm_runs(cold)))
    return cold * 1e3, warm * 1e3, statistics.median(cpu) * 1e3


def show(name: str, target: float, cold: float, warm: float, rows: int, plans: list[str]) -> None:
    verdict = "meets" if max(cold, warm) < target else "MISSES"
    print(f"\n{name}: cold {cold:,.1f} ms, warm {warm:,.1f} ms, {rows} rows; target < {target:g} ms: {verdict}")
    for plan in plans:
        print(plan)


def bench_purge(url: str, days: int, purge_days: int) -> None:
    """Purge the oldest `purge_days` on a copy, with a stand-in gateway writer committing every 20 ms."""
    if not is_sqlite(url):
        bench_purge_postgres(url, days, purge_days)
        return
    source = Path(make_url(url).database or "")
    copy = source.with_name(source.stem + "-purge" + source.suffix)
    for suffix in ("-wal", "-shm"):
        Path(str(copy) + suffix).unlink(missing_ok=True)
    copy.unlink(missing_ok=True)
    os.close(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # personal data: never world-readable
    shutil.copyfile(source, copy)  # into the 0600 file
    copy_url = f"sqlite+aiosqlite:///{copy}"
    policy = purge_policy(days, purge_days)
    waits: list[float] = []
    wal_peak = 0
    stop = threading.Event()

    def writer() -> None:
        connection = sqlite3.connect(copy, isolation_level=None, timeout=60)
        connection.execute("PRAGMA synchronous = NORMAL")
        columns = [r[1] for r in connection.execute("PRAGMA table_info(access_log)") if r[1] != "id"]
        row = connection.execute(f"SELECT {', '.join(columns)} FROM access_log ORDER BY id DESC LIMIT 1").fetchone()
        insert = f"INSERT INTO access_log ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        while not stop.is_set():
            started = time.perf_counter()
            while True:  # as the gateway's writer does, keep trying: the wait is until the record is in
                try:
                    connection.execute("BEGIN IMMEDIATE")  # the wait for the write lock is here
                    break
                except sqlite3.OperationalError:  # locked for longer than the 60 s busy timeout
                    if stop.is_set():
                        break
            if connection.in_transaction:
                connection.execute(insert, row)
                connection.execute("COMMIT")
            waits.append(time.perf_counter() - started)
            time.sleep(0.02)
        connection.close()

    def wal_sampler() -> None:
        nonlocal wal_peak
        wal = Path(str(copy) + "-wal")
        while not stop.is_set():
            wal_peak = max(wal_peak, wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.01)

    threads = [threading.Thread(target=writer), threading.Thread(target=wal_sampler)]
    for thread in threads:
        thread.start()

    started = time.perf_counter()
    try:
        counts = asyncio.run(_purge(copy_url, policy))
    finally:
        took = time.perf_counter() - started
        stop.set()
        for thread in threads:
            thread.join()
        for suffix in ("", "-wal", "-shm"):
            Path(str(copy) + suffix).unlink(missing_ok=True)
    print(f"\nretention purge of the oldest {purge_days} days (records_days {days - purge_days}): {took:,.1f} s, "
          f"deleted {counts.records:,} records and {counts.flagged_records:,} flagged; target < 30 s: "
          f"{'meets' if took < 30 else 'MISSES'}")
    print(f"  concurrent writer (one commit every 20 ms): {len(waits)} commits, longest wait "
          f"{max(waits) * 1e3:,.0f} ms, p99 {sorted(waits)[int(len(waits) * 0.99)] * 1e3:,.0f} ms; "
          f"WAL peak {wal_peak / 2**20:,.1f} MiB")


async def _purge(url: str, policy: Policy) -> Any:
    engine = create_engine(url)
    try:
        return await purge(engine, policy)
    finally:
        await engine.dispose()


def purge_policy(days: int, purge_days: int) -> Policy:
    policy = load_policy(default_policy_path())
    return replace(policy, retention=RetentionSettings(records_days=days - purge_days,
                                                       flagged_days=max(policy.retention.flagged_days, days)))


def bench_purge_postgres(url: str, days: int, purge_days: int) -> None:
    """The purge on two copies of the filled database: partitioned (as 0008 leaves it) and unpartitioned (0007)."""
    source = make_url(url)
    copies = {how: source.set(database=f"{source.database}_purge_{how}") for how in ("partitions", "rows")}
    admin = source.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)

    async def make_copies() -> None:
        import asyncpg  # type: ignore[import-untyped]

        connection = await asyncpg.connect(admin)
        try:
            for copy in copies.values():
                await connection.execute(f'DROP DATABASE IF EXISTS "{copy.database}"')
                await connection.execute(f'CREATE DATABASE "{copy.database}" TEMPLATE "{source.database}"')
        finally:
            await connection.close()

    async def drop_copies() -> None:
        import asyncpg

        connection = await asyncpg.connect(admin)
        try:
            for copy in copies.values():
                await connection.execute(f'DROP DATABASE IF EXISTS "{copy.database}"')
        finally:
            await connection.close()

    async def unpartition(copy_url: str) -> None:
        engine = create_engine(copy_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda sync: _downgrade(sync, "0007_reports"))
        finally:
            await engine.dispose()

    policy = purge_policy(days, purge_days)
    started = time.perf_counter()
    asyncio.run(make_copies())
    print(f"\npurge on PostgreSQL: two copies made with CREATE DATABASE ... TEMPLATE in "
          f"{time.perf_counter() - started:,.0f} s")
    try:
        started = time.perf_counter()
        asyncio.run(unpartition(copies["rows"].render_as_string(hide_password=False)))
        print(f"  the row-by-row copy taken back to 0007_reports (one unpartitioned table) in "
              f"{time.perf_counter() - started:,.0f} s")
        for how, copy in copies.items():
            copy_url = copy.render_as_string(hide_password=False)
            took, counts, waits = _purge_with_writer(copy_url, policy)
            what = ("partitioned by day (whole days dropped)" if how == "partitions"
                    else "unpartitioned, 0007_reports (batched DELETEs, as before 0008)")
            print(f"retention purge of the oldest {purge_days} days (records_days {days - purge_days}), {what}: "
                  f"{took:,.1f} s, deleted {counts.records:,} records and {counts.flagged_records:,} flagged")
            print(f"  concurrent writer (one INSERT committed every 20 ms): {len(waits)} commits, longest "
                  f"{max(waits) * 1e3:,.0f} ms, p99 {sorted(waits)[int(len(waits) * 0.99)] * 1e3:,.0f} ms, "
                  f"median {statistics.median(waits) * 1e3:,.1f} ms")
        rows_url = copies["rows"].render_as_string(hide_password=False)
        started = time.perf_counter()
        asyncio.run(upgrade(rows_url))
        print(f"the 0008_partitions migration of the purged unpartitioned copy ({asyncio.run(_count(rows_url)):,} "
              f"records): {time.perf_counter() - started:,.0f} s")
    finally:
        asyncio.run(drop_copies())


async def _count(url: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(access_log))).scalar_one()
    finally:
        await engine.dispose()


def _downgrade(connection: Any, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


def _purge_with_writer(url: str, policy: Policy) -> tuple[float, Any, list[float]]:
    """Purge with a stand-in gateway writer inserting a record of now every 20 ms; the purge's wall
    time, its counts and how long each of the writer's commits took."""
    import asyncpg

    waits: list[float] = []
    stop = threading.Event()
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def write() -> None:
        connection = await asyncpg.connect(plain)
        try:
            row = dict(await connection.fetchrow("SELECT * FROM access_log ORDER BY ts DESC LIMIT 1"))
            del row["id"]
            columns = list(row)
            insert = (f"INSERT INTO access_log ({', '.join(columns)}) "
                      f"VALUES ({', '.join(f'${n + 1}' for n in range(len(columns)))})")
            while not stop.is_set():
                row["ts"] = datetime.now(UTC)
                started = time.perf_counter()
                await connection.execute(insert, *row.values())
                waits.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)
        finally:
            await connection.close()

    writer = threading.Thread(target=lambda: asyncio.run(write()))
    writer.start()

    time.sleep(0.5)  # the writer is under way before the purge starts
    started = time.perf_counter()
    try:
        counts = asyncio.run(_purge(url, policy))
    finally:
        took = time.perf_counter() - started
        stop.set()
        writer.join()
    return took, counts, waits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="an SQLite file filled by fill_records.py, or a database URL")
    parser.add_argument("--only", help="run only the figures whose name starts with this")
    parser.add_argument("--no-purge", action="store_true")
    parser.add_argument("--purge-days", type=int, default=30)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    url = args.target if "://" in args.target else f"sqlite+aiosqlite:///{args.target}"
    if args.child:
        print(json.dumps(child(url, args.child)))
        return 0

    async def describe() -> tuple[int, datetime, datetime, dict[str, Any]]:
        engine = create_engine(url)
        async with engine.connect() as conn:
            total, first, last = (await conn.execute(select(func.count(), func.min(access_log.c.ts),
                                                            func.max(access_log.c.ts)))).one()
        sample = await find_sample(engine)
        await engine.dispose()
        return total, first, last, sample

    total, first, last, sample = asyncio.run(describe())
    days = round((last - first) / timedelta(days=1))
    size = sum(Path(str(make_url(url).database) + s).stat().st_size for s in ("",) if is_sqlite(url))
    print(f"configuration: {url.split('@')[-1]}, {total:,} records over {days} days"
          + (f", {size / 2**30:.2f} GiB" if size else "")
          + f"; cold = {evict(url)}; warm = median of {WARM_RUNS} (1 when cold took over {SLOW_SECONDS:g} s); "
          f"{platform.python_implementation()} "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs "
          f"(load {os.getloadavg()[0]:.1f}), at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    wanted = (lambda name: name.startswith(args.only)) if args.only else (lambda name: True)
    for name, (target, _) in QUERIES.items():
        if wanted(name):
            result = run_child(url, name)
            show(name, target, result["cold_ms"], result["warm_ms"], result["rows"], result["plans"])
    for name in LOG_COMMANDS:
        if wanted(name):
            cold, warm, cpu = time_log_command(url, name, sample)
            result = run_child(url, name)
            show(f"schoolgate {name} (whole process, warm CPU {cpu:,.0f} ms; the statement alone through "
                 f"SQLAlchemy: cold {result['cold_ms']:,.1f} ms, warm {result['warm_ms']:,.1f} ms)",
                 LOG_TARGET_MS, cold, warm, result["rows"], result["plans"])
    if not args.no_purge and wanted("purge"):
        bench_purge(url, days, args.purge_days)
    return 0


if __name__ == "__main__":
    sys.exit(main())
