"""Who signs in to the review console (plain data: the CLI reads it without the database)."""

from __future__ import annotations

from enum import StrEnum

from schoolgate.vocabulary import Role


class ConsoleRole(StrEnum):
    DSL = "dsl"  # Designated Safeguarding Lead: flagged records with identities, triage
    IT_ADMIN = "it_admin"  # lists, exceptions, requests, settings
    TEACHER = "teacher"  # exceptions for their groups, their groups' requests

    @property
    def title(self) -> str:  # type: ignore[override]  # str.title() is a method; a role has a title
        return {"dsl": "Safeguarding lead", "it_admin": "IT administrator", "teacher": "Teacher"}[self.value]

    @property
    def live_role(self) -> Role | None:
        """The role `schoolgate.live` checks exceptions and lists against (none for the DSL)."""
        return {"it_admin": Role.IT_ADMIN, "teacher": Role.TEACHER}.get(self.value)
