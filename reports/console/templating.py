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


def human_bytes(value: int) -> str:
    """1234567 -> "1.2 MB" (decimal units, as network figures are read)."""
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("schoolgate.reports.console", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["local_time"] = local_time
    env.filters["severity"] = severity_name
    env.filters["bytes"] = human_bytes
    return env


@cache
def stylesheet() -> str:
    return files("schoolgate.reports.console").joinpath("static/console.css").read_text(encoding="utf-8")
