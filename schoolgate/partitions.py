"""Day partitions of `access_log` on PostgreSQL: their names, bounds, and which to prepare, drop or merge.

One partition per UTC day, named access_log_YYYYMMDD, plus access_log_default for a record
whose day has none (never lost, moved into its day's partition by the next maintenance).
Retention reduces a day past `records_days` to its flagged and illegal-tier records, and
merges a month of such days into one partition, access_log_YYYYMM, so years of flagged
records kept make tens of partitions, not thousands.
Plain Python: schoolgate.partitioning runs the SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

TABLE = "access_log"
DEFAULT = "access_log_default"
# Partitions made ahead of the clock: the gateways write into them without waiting for any DDL.
DAYS_AHEAD = 7

_SPAN_NAME = re.compile(r"access_log_(\d{8}|\d{6})")
# A partition's replacement while retention swaps it, and the old one until it is dropped.
_WORK_NAME = re.compile(r"access_log_(\d{8}|\d{6})_(kept|expired)")

Span = tuple[datetime, datetime]


def name_of(day: date) -> str:
    return f"{TABLE}_{day:%Y%m%d}"


def month_name_of(month: date) -> str:
    return f"{TABLE}_{month:%Y%m}"


def day_named(name: str) -> date | None:
    """The day a day partition's name stands for; None for any other name."""
    match = _SPAN_NAME.fullmatch(name)
    return datetime.strptime(match[1], "%Y%m%d").date() if match and len(match[1]) == 8 else None


def span_named(name: str) -> Span | None:
    """The range of a day's or a month's partition, from its name; None for any other name."""
    match = _SPAN_NAME.fullmatch(name)
    if not match:
        return None
    if len(match[1]) == 8:
        return bounds(datetime.strptime(match[1], "%Y%m%d").date())
    return month_bounds(datetime.strptime(match[1], "%Y%m").date())


def is_partition_name(name: str) -> bool:
    """A table that is (or is about to be, or was) one of access_log's partitions, not a table of db.py."""
    return name == DEFAULT or _SPAN_NAME.fullmatch(name) is not None or _WORK_NAME.fullmatch(name) is not None


def not_a_partition(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's include_name: the partitions are made at run time, not declared in db.py."""
    return type_ != "table" or name is None or not is_partition_name(name)


def day_of(ts: datetime) -> date:
    return ts.astimezone(UTC).date()


def bounds(day: date) -> Span:
    """The day's partition range: from its UTC midnight up to (not including) the next."""
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


def month_bounds(month: date) -> Span:
    first = month.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return datetime.combine(first, time(), UTC), datetime.combine(following, time(), UTC)


def days_to_prepare(existing: Iterable[date], today: date, ahead: int = DAYS_AHEAD) -> list[date]:
    """Yesterday (records a little behind the clock), today and `ahead` days on that have no partition."""
    have = set(existing)
    return [day for n in range(-1, ahead + 1) if (day := today + timedelta(days=n)) not in have]


def expired(names: Iterable[str], before: datetime) -> list[str]:
    """The day and month partitions whose every instant is before `before`, oldest first: retention may
    drop them whole. The day `before` falls in is left for row-by-row deletion, so the cut-off stays exact."""
    spans = {name: span for name in names if (span := span_named(name)) is not None}
    return sorted((name for name, span in spans.items() if span[1] <= before), key=lambda name: spans[name])


def months_to_merge(days: Iterable[date], before: datetime) -> dict[date, list[date]]:
    """Day partitions to merge into one of their month's, by month: those of months wholly before `before`
    (whose days retention has reduced to their kept records)."""
    months: dict[date, list[date]] = {}
    for day in sorted(set(days)):
        month = day.replace(day=1)
        if month_bounds(month)[1] <= before:
            months.setdefault(month, []).append(day)
    return months
