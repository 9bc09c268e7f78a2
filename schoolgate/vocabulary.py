"""The policy's fixed words: what a rule does with a request (Action) and who may
change the live policy (Role). Plain enums in a module of their own, so the
command-line parser can offer them without loading the policy machinery."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    ALLOW = "allow"
    MONITOR = "monitor"  # allowed, but recorded as of interest
    WARN = "warn"  # interstitial page; the pupil may proceed, and that is recorded
    BLOCK = "block"

    @property
    def strictness(self) -> int:
        return _STRICTNESS[self]


_STRICTNESS = {Action.ALLOW: 0, Action.MONITOR: 1, Action.WARN: 2, Action.BLOCK: 3}


class Role(StrEnum):
    """Who may change the live policy (exceptions, lists, requests)."""

    TEACHER = "teacher"
    IT_ADMIN = "it_admin"
