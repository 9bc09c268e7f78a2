"""The console's IT and DSL queries over a large access log: the log search (first page and a
deep keyset page), the unread badge's count and the reminders' check.

    ./dev bench bench_console_queries.py                      # 200,000 records over 180 days, SQLite
    ./dev bench bench_console_queries.py --records 1000000

Prints the configuration, then each query's median and worst time over --repeat runs (ms).
The records are spread evenly over the retention period (180 days) and 12 groups, 1 in 500
flagged; the search covers the console's default 7 days.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import insert

from schoolgate.alerts import AlertDispatcher
from schoolgate.db import access_log, create_engine, upgrade
from schoolgate.policy import load_policy
from schoolgate.reports.incidents import unread_count
from schoolgate.reports.queries import LogSearch, search
from schoolgate.reports.reminders import send_due

GROUPS = [f"year{n}" for n in range(7, 14)] + ["staff", "guests", "sixth-form", "primary", "sen"]
DAYS = 180


def rows(count: int, now: datetime) -> list[dict[str, Any]]:
    step = timedelta(days=DAYS) / count
    out = []
    for n in range(count):
        flagged = n % 500 == 0
        out.append(dict(
            ts=now - step * n, instance="bench", seq=n, client_ip=f"10.{n % 12}.{n % 250}.{n % 200}",
            username=f"pupil{n % 900}", group_name=GROUPS[n % len(GROUPS)], method="GET", scheme="https",
            host=f"site{n % 5000}.example", port=443, url=f"https://site{n % 5000}.example/page/{n % 97}",
            categories=",news,", verdict="block" if n % 7 == 0 else "allow", rule="default", reason="bench",
            status=200, ref=None, flag="self-harm" if flagged else None, flag_severity=4 if flagged else None))
    return out


async def timed(label: str, repeat: int, run: Callable[[], Awaitable[object]]) -> None:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        times.append((time.perf_counter() - started) * 1000)
    print(f"{label:58} median {statistics.median(times):8.1f} ms   worst {max(times):8.1f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sg-bench-console-") as directory:
        path = Path(directory) / "bench.db"
        url = f"sqlite+aiosqlite:///{path}"
        policy_path = Path(directory) / "policy.toml"
        policy_path.write_text(f'[gateway]\ndatabase = "{url}"\n[groups.staff]\nnetworks = ["10.0.0.0/8"]\n'
                               '[monitoring]\nconsole_url = "http://127.0.0.1:9/incidents/"\n'
                               '[alerts.webhook]\nurl = "http://127.0.0.1:9/"\n', encoding="utf-8")
        policy = load_policy(policy_path)
        await upgrade(url)
        now = datetime.now(UTC)
        started = time.perf_counter()
        sync = create_sync_engine(f"sqlite:///{path}")
        with sync.begin() as conn:
            all_rows = rows(args.records, now)
            for chunk in range(0, len(all_rows), 20_000):
                conn.execute(insert(access_log), all_rows[chunk:chunk + 20_000])
        sync.dispose()
        print(f"python {platform.python_version()} on {platform.machine()}, SQLite {path.stat().st_size >> 20} MiB; "
              f"{args.records:,} records over {DAYS} days, {len(GROUPS)} groups, 1 in 500 flagged "
              f"(filled in {time.perf_counter() - started:.0f} s); {args.repeat} runs each")

        engine = create_engine(url)
        week = LogSearch(start=now - timedelta(days=7), end=now + timedelta(days=1))
        page, _ = await search(engine, week)
        deep_key = page[-1][0]
        for _ in range(19):  # 20 pages in
            page, _ = await search(engine, week, before_id=deep_key)
            deep_key = page[-1][0]
        dispatcher = AlertDispatcher(policy.alerts)  # not started: reminders are queued, never sent
        await send_due(engine, policy, dispatcher, now)  # the first check makes every incident
        await timed("log search, 7 days, no filter, first page", args.repeat, lambda: search(engine, week))
        await timed("log search, 7 days, page 21 (keyset)", args.repeat,
                    lambda: search(engine, week, before_id=deep_key))
        by_group = LogSearch(start=week.start, end=week.end, group="year9", verdict="block")
        await timed("log search, 7 days, group + outcome", args.repeat, lambda: search(engine, by_group))
        text = LogSearch(start=week.start, end=week.end, text="site4321.")
        await timed("log search, 7 days, site substring (rare)", args.repeat, lambda: search(engine, text))
        year = LogSearch(start=now - timedelta(days=DAYS), end=week.end, text="site4321.", group="year9")
        await timed("log search, 180 days, group + site substring", args.repeat, lambda: search(engine, year))
        await timed("unread badge count (every DSL page)", args.repeat, lambda: unread_count(engine, 3))
        await timed("reminders check (once a minute)", args.repeat, lambda: send_due(engine, policy, dispatcher, now))
        await engine.dispose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
