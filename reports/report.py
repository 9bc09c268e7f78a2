"""The period report (console page, printable to PDF, and `schoolgate report`) and CSV exports.

Complete UTC days are read from per-day summaries (report_days, report_day_totals,
report_day_sites: counts by group, verdict, categories, flag and site, no identities),
which the report folds from the access log once a day has settled and refolds when a
day's record count changes; the hours at the period's edges and today come from the log
itself. So a month over 10 M records reads a few thousand summary rows, not 10 M.

The trend counts records per UTC day over the period's local days, so in British Summer
Time the hour after midnight counts towards the day before. The chart is inline SVG drawn
here: the report must print and open offline, and the console's Content-Security-Policy
allows no scripts.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import and_, delete, func, insert, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schoolgate import commaset
from schoolgate.categories.suffixes import registrable_domain
from schoolgate.categories.taxonomy import CATEGORIES
from schoolgate.db import (
    UtcDateTime,
    access_log,
    access_requests,
    exceptions,
    incidents,
    list_entries,
    pupil_directory,
    report_day_sites,
    report_day_totals,
    report_days,
)
from schoolgate.episodes import SubjectKind
from schoolgate.reports.console import templating
from schoolgate.reports.incidents import OPEN, Incident, IncidentFilter, queue
from schoolgate.reports.outcomes import Outcome, ReviewTimes, outcome_counts, review_times

BLOCKED = ("block",)
TOP_SITES = 15


@dataclass(frozen=True, slots=True)
class Day:
    day: date
    requests: int
    blocked: int
    flagged: int


@dataclass(frozen=True, slots=True)
class PeriodReport:
    start: datetime
    end: datetime
    total: int
    blocked: int
    flagged: int
    by_category: list[tuple[str, int, int]]  # category, requests, blocked
    by_group: list[tuple[str, int, int, int]]  # group, requests, blocked, flagged
    by_severity: list[tuple[str, int]]  # severity name, flagged records
    by_risk: list[tuple[str, int]]  # flag (self-harm, circumvention, ...), flagged records
    top_blocked: list[tuple[str, int]]  # registrable domain (a site, with its subdomains), blocked attempts
    days: list[Day]
    open_incidents: list[Incident]
    previous: tuple[int, int, int]  # requests, blocked, flagged in the period of equal length just before
    bandwidth_by_group: list[tuple[str, int]]  # group, bytes both ways
    bandwidth_by_site: list[tuple[str, int]]  # registrable domain, bytes both ways (the top ones)
    exceptions_opened: list[tuple[str, str, str, int]]  # what was opened, for whom, by which role, how many times
    requests_by_status: list[tuple[str, int]]  # pupils' access requests asked in the period, by status now
    list_changes: list[tuple[datetime, str, str, str]]  # when, change ("block added"), entry, by whom (staff)
    review: ReviewTimes  # time to first review of the incidents that arose in the period
    outcomes: list[tuple[Outcome, int]]  # incidents that arose in the period, by what the DSL did
    by_year_group: list[tuple[str, int, int]]  # year group (as the directory says), incidents, pupils

    @property
    def previous_start(self) -> datetime:
        return self.start - (self.end - self.start)

    def change(self, now: int, before: int) -> str:
        """How a figure moved against the previous period, as people read it."""
        if not before:
            return "new" if now else "no change"
        percent = round(100 * (now - before) / before)
        return "no change" if percent == 0 else f"{percent:+d}%"

    @property
    def last_day(self) -> datetime:
        """The end is exclusive (midnight after the last day); this is a moment in that last day."""
        return self.end - timedelta(microseconds=1)

    def category_title(self, category: str) -> str:
        return CATEGORIES[category].title if category in CATEGORIES else category


async def build_report(engine: AsyncEngine, start: datetime, end: datetime) -> PeriodReport:
    """Counts over [start, end): complete UTC days from their per-day summaries (folded
    once, see `_fold_days`), the hours at either edge from the access log itself."""
    previous_start = start - (end - start)
    await _fold_days(engine, previous_start, end)
    async with engine.connect() as conn:
        rows = await _counts(conn, start, end)
        before = await _counts(conn, previous_start, start)
        live = await _live_changes(conn, start, end)
    open_incidents = await queue(engine, IncidentFilter(start=start, end=end, statuses=OPEN))
    review, outcomes = await review_times(engine, start, end), await outcome_counts(engine, start, end)
    async with engine.connect() as conn:
        by_year_group = await _incidents_by_year_group(conn, start, end)

    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    group_bytes: Counter[str] = Counter()
    for group, verdict, was_flagged, n, volume in rows.groups:
        groups[group][0] += n
        groups[group][1] += n if verdict in BLOCKED else 0
        groups[group][2] += n if was_flagged else 0
        group_bytes[group] += volume
    categories: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for listed, verdict, n in rows.categories:
        for category in commaset.decode(listed):
            categories[category][0] += n
            categories[category][1] += n if verdict in BLOCKED else 0
    severities: Counter[int] = Counter()
    risks: Counter[str] = Counter()
    for severity, flag, n in rows.severities:
        severities[severity] += n
        risks[flag or "unspecified"] += n

    return PeriodReport(
        start=start, end=end,
        total=sum(v[0] for v in groups.values()),
        blocked=sum(v[1] for v in groups.values()),
        flagged=sum(v[2] for v in groups.values()),
        by_category=sorted(((k, *v) for k, v in categories.items()), key=lambda r: (-r[2], -r[1], r[0])),  # type: ignore[misc]
        by_group=sorted(((k, *v) for k, v in groups.items()), key=lambda r: r[0]),  # type: ignore[misc]
        by_severity=[(templating.severity_name(s), severities[s]) for s in sorted(severities, reverse=True)],
        by_risk=risks.most_common(),
        top_blocked=_by_site((host, n) for host, was_blocked, n, _ in rows.hosts if was_blocked),
        days=_days(start, end, rows.days),
        open_incidents=open_incidents,
        previous=(sum(n for _, _, _, n, _ in before.groups),
                  sum(n for _, verdict, _, n, _ in before.groups if verdict in BLOCKED),
                  sum(n for _, _, was_flagged, n, _ in before.groups if was_flagged)),
        bandwidth_by_group=sorted(group_bytes.items(), key=lambda kv: (-kv[1], kv[0])),
        bandwidth_by_site=_by_site((host, volume) for host, _, _, volume in rows.hosts),
        review=review, outcomes=outcomes, by_year_group=by_year_group,
        **live,
    )


# --- per-day summaries ------------------------------------------------------------------

# A UTC day is folded once it ended this long ago: records answered that day have reached the
# database by then, unless a gateway replays its journal later (the count check refolds the day).
SETTLE = timedelta(hours=1)
_DAY = timedelta(days=1)


@dataclass
class _Counts:
    """The report's counts over some stretch of time, read from the log or from summaries."""

    groups: list[tuple[str, str, bool, int, int]] = field(default_factory=list)  # group, verdict, flagged, n, bytes
    categories: list[tuple[str, str, int]] = field(default_factory=list)  # ",a,b,", verdict, n
    severities: list[tuple[int, str | None, int]] = field(default_factory=list)  # severity, flag, n
    hosts: list[tuple[str, bool, int, int]] = field(default_factory=list)  # host, blocked, n, bytes
    days: list[tuple[date, str, bool, int]] = field(default_factory=list)  # UTC day, verdict, flagged, n


