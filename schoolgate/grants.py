"""Exceptions: time-bound, scoped openings of blocked sites or categories.

A teacher opens a site for a class for the rest of the lesson; IT opens one for
staff for a term. This module is the plain-Python part: what an exception is,
whom it covers, and who may grant what (the policy's [exceptions] rules).
Storing them, the audit trail and the change counter are in `schoolgate.live`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    NETWORK = "network"  # a room or building
    USER = "user"


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

    @property
    def what(self) -> str:
        return f"category {self.category}" if self.kind == "category" else f"{self.host}{self.path}"

    @property
    def whom(self) -> str:
        return f"{self.scope_kind.value} {self.scope.strip(',')}"

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
                    return client_ip is not None and ipaddress.ip_address(client_ip) in ipaddress.ip_network(self.scope)
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


@dataclass(frozen=True)
class LiveState:
    """What the gateway reads from the database (`schoolgate.live`): exceptions and managed list entries."""

    version: int
    grants: tuple[Grant, ...] = ()
    entries: tuple[ListEntry, ...] = ()


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


def parse_target(text: str) -> tuple[str, str, str, str]:
    """`category:games` | `example.com` | `example.com/path` -> (kind, host, path, category)."""
    if text.startswith("category:"):
        name = text.split(":", 1)[1]
        if name not in CATEGORIES:
            raise GrantRefused([f"unknown category {name!r} (see `schoolgate categories`)"])
        return "category", "", "", name
    try:
        host, path = normalise_entry(text)
    except InvalidHost as e:
        raise GrantRefused([f"{text!r} is not a domain or URL: {e}"]) from e
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
            return str(ipaddress.ip_network(scope.strip(), strict=False))
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
            ipaddress.ip_network(request.scope.strip(), strict=False)
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

