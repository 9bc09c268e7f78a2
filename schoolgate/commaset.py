"""The one encoding of a set of names (categories, groups, users) in a text column:
",a,b," ("" when empty), so `LIKE '%,a,%'` (or `",a," in text`) finds a member on any
database. `schoolgate.db.CommaSet` applies it to a column; code that writes rows by hand
(the record writer's hot path) uses these two functions."""

from __future__ import annotations

from collections.abc import Iterable


def encode(names: Iterable[str]) -> str:
    kept = [name for name in names if name]
    return "," + ",".join(kept) + "," if kept else ""


def decode(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


def member(name: str) -> str:
    """The substring that marks `name` as a member of an encoded set."""
    return f",{name},"
