"""Exceptions: time-bound, scoped openings of blocked sites or categories.

A teacher opens a site for a class for the rest of the lesson; IT opens one for
staff for a term. This module is the plain-Python part: what an exception is,
whom it covers, and who may grant what (the policy's [exceptions] rules).
Storing them, the audit trail and the change counter are in `schoolgate.live`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum

from schoolgate import commaset
from schoolgate.categories.suffixes import public_suffix_problem
from schoolgate.categories.taxonomy import CATEGORIES
from schoolgate.identities import canonical_user
from schoolgate.policy import ListEntry, Policy, Role
from schoolgate.urls import InvalidHost, Target, normalise_entry, path_matches_prefix

# Whatever the policy says, no one opens these through the product: content that is
# illegal to view, and what the school's AUP forbids teachers to open for pupils.
NEVER_OPENED = frozenset(c.id for c in CATEGORIES.values() if c.heading == "illegal")
NEVER_BY_TEACHERS = frozenset(
    c.id for c in CATEGORIES.values() if c.heading in {"illegal", "pornography", "self-harm", "extremism"}
)


class ScopeKind(StrEnum):
    GROUP = "group"
    USERS = "users"  # a class list
    NETWORK = "network"  # a room or building: one or more address ranges
    USER = "user"


# What the console and CLI offer besides the stored kinds: a class (its members now)
# and a room (its address ranges in policy.toml), each stored as USERS / NETWORK.
CLASS, ROOM = "class", "room"

# A block page's reference (SG-7K3Q-P2XD): pasted into the "site" box it is not a host.
_REFERENCE = re.compile(r"^\s*SG[-\s]?[0-9A-Z]{4}[-\s]?[0-9A-Z]{4}\s*$", re.IGNORECASE)


class NotFound(LookupError):
    """No such exception, list entry or access request."""


class GrantRefused(ValueError):
    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("; ".join(reasons))


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    kind: str  # domain | url | category
    host: str
    path: str
    category: str
    scope_kind: ScopeKind
    scope: str
    starts_at: datetime
    ends_at: datetime
    granted_by: str
    role: str
    reason: str
    label: str = ""  # "class 9X", "room lab-2": what the granter chose, shown instead of the members

    @property
    def what(self) -> str:
        return f"category {self.category}" if self.kind == "category" else f"{self.host}{self.path}"

    @property
    def whom(self) -> str:
        return self.label or f"{self.scope_kind.value} {self.scope.strip(',')}"

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def covers(self, group: str, user: str | None, client_ip: str | None) -> bool:
        match self.scope_kind:
            case ScopeKind.GROUP:
                return group == self.scope
            case ScopeKind.USER:
                return user is not None and canonical_user(user) == self.scope
            case ScopeKind.USERS:
                return user is not None and commaset.member(canonical_user(user)) in self.scope
            case ScopeKind.NETWORK:
                try:
                    return client_ip is not None and any(
                        ipaddress.ip_address(client_ip) in ipaddress.ip_network(n) for n in self.scope.split(","))
                except ValueError:
                    return False
        return False

    def opens(self, target: Target) -> bool:
        """Whether this (domain or URL) exception matches the target."""
        if self.kind == "category":
            return False
        host = target.host
        if host != self.host and not host.endswith("." + self.host):
            return False
        return not self.path or path_matches_prefix(target.match_path, self.path)


@dataclass(frozen=True, slots=True)
class AskedFor:
    """A pupil's recent access request and its outcome, as the block page and "my requests" show it."""

    id: int
    created_at: datetime
    client_ip: str
    username: str | None
    host: str
    url: str
    status: str  # pending | approved | refused
    decided_by: str | None
    note: str | None
    open_until: datetime | None  # for an approved request: when its exception ends

    def asked_by(self, client_ip: str, user: str | None) -> bool:
        """A signed-in pupil's requests follow them; a device's stay with the device."""
        return self.username == user if user else (self.username is None and self.client_ip == client_ip)


def requests_of(asked: Iterable[AskedFor], client_ip: str, user: str | None) -> list[AskedFor]:
    """This pupil's (or, unsigned, this device's) requests, newest first."""
    return sorted((a for a in asked if a.asked_by(client_ip, user)), key=lambda a: a.id, reverse=True)


def latest_request_for(asked: Iterable[AskedFor], client_ip: str, user: str | None, host: str) -> AskedFor | None:
    """This pupil's latest request for a site, for its block page."""
    return next((a for a in requests_of(asked, client_ip, user) if a.host == host), None)


