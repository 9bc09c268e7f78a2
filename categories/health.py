"""Is the filter really filtering? Which category index serves and why, how many
entries each category the policy acts on holds, and how old the lists are.

Plain Python (no I/O library): the gateway's start-up log and metrics, the
`lists` add-on, `schoolgate check` and `schoolgate lists status` all read the same
`Health`, so they cannot disagree.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from schoolgate.categories.index import CategoryIndex


class Serving(StrEnum):
    INDEX = "index"  # the compiled index the policy names
    PREVIOUS = "previous"  # the last good index: the file on disk was refused
    BUILTIN = "builtin"  # the small built-in list: no good index yet


@dataclass(frozen=True)
class IndexStatus:
    """Which index serves, and if it is not the one the policy names, why."""

    serving: Serving
    problem: str = ""  # IndexInvalid.problem (missing, corrupt, truncated...), "" when the named index serves
    detail: str = ""  # one sentence for the log and `schoolgate check`

    @property
    def ok(self) -> bool:
        return not self.problem


# Hints for categories no public list fills; a DSL must know these rely on something else.
_EMPTY_HINTS = {
    "illegal": "UT1 has no such list: the locked illegal-content tier (IWF, CTIRU) covers it",
    "extremism": "UT1 has no such list: the CTIRU list in the illegal-content tier and the school's own lists cover it",
    "self-harm": "UT1 has no such list: add one under [lists.extra]; searches are still caught by the risk lexicon",
    "violence": "UT1 has no such list: add one under [lists.extra]",
}


@dataclass(frozen=True)
class Health:
    status: IndexStatus
    entries: Mapping[str, int]  # every category some group acts on (not allow) -> entries in the index
    actions: Mapping[str, str]  # the same categories -> the strictest action a group takes (block, warn, monitor)
    created: float | None  # when the serving index was compiled (epoch seconds), None for the built-in list
    max_age_days: int
    now: float = field(default_factory=time.time)

    @property
    def empty_blocked(self) -> list[str]:
        return sorted(c for c, action in self.actions.items() if action == "block" and not self.entries.get(c))

    @property
    def age_days(self) -> float | None:
        return None if self.created is None else (self.now - self.created) / 86400

    @property
    def stale(self) -> bool:
        age = self.age_days
        return age is not None and self.max_age_days > 0 and age > self.max_age_days

    def problems(self) -> list[str]:
        """What IT must hear about, one line each, most serious first."""
        lines = []
        if not self.status.ok:
            lines.append(f"category index: {self.status.detail}")
        if self.stale:
            lines.append(
                f"category lists are {self.age_days:.0f} days old (max_age_days = {self.max_age_days}): "
                "is the nightly `schoolgate lists update` running?"
            )
        for category in self.empty_blocked:
            hint = _EMPTY_HINTS.get(category, "no list fills it")
            lines.append(f"blocked category {category!r} has no entries: nothing is blocked as {category} ({hint})")
        return lines


_STRICTNESS = {"allow": 0, "monitor": 1, "warn": 2, "block": 3}


def strictest_actions(groups: Iterable[object]) -> dict[str, str]:
    """Each category some group acts on (anything but allow) -> the strictest action
    any group takes, from each group's effective `categories` mapping."""
    actions: dict[str, str] = {}
    for group in groups:
        for category, action in group.categories.items():  # type: ignore[attr-defined]
            value = getattr(action, "value", action)
            if _STRICTNESS.get(value, 0) > _STRICTNESS.get(actions.get(category, "allow"), 0):
                actions[category] = value
    return actions


def assess(groups: Iterable[object], index: CategoryIndex, status: IndexStatus, max_age_days: int,
           now: float | None = None) -> Health:
    actions = strictest_actions(groups)
    sizes = index.sizes()
    created = None
    if status.serving in (Serving.INDEX, Serving.PREVIOUS):
        created = calendar.timegm(time.strptime(index.header["created"], "%Y-%m-%dT%H:%M:%SZ"))
    return Health(
        status=status,
        entries={category: sizes.get(category, 0) for category in sorted(actions)},
        actions=actions,
        created=created,
        max_age_days=max_age_days,
        now=time.time() if now is None else now,
    )