def _utc_midnight(moment: datetime, *, up: bool) -> datetime:
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + _DAY if up and day < moment else day


def _whole_days(start: datetime, end: datetime, now: datetime) -> tuple[datetime, datetime]:
    """The complete, settled UTC days inside [start, end), as [first, last) (empty when first >= last)."""
    first = _utc_midnight(start, up=True)
    return first, max(first, _utc_midnight(min(end, now - SETTLE), up=False))


async def _counts(conn: AsyncConnection, start: datetime, end: datetime) -> _Counts:
    first, last = _whole_days(start, end, datetime.now(UTC))
    if first >= last:
        return await _from_log(conn, start, end)
    counts = await _from_summaries(conn, first, last)
    for edge_start, edge_end in ((start, first), (last, end)):
        if edge_start < edge_end:
            edge = await _from_log(conn, edge_start, edge_end)
            for name in ("groups", "categories", "severities", "hosts", "days"):
                getattr(counts, name).extend(getattr(edge, name))
    return counts


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value))


async def _from_log(conn: AsyncConnection, start: datetime, end: datetime) -> _Counts:
    c = access_log.c
    in_range = (c.ts >= start, c.ts < end)
    flagged = c.flag_severity.is_not(None)
    transferred = func.coalesce(c.bytes_in, 0) + func.coalesce(c.bytes_out, 0)
    blocked = c.verdict.in_(BLOCKED)
    groups = await conn.execute(select(c.group_name, c.verdict, flagged, func.count(), func.sum(transferred))
                                .where(*in_range).group_by(c.group_name, c.verdict, flagged))
    categories = await conn.execute(select(c.categories, c.verdict, func.count()).where(*in_range)
                                    .group_by(c.categories, c.verdict))
    severities = await conn.execute(select(c.flag_severity, c.flag, func.count()).where(*in_range, flagged)
                                    .group_by(c.flag_severity, c.flag))
    hosts = await conn.execute(select(c.host, blocked, func.count(), func.sum(transferred)).where(*in_range)
                               .group_by(c.host, blocked))
    days = await conn.execute(select(func.date(c.ts), c.verdict, flagged, func.count()).where(*in_range)
                              .group_by(func.date(c.ts), c.verdict, flagged))
    return _Counts(
        groups=[(g, v, bool(f), n, int(b or 0)) for g, v, f, n, b in groups],
        categories=[(k, v, n) for k, v, n in categories],
        severities=[(s, f, n) for s, f, n in severities],
        hosts=[(h, bool(bl), n, int(b or 0)) for h, bl, n, b in hosts],
        days=[(_as_date(d), v, bool(f), n) for d, v, f, n in days],
    )