@dataclass(frozen=True)
class LiveState:
    """What the gateway reads from the database (`schoolgate.live`): exceptions, managed list
    entries and recent access requests (so a pupil sees what became of theirs)."""

    version: int
    grants: tuple[Grant, ...] = ()
    entries: tuple[ListEntry, ...] = ()
    requests: tuple[AskedFor, ...] = ()


EMPTY = LiveState(version=-1)


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """An exception as asked for, before checks: what the CLI or console collected."""

    target: str  # "category:games", a domain, or a URL prefix
    scope_kind: ScopeKind
    scope: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    actor: str
    role: Role
    label: str = ""


def class_scope(name: str, members: Iterable[str]) -> tuple[ScopeKind, str, str]:
    """A class as a scope: its members now (a pupil joining later is not covered)."""
    return ScopeKind.USERS, ",".join(sorted(set(members))), f"class {name}"


def room_scope(policy: Policy, name: str) -> tuple[ScopeKind, str, str]:
    """A room as a scope: its address ranges from [exceptions] rooms."""
    networks = dict(policy.exceptions.rooms).get(name)
    if networks is None:
        rooms = ", ".join(n for n, _ in policy.exceptions.rooms) or "none in the policy"
        raise GrantRefused([f"unknown room {name!r}; rooms are: {rooms}"])
    return ScopeKind.NETWORK, ",".join(str(n) for n in networks), f"room {name}"


def chosen_scope(policy: Policy, kind: str, value: str,
                 classes: Mapping[str, tuple[str, ...]]) -> tuple[ScopeKind, str, str]:
    """(stored kind, scope, label) for a scope as chosen: group, class, room, user, users or network."""
    value = value.strip()
    if kind == CLASS:
        if not classes.get(value):
            raise GrantRefused([f"unknown class {value!r} (import classes with `schoolgate classes import`)"])
        return class_scope(value, classes[value])
    if kind == ROOM:
        return room_scope(policy, value)
    try:
        return ScopeKind(kind), value, ""
    except ValueError:
        raise GrantRefused([f"cannot open a site for a {kind!r}"]) from None


def parse_target(text: str) -> tuple[str, str, str, str]:
    """`category:games` | `example.com` | `example.com/path` -> (kind, host, path, category)."""
    if text.startswith("category:"):
        name = text.split(":", 1)[1]
        if name not in CATEGORIES:
            raise GrantRefused([f"unknown category {name!r} (see `schoolgate categories`)"])
        return "category", "", "", name
    if _REFERENCE.match(text):
        raise GrantRefused([f"{text.strip()!r} is a block page's reference, not a site: "
                            "give the site's address (e.g. www.example.com)"])
    try:
        host, path = normalise_entry(text)
    except InvalidHost as e:
        raise GrantRefused([f"{text!r} is not a domain or URL: {e}"]) from e
    if "." not in host and ":" not in host:
        raise GrantRefused([f"{text!r} is not a site's address (e.g. www.example.com)"])
    if not path and (too_wide := public_suffix_problem(host)):
        raise GrantRefused([f"{text!r} refused: {too_wide}; name the site itself"])
    return ("url" if path else "domain"), host, path, ""


def normalise_scope(kind: ScopeKind, scope: str) -> str:
    """Canonical stored form: users as ",a,b," so one LIKE/contains test finds a member."""
    if kind is ScopeKind.USERS:
        return commaset.encode(canonical_user(u) for u in scope.split(","))
    if kind is ScopeKind.USER:
        return canonical_user(scope)
    if kind is ScopeKind.NETWORK:
        try:
            return ",".join(str(ipaddress.ip_network(n.strip(), strict=False)) for n in scope.split(","))
        except ValueError:
            return scope
    return scope.strip()


def lesson_end(policy: Policy, now: datetime) -> datetime:
    """Default end of an exception: the end of the current lesson, else the policy's default length."""
    local_now = now.astimezone()
    for start, end in policy.exceptions.lessons:
        if start <= local_now.time() < end:
            return datetime.combine(local_now.date(), end, tzinfo=local_now.tzinfo)
    return now + timedelta(minutes=policy.exceptions.default_minutes)


def end_of_day(policy: Policy, now: datetime) -> datetime:
    """The end of the school day: the last lesson's end ([exceptions] lessons), else midnight."""
    local_now = now.astimezone()
    last = max((end for _, end in policy.exceptions.lessons), default=time(23, 59, 59))
    end = datetime.combine(local_now.date(), last, tzinfo=local_now.tzinfo)
    return end if end > local_now else datetime.combine(local_now.date(), time(23, 59, 59), tzinfo=local_now.tzinfo)


