"""Day partitions of `access_log` on PostgreSQL: their names, bounds, and which days to prepare or drop.

One partition per UTC day, named access_log_YYYYMMDD, plus access_log_default for a record
whose day has none (never lost, moved into its day's partition by the next maintenance).
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

_DAY_NAME = re.compile(r"access_log_(\d{8})")
# A day's replacement while retention swaps it, and the old one until it is dropped.
_WORK_NAME = re.compile(r"access_log_\d{8}_(kept|expired)")


def name_of(day: date) -> str:
    return f"{TABLE}_{day:%Y%m%d}"


def day_named(name: str) -> date | None:
    """The day a partition's name stands for; None for any other name."""
    match = _DAY_NAME.fullmatch(name)
    return datetime.strptime(match[1], "%Y%m%d").date() if match else None


def is_partition_name(name: str) -> bool:
    """A table that is (or is about to be, or was) one of access_log's partitions, not a table of db.py."""
    return name == DEFAULT or day_named(name) is not None or _WORK_NAME.fullmatch(name) is not None


def not_a_partition(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's include_name: the partitions are made at run time, not declared in db.py."""
    return type_ != "table" or name is None or not is_partition_name(name)


def day_of(ts: datetime) -> date:
    return ts.astimezone(UTC).date()


def bounds(day: date) -> tuple[datetime, datetime]:
    """The day's partition range: from its UTC midnight up to (not including) the next."""
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


def days_to_prepare(existing: Iterable[date], today: date, ahead: int = DAYS_AHEAD) -> list[date]:
    """Yesterday (records a little behind the clock), today and `ahead` days on that have no partition."""
    have = set(existing)
    return [day for n in range(-1, ahead + 1) if (day := today + timedelta(days=n)) not in have]


def expired_days(existing: Iterable[date], before: datetime) -> list[date]:
    """Days whose every instant is before `before`, oldest first: retention may drop their partitions whole.
    The day `before` falls in is left for row-by-row deletion, so the cut-off stays exact."""
    return sorted(day for day in set(existing) if bounds(day)[1] <= before)
