"""What a DSL did about an incident (its outcomes), and how long incidents waited for review.

Outcomes come from a fixed list, as CPOMS and MyConcern record them, each with the day it
happened and an optional note; recording one is audited (`incident.outcome`). The first time a
DSL opens or changes an incident is kept once (`first_reviewed_at`); the time to first review
is that less the incident's first attempt (`first_seen`), which is when it arose.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schoolgate.db import incident_outcomes, incidents
from schoolgate.live import record_audit
from schoolgate.reports.incidents import IncidentNotFound


class Outcome(StrEnum):
    NO_CONCERN = "no-concern"
    SPOKE_TO_PUPIL = "spoke-to-pupil"
    PARENTS_CONTACTED = "parents-contacted"
    EARLY_HELP = "early-help"
    SOCIAL_CARE = "social-care"
    PREVENT = "prevent"
    POLICE = "police"
    IWF = "iwf"

    @property
    def title(self) -> str:  # type: ignore[override]  # str.title() is a method; an outcome has a title
        return _TITLES[self]


_TITLES = {
    Outcome.NO_CONCERN: "No concern",
    Outcome.SPOKE_TO_PUPIL: "Spoke to the pupil",
    Outcome.PARENTS_CONTACTED: "Parents or carers contacted",
    Outcome.EARLY_HELP: "Referred to early help",
    Outcome.SOCIAL_CARE: "Referred to children's social care",
    Outcome.PREVENT: "Referred to Prevent (Channel)",
    Outcome.POLICE: "Reported to the police",
    Outcome.IWF: "Reported to the IWF",
}


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    outcome: Outcome
    on: date
    note: str
    author: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class FirstReview:
    at: datetime
    by: str
    waited: timedelta  # from the incident's first attempt to this review


@dataclass(frozen=True, slots=True)
class ReviewTimes:
    """Time to first review of the incidents that arose in a period."""

    reviewed: int
    waiting: int  # not opened by a DSL yet
    median: timedelta | None
    worst: timedelta | None
    longest_waiting: timedelta | None  # the oldest incident nobody has opened, until now


def _now() -> datetime:
    return datetime.now(UTC)


def summarise(waits: list[timedelta], still_waiting: list[timedelta]) -> ReviewTimes:
    """Median and worst of the times to first review; the unopened counted apart."""
    ordered, middle = sorted(waits), len(waits) // 2
    median = (ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2) if waits else None
    return ReviewTimes(reviewed=len(waits), waiting=len(still_waiting), median=median, worst=max(waits, default=None),
                       longest_waiting=max(still_waiting, default=None))


async def record_outcome(engine: AsyncEngine, incident_id: int, outcome: Outcome, on: date, note: str, *,
                         actor: str, role: str) -> None:
    """Add an outcome to an incident; audited as incident.outcome (without the note's text,
    which is kept with the incident and purged with it)."""
    note = note.strip()
    async with engine.begin() as conn:
        if (await conn.execute(select(incidents.c.id).where(incidents.c.id == incident_id))).first() is None:
            raise IncidentNotFound(f"no incident #{incident_id}")
        await conn.execute(insert(incident_outcomes).values(
            incident_id=incident_id, outcome=outcome.value, outcome_date=on, note=note, author=actor, ts=_now()))
        await record_audit(conn, actor, role, "incident.outcome", "incident", incident_id, None,
                           {"outcome": outcome.value, "date": on.isoformat(), "note_added": bool(note)})


async def outcomes(engine: AsyncEngine, incident_id: int) -> list[RecordedOutcome]:
    o = incident_outcomes.c
    query = select(incident_outcomes).where(o.incident_id == incident_id).order_by(o.outcome_date, o.id)
    async with engine.connect() as conn:
        return [RecordedOutcome(Outcome(r.outcome), r.outcome_date, r.note, r.author, r.ts)
                for r in (await conn.execute(query)).all()]


async def mark_reviewed(engine: AsyncEngine, incident_id: int, actor: str) -> FirstReview:
    """Keep the first time a DSL opened or changed the incident (later calls change nothing)."""
    async with engine.begin() as conn:
        await conn.execute(update(incidents).where(incidents.c.id == incident_id,
                                                   incidents.c.first_reviewed_at.is_(None))
                           .values(first_reviewed_at=_now(), first_reviewed_by=actor))
        review = await _first_review(conn, incident_id)
    assert review is not None  # just set
    return review


async def first_review(engine: AsyncEngine, incident_id: int) -> FirstReview | None:
    async with engine.connect() as conn:
        return await _first_review(conn, incident_id)


async def _first_review(conn: AsyncConnection, incident_id: int) -> FirstReview | None:
    row = (await conn.execute(select(incidents.c.first_reviewed_at, incidents.c.first_reviewed_by, incidents.c.first_seen)
                              .where(incidents.c.id == incident_id))).first()
    if row is None or row.first_reviewed_at is None:
        return None
    return FirstReview(at=row.first_reviewed_at, by=row.first_reviewed_by, waited=row.first_reviewed_at - row.first_seen)


async def review_times(engine: AsyncEngine, start: datetime, end: datetime) -> ReviewTimes:
    """Median and worst time to first review of the incidents that arose (their first attempt)
    in [start, end), for the period report; those nobody has opened yet are counted apart."""
    now = _now()
    async with engine.connect() as conn:
        rows = (await conn.execute(
            select(incidents.c.first_seen, incidents.c.first_reviewed_at)
            .where(incidents.c.first_seen >= start, incidents.c.first_seen < end))).all()
    return summarise([r.first_reviewed_at - r.first_seen for r in rows if r.first_reviewed_at is not None],
                     [now - r.first_seen for r in rows if r.first_reviewed_at is None])


async def outcome_counts(engine: AsyncEngine, start: datetime, end: datetime) -> list[tuple[Outcome, int]]:
    """How many incidents that arose in [start, end) got each outcome, most first (the period report)."""
    o = incident_outcomes.c
    query = (select(o.outcome, func.count(func.distinct(o.incident_id)))
             .join(incidents, incidents.c.id == o.incident_id)
             .where(incidents.c.first_seen >= start, incidents.c.first_seen < end).group_by(o.outcome))
    async with engine.connect() as conn:
        counts = [(Outcome(outcome), n) for outcome, n in (await conn.execute(query)).all()]
    return sorted(counts, key=lambda pair: (-pair[1], pair[0].title))