async def _from_summaries(conn: AsyncConnection, first: datetime, last: datetime) -> _Counts:
    t, s = report_day_totals.c, report_day_sites.c
    flagged = t.flag_severity.is_not(None)
    totals = (t.day >= first, t.day < last)
    groups = await conn.execute(select(t.group_name, t.verdict, flagged, func.sum(t.requests), func.sum(t.bytes))
                                .where(*totals).group_by(t.group_name, t.verdict, flagged))
    categories = await conn.execute(select(t.categories, t.verdict, func.sum(t.requests)).where(*totals)
                                    .group_by(t.categories, t.verdict))
    severities = await conn.execute(select(t.flag_severity, t.flag, func.sum(t.requests)).where(*totals, flagged)
                                    .group_by(t.flag_severity, t.flag))
    hosts = await conn.execute(select(s.host, s.blocked, func.sum(s.requests), func.sum(s.bytes))
                               .where(s.day >= first, s.day < last).group_by(s.host, s.blocked))
    days = await conn.execute(select(t.day, t.verdict, flagged, func.sum(t.requests)).where(*totals)
                              .group_by(t.day, t.verdict, flagged))
    return _Counts(
        groups=[(g, v, bool(f), int(n), int(b)) for g, v, f, n, b in groups],
        categories=[(k, v, int(n)) for k, v, n in categories],
        severities=[(sv, f, int(n)) for sv, f, n in severities],
        hosts=[(h, bool(bl), int(n), int(b)) for h, bl, n, b in hosts],
        days=[(_as_date(d), v, bool(f), int(n)) for d, v, f, n in days],
    )


