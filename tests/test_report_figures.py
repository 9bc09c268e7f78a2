"""The period report's figures against raw counts: the previous period of equal length,
bandwidth by group and site, unblocks (exceptions), access requests and managed-list
changes, over records and changes written the way the gateway and the console write them."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta

from test_console import store, write_policy
from test_records import make_record

from schoolgate.db import create_engine, upgrade
from schoolgate.grants import GrantRequest, ScopeKind
from schoolgate.live import LiveStore
from schoolgate.policy import Action, Role
from schoolgate.reports.report import build_report, report_csv

START = datetime(2026, 11, 9, tzinfo=UTC)
END = START + timedelta(days=7)


def records():
    """In the week: pupils and staff, some blocked, with bytes; the week before: fewer; after: ignored."""
    week = [make_record(ts=START + timedelta(hours=h), seq=h, group="pupils", host="cdn.video.co.uk",
                        bytes_in=100 * h, bytes_out=1000) for h in range(1, 11)]
    week += [make_record(ts=START + timedelta(days=2, hours=h), seq=100 + h, group="staff", host="www.video.co.uk",
                         bytes_in=5000, bytes_out=None) for h in range(3)]
    week += [make_record(ts=START + timedelta(days=3, hours=h), seq=200 + h, group="pupils", host="www.pornhub.com",
                         verdict="block", flag="pornography", flag_severity=3, bytes_in=0, bytes_out=0)
             for h in range(4)]
    before = [make_record(ts=START - timedelta(days=1, hours=h), seq=300 + h, group="pupils", verdict="block")
              for h in range(2)]
    before += [make_record(ts=START - timedelta(days=6, hours=h), seq=400 + h, group="pupils") for h in range(6)]
    later = [make_record(ts=END + timedelta(hours=1), seq=500, group="pupils", bytes_in=10**9)]
    return week + before + later


async def changes(database: str, policy) -> None:
    live = LiveStore(create_engine(database))
    now = datetime.now(UTC)

    def grant(scope_kind: ScopeKind, scope: str, actor: str, role: Role) -> GrantRequest:
        return GrantRequest(target="www.bbc.co.uk", scope_kind=scope_kind, scope=scope, starts_at=now,
                            ends_at=now + timedelta(minutes=30), reason="lesson", actor=actor, role=role)

    for user in ("alice", "bob"):
        await live.grant(policy, grant(ScopeKind.USER, user, "it", Role.IT_ADMIN), set())
    await live.grant(policy, grant(ScopeKind.GROUP, "pupils", "teacher", Role.TEACHER), set())
    await live.add_entry(Action.BLOCK, "games.example", "distracting", "it", Role.IT_ADMIN)
    await live.create_request(ref=None, client_ip="10.1.2.3", username="carol", group="pupils",
                              url="https://www.bbc.co.uk/news", host="www.bbc.co.uk", categories=(), reason="news")


def test_report_figures_match_raw_counts(tmp_path):
    policy = write_policy(tmp_path)
    database = policy.gateway.database
    asyncio.run(upgrade(database))
    store(policy, *records())
    asyncio.run(changes(database, policy))
    now = datetime.now(UTC)
    # The live changes happen now: report over a week that holds now, and a week that holds the records.
    report = asyncio.run(build_report(create_engine(database), START, END))
    live_report = asyncio.run(build_report(create_engine(database), now - timedelta(days=1), now + timedelta(days=1)))

    with sqlite3.connect(database.split("///", 1)[1]) as db:
        def count(where: str, *args) -> int:
            return db.execute(f"SELECT count(*) FROM access_log WHERE {where}", args).fetchone()[0]

        def volume(where: str, *args) -> int:
            return db.execute(f"SELECT coalesce(sum(coalesce(bytes_in, 0) + coalesce(bytes_out, 0)), 0) "
                              f"FROM access_log WHERE {where}", args).fetchone()[0]

        week = "ts >= ? AND ts < ?"
        bounds = (START.isoformat(sep=" "), END.isoformat(sep=" "))
        prior = ((START - (END - START)).isoformat(sep=" "), START.isoformat(sep=" "))
        assert report.total == count(week, *bounds) == 17
        assert report.previous == (count(week, *prior), count(week + " AND verdict = 'block'", *prior),
                                   count(week + " AND flag_severity IS NOT NULL", *prior)) == (8, 2, 0)
        assert dict(report.bandwidth_by_group) == {
            "pupils": volume(week + " AND group_name = 'pupils'", *bounds),
            "staff": volume(week + " AND group_name = 'staff'", *bounds)} == {"pupils": 15500, "staff": 15000}
        # cdn.video.co.uk and www.video.co.uk are one site; the blocked site moved no bytes.
        assert report.bandwidth_by_site[0] == ("video.co.uk", volume(week + " AND host LIKE '%video.co.uk'", *bounds))
        assert report.top_blocked == [("pornhub.com", 4)]
    assert report.change(17, 8) == "+112%" and report.change(0, 0) == "no change" and report.change(3, 0) == "new"

    # Unblocks name no pupil; the list change names the member of staff who made it.
    assert sorted(live_report.exceptions_opened) == [("www.bbc.co.uk", "a pupil", "it_admin", 2),
                                                     ("www.bbc.co.uk", "group pupils", "teacher", 1)]
    assert live_report.requests_by_status == [("pending", 1)]
    assert [(change, entry, by) for _, change, entry, by in live_report.list_changes] == [
        ("block added", "games.example", "it")]
    assert report.exceptions_opened == [] and report.list_changes == []  # none in the records' week
    text = report_csv(live_report)
    assert "alice" not in text and "bob" not in text and "carol" not in text
    assert "list change" in text and "block added games.example by it" in text


def test_whole_days_come_from_summaries_that_follow_late_records(tmp_path):
    """The first report folds each complete day; the next reads the summaries and agrees; a record
    written late into a folded day (a gateway replaying its journal) is counted at the next report."""
    policy = write_policy(tmp_path)
    database = policy.gateway.database
    asyncio.run(upgrade(database))
    store(policy, *records())
    # Local midnights, as the console and CLI ask: the edges of the week come from the log itself.
    start, end = START + timedelta(hours=1, minutes=30), END + timedelta(hours=1, minutes=30)
    first = asyncio.run(build_report(create_engine(database), start, end))
    with sqlite3.connect(database.split("///", 1)[1]) as db:
        # The whole UTC days of this week and the one before (each period's first day starts at 01:30).
        assert db.execute("SELECT count(*) FROM report_days").fetchone()[0] == 13
        folded = db.execute("SELECT sum(records) FROM report_days").fetchone()[0]
        assert folded == db.execute("SELECT count(*) FROM access_log WHERE ts >= ? AND ts < ?",
                                    ((START - timedelta(days=6)).isoformat(sep=" "), END.isoformat(sep=" "))).fetchone()[0]
    again = asyncio.run(build_report(create_engine(database), start, end))
    assert (again.total, again.blocked, again.flagged, again.by_group, again.by_category, again.top_blocked,
            again.bandwidth_by_site, again.days, again.previous) == (
        first.total, first.blocked, first.flagged, first.by_group, first.by_category, first.top_blocked,
        first.bandwidth_by_site, first.days, first.previous)

    store(policy, make_record(ts=START + timedelta(days=4, hours=5), seq=900, group="staff", host="www.pornhub.com",
                              verdict="block", bytes_in=0, bytes_out=7))
    late = asyncio.run(build_report(create_engine(database), start, end))
    assert late.total == first.total + 1 and late.blocked == first.blocked + 1
    assert dict(late.bandwidth_by_group)["staff"] == dict(first.bandwidth_by_group)["staff"] + 7
    assert late.top_blocked == [("pornhub.com", 5)]


def test_the_report_on_postgresql_agrees_with_sqlite(tmp_path, database_url):
    """The same records on both databases give the same report, from summaries and from the log alike."""
    lite = write_policy(tmp_path)
    on_postgres = dataclasses.replace(lite, gateway=dataclasses.replace(lite.gateway, database=database_url))
    reports = []
    for policy in (lite, on_postgres):
        asyncio.run(upgrade(policy.gateway.database))
        store(policy, *records())

        async def twice(database: str = policy.gateway.database) -> list:
            engine = create_engine(database)
            try:
                return [await build_report(engine, START + timedelta(hours=2), END + timedelta(hours=2)) for _ in range(2)]
            finally:
                await engine.dispose()

        reports += asyncio.run(twice())
    figures = [(r.total, r.blocked, r.flagged, r.previous, r.by_group, r.by_category, r.top_blocked,
                r.bandwidth_by_group, r.bandwidth_by_site) for r in reports]
    assert figures[0][0] == 17 and all(f == figures[0] for f in figures)


def test_the_report_gives_incidents_by_year_group_time_to_review_and_outcomes(tmp_path):
    from schoolgate.reports.outcomes import Outcome, mark_reviewed, record_outcome

    policy = write_policy(tmp_path)
    database = policy.gateway.database
    asyncio.run(upgrade(database))
    flagged = dict(verdict="block", flag="self-harm", flag_severity=4)
    store(policy,  # amy twice, days apart (two episodes); ben once; a device nobody signed in on
          make_record(ts=START + timedelta(days=1), seq=1, user="amy", **flagged),
          make_record(ts=START + timedelta(days=3), seq=2, user="amy", **flagged),
          make_record(ts=START + timedelta(days=2), seq=3, user="ben", **flagged),
          make_record(ts=START + timedelta(days=2), seq=4, user=None, client_ip="10.9.9.9", **flagged))
    with sqlite3.connect(database.split("///", 1)[1]) as db:
        db.executemany("INSERT INTO pupil_directory (username, year_group, form, updated_at) VALUES (?, ?, ?, ?)",
                       [("amy", "Year 7", "7B", "2026-11-01 00:00:00"), ("ben", "Year 8", "8C", "2026-11-01 00:00:00")])
        amy_first, ben = (db.execute("SELECT id FROM incidents WHERE subject = ? ORDER BY first_seen", (user,)).fetchone()[0]
                          for user in ("amy", "ben"))

    async def review() -> None:
        engine = create_engine(database)
        await mark_reviewed(engine, amy_first, "dsl")
        await record_outcome(engine, amy_first, Outcome.SPOKE_TO_PUPIL, START.date(), "", actor="dsl", role="dsl")
        await record_outcome(engine, ben, Outcome.SPOKE_TO_PUPIL, START.date(), "", actor="dsl", role="dsl")
        await record_outcome(engine, ben, Outcome.PARENTS_CONTACTED, START.date(), "", actor="dsl", role="dsl")
        await engine.dispose()

    asyncio.run(review())
    report = asyncio.run(build_report(create_engine(database), START, END))
    assert report.by_year_group == [("Year 7", 2, 1), ("Year 8", 1, 1), ("not known", 1, 1)]
    assert (report.review.reviewed, report.review.waiting) == (1, 3)
    assert [(o.title, n) for o, n in report.outcomes] == [("Spoke to the pupil", 2), ("Parents or carers contacted", 1)]
    text = report_csv(report)
    assert "incidents by year group,Year 7,2,,1" in text and "amy" not in text and "ben" not in text