LESSON, DAY = "lesson", "day"
# Fixed lengths offered besides "this lesson" and "until the end of the day" (minutes).
_LENGTHS = ((30, "30 minutes"), (60, "1 hour"), (120, "2 hours"), (180, "3 hours"),
            (24 * 60, "1 day"), (2 * 24 * 60, "2 days"), (7 * 24 * 60, "1 week"), (30 * 24 * 60, "30 days"))


def ends_at_for(policy: Policy, choice: str, now: datetime) -> datetime:
    """When an exception chosen as `choice` (lesson, day, or minutes) ends."""
    if choice in ("", "0", LESSON):
        return lesson_end(policy, now)
    if choice == DAY:
        return end_of_day(policy, now)
    if not choice.isdigit():
        raise GrantRefused([f"cannot read the length {choice!r}"])
    return now + timedelta(minutes=int(choice))


def durations(policy: Policy, role: Role, now: datetime) -> list[tuple[str, str]]:
    """The lengths a role may choose now (value, label): each within the policy's maximum."""
    limit = timedelta(minutes=policy.exceptions.max_minutes(role))
    offered = [(LESSON, "This lesson"), (DAY, "Until the end of the day"),
               *((str(minutes), label) for minutes, label in _LENGTHS)]
    return [(value, label) for value, label in offered if ends_at_for(policy, value, now) - now <= limit]


def check(policy: Policy, request: GrantRequest, listed_categories: set[str], now: datetime) -> list[str]:
    """Every reason this grant may not be made (empty: it may).

    `listed_categories` are the categories the target site is listed in, so a
    teacher cannot open a pornographic site by naming its domain."""
    problems: list[str] = []
    try:
        kind, _, _, category = parse_target(request.target)
    except GrantRefused as e:
        return e.reasons
    opened = {category} if kind == "category" else listed_categories

    if request.ends_at <= now:
        problems.append(f"the end time {request.ends_at:%Y-%m-%d %H:%M} is in the past")
    if request.ends_at <= request.starts_at:
        problems.append("the end time is before the start time")
    limit = policy.exceptions.max_minutes(request.role)
    if request.ends_at - max(request.starts_at, now) > timedelta(minutes=limit):
        problems.append(f"a {request.role.value} may open a site for at most {_duration(limit)}")
    if not request.reason.strip():
        problems.append("give a reason; it is kept in the audit trail")

    problems.extend(refusals(policy, request.role, opened))

    scope = normalise_scope(request.scope_kind, request.scope)
    if request.scope_kind is ScopeKind.GROUP:
        if scope not in policy.groups:
            problems.append(f"unknown group {scope!r}; groups are: {', '.join(policy.groups)}")
        elif request.role is Role.TEACHER and scope not in policy.exceptions.teacher_groups:
            problems.append(f"teachers may grant exceptions only for {', '.join(policy.exceptions.teacher_groups) or 'no groups'}")
    elif request.scope_kind is ScopeKind.NETWORK:
        try:
            for network in request.scope.split(","):
                ipaddress.ip_network(network.strip(), strict=False)
        except ValueError:
            problems.append(f"{request.scope!r} is not a network (CIDR, e.g. 10.20.3.0/24)")
    elif not scope:
        problems.append("name at least one user")
    return problems


def refusals(policy: Policy, role: Role | str, categories: Iterable[str]) -> list[str]:
    """Why someone in `role` may not open sites listed in these categories (empty: they may).
    Checked when an exception is granted, and again at every request it would open, so a
    teacher's exception for a host never opens a page on it listed as pornography."""
    opened = set(categories)
    problems = []
    if forbidden := sorted(opened & NEVER_OPENED):
        problems.append(f"{', '.join(forbidden)} cannot be opened by anyone")
    if role == Role.TEACHER:
        if forbidden := sorted(opened & NEVER_BY_TEACHERS - NEVER_OPENED):
            problems.append(f"teachers may not open {', '.join(forbidden)}")
        ceiling = policy.exceptions.teacher_max_severity
        if too_severe := sorted(c for c in opened - NEVER_BY_TEACHERS if c in CATEGORIES and CATEGORIES[c].severity > ceiling):
            problems.append(f"teachers may open categories up to {ceiling.name.lower()} severity; "
                            f"{', '.join(too_severe)} is higher (ask IT)")
    return problems


def _duration(minutes: int) -> str:
    if minutes % (24 * 60) == 0:
        return f"{minutes // (24 * 60)} days"
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"