async def _fold_days(engine: AsyncEngine, start: datetime, end: datetime) -> None:
    """Make sure every complete, settled UTC day in [start, end) has its summaries, and that
    they still count what the log holds: one index count over the whole stretch, and a
    day-by-day count only when that differs (a late journal replay, a purge), refolding
    the days that changed."""
    first, last = _whole_days(start, end, datetime.now(UTC))
    if first >= last:
        return
    c = access_log.c
    async with engine.connect() as conn:
        stored = {_utc(day): n for day, n in await conn.execute(
            select(report_days.c.day, report_days.c.records).where(report_days.c.day >= first, report_days.c.day < last))}
        days = [first + i * _DAY for i in range((last - first) // _DAY)]
        if len(stored) == len(days):
            total = (await conn.execute(select(func.count()).where(c.ts >= first, c.ts < last))).scalar_one()
            if total == sum(stored.values()):
                return
        changed = []
        for day in days:
            n = (await conn.execute(select(func.count()).where(c.ts >= day, c.ts < day + _DAY))).scalar_one()
            if stored.get(day) != n:
                changed.append((day, n))
    for day, n in changed:
        await _fold(engine, day, n)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def _fold(engine: AsyncEngine, day: datetime, records: int) -> None:
    """Replace one UTC day's summaries with what the log holds now (one transaction; a
    report folding the same day at the same moment makes this one give way)."""
    c = access_log.c
    in_day = (c.ts >= day, c.ts < day + _DAY)
    transferred = func.coalesce(func.sum(func.coalesce(c.bytes_in, 0) + func.coalesce(c.bytes_out, 0)), 0)
    totals = select(literal(day, UtcDateTime()), c.group_name, c.verdict, c.categories, c.flag_severity, c.flag,
                    func.count(), transferred).where(*in_day).group_by(
                        c.group_name, c.verdict, c.categories, c.flag_severity, c.flag)
    blocked = c.verdict.in_(BLOCKED)
    sites = select(literal(day, UtcDateTime()), c.host, blocked, func.count(), transferred).where(*in_day).group_by(
        c.host, blocked)
    try:
        async with engine.begin() as conn:
            for table in (report_day_totals, report_day_sites, report_days):
                await conn.execute(delete(table).where(table.c.day == day))
            t, s = report_day_totals.c, report_day_sites.c
            await conn.execute(insert(report_day_totals).from_select(
                [t.day, t.group_name, t.verdict, t.categories, t.flag_severity, t.flag, t.requests, t.bytes], totals))
            await conn.execute(insert(report_day_sites).from_select(
                [s.day, s.host, s.blocked, s.requests, s.bytes], sites))
            await conn.execute(insert(report_days).values(day=day, records=records, folded_at=datetime.now(UTC)))
    except IntegrityError:
        pass  # folded by another report at the same moment


NOT_KNOWN = "not known"  # a device, or a pupil the directory gives no year group


async def _incidents_by_year_group(conn: AsyncConnection, start: datetime, end: datetime) -> list[tuple[str, int, int]]:
    """Incidents that arose in [start, end) and how many pupils they concern, by year group
    (from the directory, `[directory] year_attribute`): counts only, never who."""
    i, d = incidents.c, pupil_directory.c
    year = func.coalesce(d.year_group, NOT_KNOWN)
    query = (select(year, func.count(), func.count(func.distinct(i.subject)))
             .select_from(incidents.outerjoin(pupil_directory, and_(d.username == i.subject,
                                                                    i.subject_kind == SubjectKind.USER.value)))
             .where(i.first_seen >= start, i.first_seen < end).group_by(year))
    rows = [(str(y), n, pupils) for y, n, pupils in (await conn.execute(query)).all()]
    return sorted(rows, key=lambda row: (row[0] == NOT_KNOWN, row[0]))


async def _live_changes(conn: AsyncConnection, start: datetime, end: datetime) -> dict[str, Any]:
    """Unblocks (exceptions granted), pupils' access requests and managed-list changes in the period.

    No pupil is named: an exception for one pupil reads "a pupil", one for a list of users "some pupils"."""
    e = exceptions.c
    opened = (await conn.execute(
        select(e.kind, e.host, e.path, e.category, e.scope_kind, e.scope, e.granted_role, func.count())
        .where(e.created_at >= start, e.created_at < end)
        .group_by(e.kind, e.host, e.path, e.category, e.scope_kind, e.scope, e.granted_role))).all()
    scopes = {"user": "a pupil", "users": "some pupils"}
    exceptions_opened: Counter[tuple[str, str, str]] = Counter()
    for kind, host, path, category, scope_kind, scope, role, n in opened:
        what = f"category {category}" if kind == "category" else f"{host}{path or ''}"
        whom = scopes.get(scope_kind) or f"{scope_kind} {scope}"
        exceptions_opened[(what, whom, role)] += n
    r = access_requests.c
    requests = (await conn.execute(
        select(r.status, func.count()).where(r.created_at >= start, r.created_at < end).group_by(r.status))).all()
    entries = list_entries.c
    added = (await conn.execute(select(entries.added_at, entries.action, entries.entry, entries.added_by)
                                .where(entries.added_at >= start, entries.added_at < end))).all()
    removed = (await conn.execute(select(entries.removed_at, entries.action, entries.entry, entries.removed_by)
                                  .where(entries.removed_at >= start, entries.removed_at < end))).all()
    changes = [(ts, f"{action} added", entry, by) for ts, action, entry, by in added]
    changes += [(ts, f"{action} removed", entry, by) for ts, action, entry, by in removed]
    return {
        "exceptions_opened": sorted(((*k, n) for k, n in exceptions_opened.items()), key=lambda r: (-r[3], r[0])),
        "requests_by_status": sorted(((status, n) for status, n in requests), key=lambda kv: kv[0]),
        "list_changes": sorted(changes, key=lambda ch: ch[0]),
    }


def _by_site(per_host: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """A figure (blocked attempts, bytes) per site: www.x.com, cdn.x.com and x.com are one site,
    x.co.uk and y.co.uk two (the public suffix list says where a site's own name starts)."""
    sites: Counter[str] = Counter()
    for host, n in per_host:
        sites[registrable_domain(host)] += n
    return sorted(sites.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SITES]


def _days(start: datetime, end: datetime, rows: Iterable[Any]) -> list[Day]:
    counts: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])
    for day, verdict, flagged, n in rows:
        key = day if isinstance(day, date) else date.fromisoformat(str(day))
        counts[key][0] += n
        counts[key][1] += n if verdict in BLOCKED else 0
        counts[key][2] += n if flagged else 0
    first, last = start.astimezone().date(), (end - timedelta(microseconds=1)).astimezone().date()
    span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    return [Day(d, *counts[d]) for d in span]


# --- the trend chart ------------------------------------------------------------------

def trend_svg(days: list[Day], width: int = 760, height: int = 220) -> Markup:
    """Bars of blocked attempts per day with flagged records as a line, as accessible inline SVG."""
    left, bottom, top = 44, 28, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max([d.blocked for d in days] + [d.flagged for d in days] + [1])
    step = plot_w / max(len(days), 1)
    bar = max(step * 0.7, 1.0)

    def y(value: int) -> float:
        return top + plot_h - plot_h * value / peak

    span = f"{days[0].day.isoformat()} to {days[-1].day.isoformat()}" if days else ""
    parts = [f'<svg class="trend" viewBox="0 0 {width} {height}" role="img" aria-labelledby="trend-title" '
             f'xmlns="http://www.w3.org/2000/svg"><title id="trend-title">Blocked attempts and flagged records '
             f'per day, {escape(span)}</title>']
    for tick in sorted({0, peak // 2, peak}):
        parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#d5dbe3"/>'
                     f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#4a5565">{tick}</text>')
    label_every = max(1, len(days) // 10)
    points = []
    for i, day in enumerate(days):
        x = left + i * step + (step - bar) / 2
        parts.append(f'<rect x="{x:.1f}" y="{y(day.blocked):.1f}" width="{bar:.1f}" '
                     f'height="{top + plot_h - y(day.blocked):.1f}" fill="#3b5b8c"><title>{day.day}: '
                     f'{day.blocked} blocked, {day.flagged} flagged, {day.requests} requests</title></rect>')
        points.append(f"{x + bar / 2:.1f},{y(day.flagged):.1f}")
        if i % label_every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - 10}" text-anchor="middle" font-size="11" '
                         f'fill="#4a5565">{day.day:%d %b}</text>')
    if points:
        parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#c0392b" stroke-width="2"/>')
        parts.extend(f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="3" fill="#c0392b"/>' for p in points)
    parts.append("</svg>")
    return Markup("".join(parts))


def render_html(report: PeriodReport, *, school: str, with_identities: bool) -> str:
    """The report as one self-contained HTML file (styles inlined), for `schoolgate report`."""
    return templating.environment().get_template("report.html").render(
        report=report, school=school, with_identities=with_identities, standalone=True,
        stylesheet=Markup(templating.stylesheet()), chart=trend_svg(report.days))


# --- CSV ------------------------------------------------------------------------------

INCIDENT_COLUMNS = ("incident", "status", "time_utc", "severity", "risk", "detail", "user", "device", "group",
                    "search_engine", "search_term", "verdict", "host", "url", "categories", "reference",
                    "attempts", "first_seen_utc", "last_seen_utc")


def _cell(value: object) -> str:
    """Text a spreadsheet will not run: a pupil's search term can start with = or @."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv(rows: Iterable[Iterable[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows([_cell(v) for v in row] for row in rows)
    return out.getvalue()


def incidents_csv(items: Iterable[Incident]) -> str:
    def row(i: Incident) -> list[object]:
        r = i.record
        return [i.id, i.status.value, r.ts.isoformat(timespec="seconds"), templating.severity_name(r.flag_severity),
                r.flag, r.flag_detail, r.user, r.client_ip, r.group, r.search_engine, r.search_term, r.verdict, r.host,
                r.url, " ".join(r.categories), r.ref, i.attempts, i.first_seen.isoformat(timespec="seconds"),
                i.last_seen.isoformat(timespec="seconds")]

    return _csv([INCIDENT_COLUMNS, *(row(i) for i in items)])


def report_csv(report: PeriodReport) -> str:
    """The report's tables as one long CSV: section, item, then its counts."""
    rows: list[list[object]] = [["section", "item", "requests", "blocked", "flagged"],
                                ["period", f"{report.start.isoformat()} to {report.end.isoformat()}",
                                 report.total, report.blocked, report.flagged]]
    rows += [["category", category, n, blocked, ""] for category, n, blocked in report.by_category]
    rows += [["group", group, n, blocked, flagged] for group, n, blocked, flagged in report.by_group]
    rows += [["severity", name, "", "", n] for name, n in report.by_severity]
    rows += [["risk", name, "", "", n] for name, n in report.by_risk]
    rows += [["top blocked site", host, "", n, ""] for host, n in report.top_blocked]
    rows += [["day", d.day.isoformat(), d.requests, d.blocked, d.flagged] for d in report.days]
    rows += [["open incident", f"#{i.id} {i.status.value} {i.record.flag}", "", "", 1] for i in report.open_incidents]
    rows.append(["previous period", f"{report.previous_start.isoformat()} to {report.start.isoformat()}",
                 *report.previous])
    rows += [["bytes by group", group, volume, "", ""] for group, volume in report.bandwidth_by_group]
    rows += [["bytes by site", site, volume, "", ""] for site, volume in report.bandwidth_by_site]
    rows += [["exception", f"{what} for {whom} by {role}", n, "", ""] for what, whom, role, n in report.exceptions_opened]
    rows += [["access requests", status, n, "", ""] for status, n in report.requests_by_status]
    rows += [["list change", f"{ts.isoformat(timespec='seconds')} {change} {entry} by {by}", "", "", ""]
             for ts, change, entry, by in report.list_changes]
    review = report.review
    rows += [["review", what, value, "", ""] for what, value in (
        ("reviewed", review.reviewed), ("waiting for a first review", review.waiting),
        ("median minutes to first review", _minutes(review.median)), ("worst minutes to first review", _minutes(review.worst)))]
    rows += [["outcome", outcome.title, n, "", ""] for outcome, n in report.outcomes]
    rows += [["incidents by year group", year, n, "", pupils] for year, n, pupils in report.by_year_group]
    return _csv(rows)


def _minutes(wait: timedelta | None) -> int | str:
    return "" if wait is None else round(wait.total_seconds() / 60)
