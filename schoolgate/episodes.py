"""Episodes: which flagged attempts make one incident for the DSL.

Attempts by one pupil (the user when known, else the device address) on one risk
(the flag) with no more than `window` between one and the next form one episode,
so a page load that raises three flagged requests, or a pupil retrying a search,
is one incident with an attempt count rather than a page of copies. A closed
incident is never reopened: the caller offers only open episodes, so an attempt
after closing starts a new one. Plain Python: the record writer and the migration
that backfills old records both decide with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


class Status(StrEnum):
    NEW = "new"
    REVIEWING = "reviewing"
    ESCALATED = "escalated"
    CLOSED = "closed"


OPEN = (Status.NEW, Status.REVIEWING, Status.ESCALATED)


class SubjectKind(StrEnum):
    USER = "user"
    DEVICE = "device"  # nobody was signed in: the client address stands for the pupil


@dataclass(frozen=True, slots=True)
class Attempt:
    """One flagged access record, as an episode sees it."""

    record_id: int
    ts: datetime
    subject_kind: SubjectKind
    subject: str
    flag: str
    severity: int
    ref: str | None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.subject_kind, self.subject, self.flag


def subject_of(user: str | None, client_ip: str) -> tuple[SubjectKind, str]:
    return (SubjectKind.USER, user) if user else (SubjectKind.DEVICE, client_ip)


@dataclass(slots=True)
class Episode:
    """An incident's episode; `id` None until it is stored."""

    id: int | None
    subject_kind: SubjectKind
    subject: str
    flag: str
    first_seen: datetime
    last_seen: datetime
    attempts: int
    severity: int  # the worst seen
    record_id: int  # the first attempt at the worst severity: the record the queue shows
    ref: str | None  # that record's block-page reference
    added: list[int] = field(default_factory=list)  # attempts (record ids) added by group_attempts

    @classmethod
    def starting(cls, attempt: Attempt) -> Episode:
        return cls(None, attempt.subject_kind, attempt.subject, attempt.flag, attempt.ts, attempt.ts, 0,
                   attempt.severity, attempt.record_id, attempt.ref)

    def takes(self, attempt: Attempt, window: timedelta) -> bool:
        return self.first_seen - window <= attempt.ts <= self.last_seen + window

    def add(self, attempt: Attempt) -> None:
        self.first_seen = min(self.first_seen, attempt.ts)
        self.last_seen = max(self.last_seen, attempt.ts)
        self.attempts += 1
        if attempt.severity > self.severity:
            self.severity, self.record_id, self.ref = attempt.severity, attempt.record_id, attempt.ref
        self.added.append(attempt.record_id)


def group_attempts(open_episodes: Iterable[Episode], attempts: Iterable[Attempt], window: timedelta) -> list[Episode]:
    """The episodes these attempts extend (from `open_episodes`) or start, in the order first touched.

    Attempts are taken in time order, so records replayed late from a journal land in
    the episode their time belongs to; an attempt within `window` of an episode joins it."""
    by_key: dict[tuple[str, str, str], list[Episode]] = {}
    for episode in open_episodes:
        by_key.setdefault((episode.subject_kind, episode.subject, episode.flag), []).append(episode)
    touched: dict[int, Episode] = {}
    for attempt in sorted(attempts, key=lambda a: (a.ts, a.record_id)):
        candidates = by_key.setdefault(attempt.key, [])
        joined = next((e for e in reversed(candidates) if e.takes(attempt, window)), None)
        if joined is None:
            episode = Episode.starting(attempt)
            candidates.append(episode)
        else:
            episode = joined
        episode.add(attempt)
        touched.setdefault(id(episode), episode)
    return list(touched.values())
