"""Jinja2 templates shared by the console and `schoolgate report` (autoescaping always on)."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from importlib.resources import files
from urllib.parse import quote

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


def duration(value: timedelta | None) -> str:
    """A wait as people say it: "4 min", "3 h 12 min", "2 days 5 h"."""
    if value is None:
        return ""
    minutes = max(0, int(value.total_seconds() // 60))
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days} day{'' if days == 1 else 's'} {hours} h"
    return f"{hours} h {mins} min" if hours else f"{mins} min"


IDENTIFIED_BY = {"proxy-basic": "proxy sign-in", "kerberos": "Windows sign-in (Kerberos)", "portal": "the sign-in page",
                 "accounting": "Wi-Fi sign-in (RADIUS)", "network": "network only: not a person",
                 "unknown": "nothing: an unknown device"}


def identified_by(source: str | None) -> str:
    """How a record's identity was obtained (schoolgate.identities.Source), as a DSL reads it."""
    return IDENTIFIED_BY.get(source or "", "not recorded")


def pupil_url(user: str) -> str:
    return "/pupils/" + quote(user, safe="")


def device_url(address: str) -> str:
    return "/devices/" + quote(address, safe="")


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
    env.filters["duration"] = duration
    env.filters["identified_by"] = identified_by
    env.filters["pupil_url"] = pupil_url
    env.filters["device_url"] = device_url
    env.filters["bytes"] = human_bytes
    return env


@cache
def stylesheet() -> str:
    return files("schoolgate.reports.console").joinpath("static/console.css").read_text(encoding="utf-8")
