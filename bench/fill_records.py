"""Fill a database with a school's worth of realistic access records, for the query benchmarks.

    ./dev bench fill_records.py /tmp/sg-volume.db                      # 10 M records, SQLite
    ./dev bench fill_records.py /tmp/sg-small.db --records 200000
    ./dev bench fill_records.py postgresql+asyncpg://... --records 1000000

90 days ending now; ~300 pupils on their own devices plus ~60 staff and some devices
nobody signed in on; the school-day rhythm (lessons heavy, breaks, after school, quiet
weekends and nights); ~1 % of records flagged with the risks and severities the gateway
gives; hosts drawn from the Tranco top sites in /work/shared/data (say so, and fall back
to made-up names, when it is absent). Records are built as `AccessRecord`s and turned
into rows by the record writer's own code, so they look exactly like the gateway's.

SQLite: the access_log indexes are dropped, rows go in with executemany in 200,000-row
transactions and the indexes are rebuilt at the end (that is what keeps 10 M rows to
minutes). PostgreSQL: the same with COPY, into a partition made first for each day. The flagged records then get their incidents
(grouped into episodes as the 0007_queue migration groups old records), most of the older ones closed.
The file goes wherever you say, never into the repository: it holds made-up personal data
at the size a real one would.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType

from sqlalchemy.engine import make_url

from schoolgate.db import create_engine, is_sqlite, upgrade
from schoolgate.migrations import versions
from schoolgate.partitioning import create_day_partition, day_partitions
from schoolgate.records import _INSERT_COLUMNS, AccessRecord, _row_values, copy_shown_record, new_reference

TOP_SITES = Path("/work/shared/data/top-sites/tranco_top100k.txt")
UT1 = Path("/work/shared/data/ut1")
BATCH = 200_000
PUPILS, STAFF = 300, 60
GROUPS = ("pupils-secondary", "pupils-primary", "staff", "guests")
# (risk, severity, category, how often among flagged records): circumvention dominates, as in every school's log.
RISKS: tuple[tuple[str, int, str | None, int], ...] = (
    ("circumvention", 2, "vpn", 40), ("circumvention", 2, "doh", 10), ("pornography", 3, "adult", 18),
    ("gambling", 2, "gambling", 10), ("violence", 2, "agressif", 6), ("drugs", 2, "drogue", 5),
    ("self-harm", 4, None, 4), ("extremism", 3, None, 2), ("bullying", 2, None, 3),
    ("sexual-exploitation", 4, None, 1), ("weapons-violence", 3, None, 1),
)
SEARCHES = {"self-harm": "how to hurt myself", "extremism": "join the cause", "bullying": "everyone hates him",
            "sexual-exploitation": "send pics older boyfriend", "weapons-violence": "buy a knife online"}
EVERYDAY = (("search-engines",), ("news",), ("education",), ("", ), ("shopping",), ("audio-video",), ("webmail",))


def hour_weights(day: datetime) -> list[float]:
    """Requests per hour of a day, relative: lessons 9-15, lunch busier, after school tails off."""
    if day.weekday() >= 5:
        return [0.02] * 8 + [0.05] * 12 + [0.03] * 4  # staff marking at the weekend
    school = {8: 0.6, 9: 1.0, 10: 0.9, 11: 1.0, 12: 1.3, 13: 1.0, 14: 0.9, 15: 0.7, 16: 0.4, 17: 0.2, 18: 0.1}
    return [school.get(hour, 0.01) for hour in range(24)]


def load_hosts() -> list[str]:
    if TOP_SITES.exists():
        hosts = TOP_SITES.read_text().split()[:20_000]
        print(f"hosts: the Tranco top {len(hosts):,} from {TOP_SITES}")
        return hosts
    print(f"hosts: {TOP_SITES} is absent; made-up names site0.example ... site19999.example instead")
    return [f"site{n}.example" for n in range(20_000)]


def load_flagged_hosts(category: str | None, risk: str) -> list[str]:
    listed = UT1 / (category or "") / "domains"
    if category and listed.exists():
        return listed.read_text().split()[:2_000]
    return [f"{risk}-site{n}.example" for n in range(50)]


def generate(count: int, *, days: int, now: datetime, seed: int) -> Iterator[AccessRecord]:
    """`count` records over the `days` before `now`, oldest first."""
    rng = random.Random(seed)
    hosts = load_hosts()
    # Popularity falls steeply with rank: a few sites take most requests.
    host_pool = [hosts[min(int(len(hosts) * rng.random() ** 4), len(hosts) - 1)] for _ in range(200_000)]
    flagged_hosts = {(risk, category): load_flagged_hosts(category, risk) for risk, _, category, _ in RISKS}
    risk_pool = [r for r in RISKS for _ in range(r[3])]
    people = ([(f"pupil{n:04d}", GROUPS[n % 3 == 0], f"10.{10 if n % 3 == 0 else 20}.{n // 250}.{n % 250 + 2}")
               for n in range(PUPILS)] + [(f"staff{n:03d}", "staff", f"10.30.0.{n + 2}") for n in range(STAFF)])
    start_day = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    slots = [(start_day + timedelta(days=d, hours=h), w)
             for d in range(days + 1) for h, w in enumerate(hour_weights(start_day + timedelta(days=d)))]
    slots = [(t, w) for t, w in slots if t + timedelta(hours=1) <= now]
    total_weight = sum(w for _, w in slots)
    seqs = {"gw1": 0, "gw2": 0}
    made = 0
    weight_so_far = 0.0
    for hour_start, weight in slots:
        weight_so_far += weight
        n = round(count * weight_so_far / total_weight) - made  # cumulative, so rounding never drifts
        made += n
        for offset in sorted(rng.random() * 3600 for _ in range(n)):
            yield _record(rng, hour_start + timedelta(seconds=offset), people, host_pool, risk_pool, flagged_hosts,
                          seqs)


def _record(rng: random.Random, ts: datetime, people: list[tuple[str, str, str]], host_pool: list[str],
            risk_pool: list[tuple[str, int, str | None, int]], flagged_hosts: dict[tuple[str, str | None], list[str]],
            seqs: dict[str, int]) -> AccessRecord:
    name, group, ip = people[rng.randrange(len(people))]
    user: str | None = name
    if group != "staff" and rng.random() < 0.25:  # a device nobody signed in on: known by its network only
        user = None
    instance = "gw1" if rng.random() < 0.5 else "gw2"
    seqs[instance] += 1
    roll = rng.random()
    flag: str | None = None
    severity: int | None = None
    detail = engine = term = ref = None
    rule = "default"
    if roll < 0.01:
        risk, severity, category, _ = risk_pool[rng.randrange(len(risk_pool))]
        if category is None:  # a worrying search
            host, engine, term = "www.google.com", "google", SEARCHES[risk]
            categories: tuple[str, ...] = ("search-engines",)
            detail = f"search matched {term!r} (en)"
            verdict = "block" if severity >= 4 else "monitor"
            rule = "search:block" if verdict == "block" else "default"
        else:
            pool = flagged_hosts[(risk, category)]
            host = pool[rng.randrange(len(pool))]
            categories = (category,)
            detail = f"site listed as {category}"
            verdict, rule = "block", f"category:{category}"
        flag = risk
        path = f"/search?q={term.replace(' ', '+')}" if term else "/"
    elif roll < 0.06:
        host = host_pool[rng.randrange(len(host_pool))]
        categories, verdict, rule = ("social-networks",), "block", "category:social-networks"
        path = "/"
    elif roll < 0.065:
        host = host_pool[rng.randrange(len(host_pool))]
        categories, verdict, rule = ("games",), ("warn" if roll < 0.063 else "proceed"), "category:games"
        path = "/play"
    elif roll < 0.06501:  # the illegal-content tier: rare, and kept as long as flagged records
        host, categories, verdict, rule = "illegal.example", ("child",), "block", "illegal:iwf"
        path = "/"
    else:
        host = host_pool[rng.randrange(len(host_pool))]
        categories, verdict = EVERYDAY[rng.randrange(len(EVERYDAY))], "allow"
        path = f"/page/{rng.randrange(100_000)}"
    if verdict in ("block", "warn"):
        ref = new_reference()
    return AccessRecord(
        ts=ts, instance=instance, seq=seqs[instance], client_ip=ip, user=user, group=group, method="GET",
        scheme="https", host=host, port=443, url=f"https://{host}{path}", categories=tuple(c for c in categories if c),
        verdict=verdict, rule=rule, reason="allowed by default" if verdict == "allow" else f"{rule} for {group}",
        status=200 if verdict in ("allow", "monitor", "proceed") else 403, bytes_in=0,
        bytes_out=rng.randrange(200, 200_000), ref=ref, decision_us=rng.randrange(5, 60), search_engine=engine,
        search_term=term, flag=flag, flag_severity=severity, flag_detail=detail,
        duration_ms=rng.randrange(5, 2_000), identity_source="portal" if user else "network",
    )


def fill_sqlite(path: str, records: Iterator[AccessRecord]) -> int:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA synchronous = OFF")
    indexes = connection.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                 "AND tbl_name = 'access_log' AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        connection.execute(f'DROP INDEX "{name}"')
    insert = (f"INSERT INTO access_log ({', '.join(_INSERT_COLUMNS)}) "
              f"VALUES ({', '.join('?' for _ in _INSERT_COLUMNS)})")
    written = 0
    while rows := [_row_values(r, True) for _, r in zip(range(BATCH), records, strict=False)]:
        connection.execute("BEGIN")
        connection.executemany(insert, rows)
        connection.execute("COMMIT")
        written += len(rows)
        print(f"  {written:,} rows", end="\r", file=sys.stderr)
    started = time.perf_counter()
    for _, sql in indexes:
        connection.execute(sql)
    connection.execute("ANALYZE")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    print(f"\nrebuilt {len(indexes)} indexes and analysed in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return written


async def make_day_partitions(url: str, first: date, last: date) -> None:
    """access_log is partitioned by day on PostgreSQL (0008_partitions): a partition for each day
    filled, as the gateway's maintenance would have made them, so no record lands in the default one."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            existing = await conn.run_sync(day_partitions)
            for n in range((last - first).days + 1):
                if (day := first + timedelta(days=n)) not in existing:
                    await conn.run_sync(create_day_partition, day)
    finally:
        await engine.dispose()


