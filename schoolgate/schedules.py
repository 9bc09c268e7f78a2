"""Named time windows (`[schedules]`): lessons, breaks, after school, term dates.

A trust's Acceptable Use Policy lets staff use the web personally only at breaks and
after hours; schools relax rules after school. A group says what changes in a window
(`[groups.staff.when.breaks]`); the window is evaluated in the school's timezone, so
British Summer Time and a gateway running in UTC cannot shift a lesson.

A window is a list of spans, each written as `[term] [DAYS] HH:MM-HH:MM`, or `holidays`:

    lessons = ["term mon-fri 08:50-10:50", "term mon-fri 11:10-12:30", "term mon-fri 13:30-15:20"]
    breaks = ["term mon-fri 10:50-11:10", "term mon-fri 12:30-13:30"]
    evenings = ["mon-fri 18:00-07:00"]             # past midnight: until 07:00 the next morning
    weekends = ["sat-sun 00:00-24:00", "holidays"]  # `holidays`: any day outside the term dates

`term` spans apply only on dates inside `term_dates` (`"2026-09-03..2026-10-23"`, both
days included). Plain Python with no clock of its own: callers pass the time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_SPAN = re.compile(r"^(?:(?P<term>term)\s+)?(?:(?P<days>[a-z,\-]+)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})$")


@dataclass(frozen=True, slots=True)
class Span:
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time | None  # None: to midnight (24:00)
    term_only: bool = False
    holidays: bool = False  # the whole of every day outside the term dates
    text: str = ""

    def covers(self, moment: datetime, in_term: Mapping[date, bool]) -> bool:
        day, clock = moment.date(), moment.time()
        if self.holidays:
            return not in_term[day]
        overnight = self.end is not None and self.end <= self.start
        if not overnight:
            return self._on(day, in_term) and self.start <= clock and (self.end is None or clock < self.end)
        assert self.end is not None
        if clock >= self.start:
            return self._on(day, in_term)
        return clock < self.end and self._on(day - timedelta(days=1), in_term)

    def _on(self, day: date, in_term: Mapping[date, bool]) -> bool:
        return day.weekday() in self.days and (not self.term_only or in_term[day])


@dataclass(frozen=True, slots=True)
class Schedule:
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/London"))
    terms: tuple[tuple[date, date], ...] = ()
    windows: Mapping[str, tuple[Span, ...]] = field(default_factory=dict)

    def in_term(self, day: date) -> bool:
        return any(first <= day <= last for first, last in self.terms)

    def active(self, when: datetime) -> list[str]:
        """The windows open at an aware moment, in the order they are defined."""
        local = when.astimezone(self.timezone)
        in_term = _TermLookup(self)
        return [name for name, spans in self.windows.items() if any(s.covers(local, in_term) for s in spans)]

    def first_active(self, names: Sequence[str], when: datetime) -> str | None:
        """Of `names` (a group's windows, in its order), the first one open at `when`."""
        open_now = set(self.active(when))
        return next((name for name in names if name in open_now), None)


class _TermLookup(dict):
    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self.schedule = schedule

    def __missing__(self, day: date) -> bool:
        self[day] = value = self.schedule.in_term(day)
        return value


def parse_span(text: str) -> Span:
    """One span as written in policy.toml; ValueError says what is wrong."""
    cleaned = " ".join(text.lower().split())
    if cleaned == "holidays":
        return Span(frozenset(range(7)), time(0), None, holidays=True, text=text)
    match = _SPAN.match(cleaned)
    if not match:
        raise ValueError(f"{text!r} is not `[term] [DAYS] HH:MM-HH:MM` (e.g. \"term mon-fri 08:50-10:50\") or `holidays`")
    days = _days(match["days"], text) if match["days"] else frozenset(range(7))
    start, end = _clock(match["start"], text), _clock(match["end"], text)
    if end == start:
        raise ValueError(f"{text!r}: a window needs a start before its end")
    return Span(days, start if start is not None else time(0), end, term_only=bool(match["term"]), text=text)


def parse_term(text: str) -> tuple[date, date]:
    first, sep, last = text.partition("..")
    try:
        if not sep:
            raise ValueError
        start, end = date.fromisoformat(first.strip()), date.fromisoformat(last.strip())
    except ValueError:
        raise ValueError(f"term dates {text!r} are not \"YYYY-MM-DD..YYYY-MM-DD\"") from None
    if end < start:
        raise ValueError(f"term dates {text!r} end before they start")
    return start, end


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r} (e.g. \"Europe/London\")") from None


def _clock(text: str, whole: str) -> time | None:
    hours, minutes = (int(part) for part in text.split(":"))
    if (hours, minutes) == (24, 0):
        return None
    if hours > 23 or minutes > 59:
        raise ValueError(f"{whole!r}: {text} is not a time of day")
    return time(hours, minutes)


def _days(text: str, whole: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"{whole!r}: days are mon, tue, wed, thu, fri, sat, sun, as `mon-fri` or `sat,sun`")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)
