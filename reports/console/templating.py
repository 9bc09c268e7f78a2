"""Jinja2 templates shared by the console and `schoolgate report` (autoescaping always on)."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from importlib.resources import files

from jinja2 import Environment, PackageLoader, StrictUndefined

from schoolgate.categories.taxonomy import Severity


def local_time(value: datetime | None, fmt: str = "%d %b %Y %H:%M:%S") -> str:
    """Times are stored in UTC and shown in the server's local time, as the CLI does."""
    return value.astimezone().strftime(fmt) if value else ""


def severity_name(value: int | None) -> str:
    if value is None:
        return ""
    try:
        return Severity(value).name.lower()
    except ValueError:
        return str(value)


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("schoolgate.reports.console", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["local_time"] = local_time
    env.filters["severity"] = severity_name
    return env


@cache
def stylesheet() -> str:
    return files("schoolgate.reports.console").joinpath("static/console.css").read_text(encoding="utf-8")