async def fill_postgres(url: str, records: Iterator[AccessRecord]) -> int:
    import asyncpg  # type: ignore[import-untyped]

    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(plain)
    try:
        indexes = await connection.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'access_log' "
                                         "AND indexname NOT LIKE '%pkey'")
        for index in indexes:
            await connection.execute(f'DROP INDEX "{index["indexname"]}"')
        written = 0
        while rows := [_row_values(r, False) for _, r in zip(range(BATCH), records, strict=False)]:
            await connection.copy_records_to_table("access_log", records=rows, columns=_INSERT_COLUMNS)
            written += len(rows)
            print(f"  {written:,} rows", end="\r", file=sys.stderr)
        for index in indexes:  # a partitioned index is shown as ON ONLY the parent; built here on every partition
            await connection.execute(index["indexdef"].replace(" ON ONLY ", " ON ", 1))
        await connection.execute("ANALYZE access_log")
    finally:
        await connection.close()
    return written


async def open_incidents(url: str, now: datetime) -> None:
    """Incidents for the flagged records, grouped into episodes as the gateway's writer groups
    them (the bulk load bypasses it: the 0007_queue migration's backfill does the same for
    records stored before incidents were made at write); the DSL has closed most older ones."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migration("0007_queue")._backfill)
            await conn.run_sync(copy_shown_record, None)
            cutoff = (now - timedelta(days=7)).astimezone(UTC)
            ts = cutoff.strftime("%Y-%m-%d %H:%M:%S.%f") if is_sqlite(url) else cutoff
            await conn.exec_driver_sql(
                "UPDATE incidents SET status = 'closed' WHERE record_id IN "
                f"(SELECT id FROM access_log WHERE flag_severity IS NOT NULL AND ts < {'?' if is_sqlite(url) else '$1'})",
                (ts,))
            await conn.exec_driver_sql("UPDATE incidents SET status = 'reviewing' WHERE status = 'new' AND id % 4 = 0")
    finally:
        await engine.dispose()


def _migration(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, Path(versions.__file__).parent / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="an SQLite file path (e.g. /tmp/sg-volume.db) or a database URL")
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    url = args.target if "://" in args.target else f"sqlite+aiosqlite:///{args.target}"
    if is_sqlite(url) and Path(make_url(url).database or "").resolve().is_relative_to(Path(__file__).parents[1]):
        parser.error("put the database outside the repository (it holds personal data at a real school's size)")
    now = datetime.now(UTC)
    print(f"configuration: {args.records:,} records over {args.days} days to {now:%Y-%m-%d %H:%M} UTC, "
          f"{PUPILS} pupils + {STAFF} staff, ~1 % flagged, seed {args.seed}, into {url.split('@')[-1]}")
    asyncio.run(upgrade(url))
    started = time.perf_counter()
    records = generate(args.records, days=args.days, now=now, seed=args.seed)
    if is_sqlite(url):
        written = fill_sqlite(make_url(url).database or "", records)
    else:
        asyncio.run(make_day_partitions(url, (now - timedelta(days=args.days)).date(), now.date()))
        written = asyncio.run(fill_postgres(url, records))
    asyncio.run(open_incidents(url, now))
    took = time.perf_counter() - started
    print(f"wrote {written:,} records with their incidents in {took:.0f} s ({written / took:,.0f} records/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
