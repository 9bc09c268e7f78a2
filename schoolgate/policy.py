"""The school's policy: `policy.toml` read, checked and turned into plain data.

The schema is declared, not scattered: each `[section]` is a frozen dataclass
below (`GatewaySettings`, `RetentionSettings`...), whose field names are the
TOML keys, whose types say how a value is read and whose defaults are the
defaults. One reader (`_read_section`) reads every section the same way and
reports every unknown key with its file:line and the nearest known key.

Loading either returns a complete, valid `Policy` or raises `PolicyInvalid`
carrying every problem found, so that `schoolgate check` can list them all and
the gateway can keep its last good policy.

To add a setting: add a field (with its default) to the section's dataclass,
a row to README's policy reference, and, if it needs more than its type checks,
a line in the section's `problems()`. To add a section: a new frozen dataclass,
a field on `Policy` and an entry in `SECTIONS`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from datetime import date, datetime, time, timedelta
from enum import Enum, StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from schoolgate.categories.suffixes import public_suffix_problem
from schoolgate.categories.taxonomy import CATEGORIES, UT1_CATEGORY_URL, Severity
from schoolgate.identities import canonical_user
from schoolgate.schedules import Schedule, Span, parse_span, parse_term, parse_timezone
from schoolgate.upstream import UpstreamProxy, parse_upstream_proxy
from schoolgate.urls import InvalidHost, canonical_ip, normalise_entry
from schoolgate.vocabulary import Action, Role

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Decrypt(StrEnum):
    """Which allowed HTTPS a group's connections decrypt (schoolgate/decrypt.py says what "needed" covers)."""

    NEEDED = "needed"  # only where decrypting changes a decision or a record; the rest is decided by name
    ALL = "all"  # every connection the [tls] settings let be decrypted


class UrlLogging(StrEnum):
    FULL = "full"  # scheme, host, path and query
    PATHLESS = "path-less"  # scheme and host only
    NONE = "none"  # no URL; the host is still recorded


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class PolicyInvalid(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# A section's `problems()` yields (message, key) pairs: what is wrong and where.
Findings = Iterator[tuple[str, str]]


def setting(default: Any = MISSING, *, key: str | None = None, parse: Callable[..., Any] | None = None,
            choices: tuple[str, ...] = (), never: str | None = None, hidden: bool = False,
            repr: bool = True) -> Any:
    """A field with how it is read: `key` when the TOML name is not a Python name,
    `parse(reader, value, *where)` for values no type can describe, `choices` to
    narrow an enum, `never` a word meaning None, `hidden` for a field filled by the
    loader rather than written in policy.toml."""
    meta = {"key": key, "parse": parse, "choices": choices, "never": never, "hidden": hidden}
    kwargs: dict[str, Any] = {"metadata": meta, "repr": repr}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or frozenset for a default")
    if default is not MISSING:
        kwargs["default"] = default
    return field(**kwargs)


def toml_key(f: Any) -> str:
    return f.metadata.get("key") or f.name


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One line of a local allow/block list."""

    host: str
    path: str  # URL prefix ("" for a whole domain and its subdomains)
    action: Action
    source: str  # "policy.toml:41" or "lists/allow.txt:3", shown by `explain`
    text: str  # as written

    @property
    def specificity(self) -> tuple[int, int]:
        # A deeper host beats a shallower one; on the same host a longer path wins.
        return (self.host.count(".") + 1, len(self.path))


# ---- value readers for settings no type describes ----------------------------------------

def _networks(r: _Reader, value: Any, *where: str) -> tuple[IPNetwork, ...]:
    networks = []
    for text in r.strings(value, *where):
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as e:
            hint = ""
            try:
                hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
            except ValueError:
                pass
            r.problem(f"network {text!r} is not a valid CIDR network ({e}){hint}", *where, value=text)
    return tuple(networks)


def _addresses_or_networks(r: _Reader, value: Any, *where: str) -> tuple[IPNetwork, ...]:
    networks = []
    for text in r.strings(value, *where):
        try:
            networks.append(ipaddress.ip_network(canonical_ip(text) or text, strict=False))
        except ValueError:
            r.problem(f"{text!r} is not an IP address or network", *where, value=text)
    return tuple(networks)


def _rooms(r: _Reader, value: Any, *where: str) -> tuple[tuple[str, tuple[IPNetwork, ...]], ...]:
    """`{ "lab-2" = ["10.20.3.0/24"], ... }`: named sets of device address ranges."""
    if not isinstance(value, dict):
        r.problem(f"{'.'.join(where)} must be a table of room = [networks]", *where)
        return ()
    return tuple((str(name), _networks(r, networks, *where, str(name))) for name, networks in value.items())


def _domains(r: _Reader, value: Any, *where: str) -> tuple[str, ...]:
    """Domain names (each covering its subdomains), normalised; no paths."""
    good = []
    for text in r.strings(value, *where):
        try:
            host, path = normalise_entry(text)
            if path:
                raise InvalidHost("name a domain, without a path")
        except InvalidHost as e:
            r.problem(f"{text!r} is not a domain: {e}", *where, value=text)
            continue
        good.append(host)
    return tuple(good)


def _endpoints(r: _Reader, value: Any, *where: str) -> tuple[str, ...]:
    """`host`, `host:port`, `[v6]:port`, an address or a network."""
    good = []
    for text in r.strings(value, *where):
        entry = text.strip().lower()
        host, port = split_endpoint(entry)
        try:
            if port is not None and not 0 < port < 65536:
                raise InvalidHost(f"port {port} is out of range")
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                normalise_entry(host)
        except InvalidHost as e:
            r.problem(f"{text!r} is not a host, host:port or network: {e}", *where, value=text)
            continue
        good.append(entry)
    return tuple(good)


def split_endpoint(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]:port`, `10.0.0.0/8`, or a bare IPv6 address."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return entry, None


def _category_names(r: _Reader, value: Any, *where: str) -> frozenset[str]:
    names = set()
    for name in r.strings(value, *where):
        if r.known_category(name, *where, value=name):
            names.add(name)
    return frozenset(names)


def _category_actions(r: _Reader, value: Any, *where: str) -> Mapping[str, Action]:
    actions: dict[str, Action] = {}
    for name, text in r.mapping(value, *where).items():
        if r.known_category(name, *where, name) and (action := r.enum(Action, text, (), *where, name)) is not None:
            actions[name] = action
    return actions


def _sources(r: _Reader, value: Any, *where: str) -> tuple[str, ...]:
    return tuple(s if "://" in s else str(r.relative(s)) for s in r.strings(value, *where))


def _extra_lists(r: _Reader, value: Any, *where: str) -> tuple[tuple[Path, str], ...]:
    extra: list[tuple[Path, str]] = []
    for name, spec in r.mapping(value, *where).items():
        if r.known_category(name, *where, name):
            extra.extend((r.relative(str(text)), name) for text in (spec if isinstance(spec, list) else [spec]))
    return tuple(extra)


def _made_file(r: _Reader, value: Any, *where: str) -> Path | None:
    """A file the gateway and its timers write, as written in the policy: `var/x` goes to
    the state directory when there is one (the policy's folder, /etc/schoolgate, is
    read-only for them), like an unwritten default; "" for none."""
    if not isinstance(value, str):
        r.problem(f"{'.'.join(where)} = {value!r} is not a path", *where)
        return None
    text = value
    if not text:
        return None
    path = Path(text).expanduser()
    return r.default_path(path) if not path.is_absolute() and path.parts[:1] == ("var",) else r.relative(path)


def _upstream_proxy(r: _Reader, value: Any, *where: str) -> UpstreamProxy | None:
    if not isinstance(value, str):
        r.problem(f"{'.'.join(where)} must be a proxy URL string", *where)
        return None
    if not value:
        return None
    try:
        return parse_upstream_proxy(value)
    except ValueError as e:
        r.problem(f"upstream_proxy {e}", *where)  # not the value itself: it may carry a password
        return None


def _builtin_skip(r: _Reader, value: Any, *where: str) -> tuple[str, ...]:
    entries = []
    for text in r.strings(value, *where):
        try:
            host, path = normalise_entry(text)
        except InvalidHost as e:
            r.problem(str(e), *where, value=text)
            continue
        entries.append(host + path)
    return tuple(entries)


def _lessons(r: _Reader, value: Any, *where: str) -> tuple[tuple[time, time], ...]:
    lessons = []
    for text in r.strings(value, *where):
        try:
            lessons.append(parse_lesson(text))
        except ValueError as e:
            r.problem(f"lesson {text!r} is not HH:MM-HH:MM ({e})", *where, value=text)
    return tuple(lessons)


# ---- the sections -------------------------------------------------------------------------

@dataclass(frozen=True)
class SchoolSettings:
    """[school]: shown on block pages."""

    name: str = "Our school"
    contact: str = "your IT team"
    logo_url: str = ""  # https:// URL or data:image/... shown on every page; "" for none
    block_message: str = ""  # the school's own words on the block page ("" keeps the built-in sentence)
    warning_message: str = ""  # ... and on the warning page
    page_footer: str = ""  # a line before the standard footer (e.g. the AUP's name or a helpline)

    def problems(self) -> Findings:
        if self.logo_url and not self.logo_url.startswith(("https://", "data:image/")):
            yield f"logo_url {self.logo_url[:60]!r} must start with https:// or data:image/", "logo_url"
        for key in ("block_message", "warning_message", "page_footer"):
            if len(getattr(self, key)) > 500:
                yield f"{key} is {len(getattr(self, key))} characters; pages show at most 500", key


@dataclass(frozen=True)
class GatewaySettings:
    """[gateway]: the proxy process itself."""

    database: str = "sqlite+aiosqlite:///schoolgate.db"  # SQLAlchemy URL; relative SQLite paths beside the policy
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9464  # 0 turns the metrics endpoint off
    log_urls: UrlLogging = UrlLogging.FULL
    default_group: str = ""  # the older name of unknown_group
    unknown_group: str = ""  # clients on no listed network that nobody signed in on; "": the strictest group
    default_action: Action = Action.ALLOW
    secret_file: Path = Path("var/gateway.secret")  # signs warning and request-access links; shared by all gateways
    # host or host:port the gateway may reach although they are loopback or its own addresses
    internal_destinations: tuple[str, ...] = setting((), parse=_endpoints)
    # what the PAC file (/proxy.pac) sends DIRECT besides plain names and loopback: the school's own servers
    pac_direct_domains: tuple[str, ...] = setting((), parse=_domains)
    pac_direct_networks: tuple[IPNetwork, ...] = setting((), parse=_addresses_or_networks)
    # "http://[user:password@]host:port": the provider's or local authority's proxy every allowed connection goes through
    upstream_proxy: UpstreamProxy | None = setting(None, parse=_upstream_proxy)

    def problems(self) -> Findings:
        if not 0 <= self.metrics_port <= 65535:
            yield f"metrics_port {self.metrics_port} is not a TCP port (0 turns metrics off)", "metrics_port"


@dataclass(frozen=True)
class TlsSettings:
    """[tls]: which HTTPS is decrypted; banking and health pass through untouched."""

    intercept: bool = True
    no_intercept_domains: tuple[str, ...] = setting((), parse=_domains)
    no_intercept_categories: frozenset[str] = setting(frozenset(), parse=_category_names)


@dataclass(frozen=True)
class AuthSettings:
    """[auth]: proxy sign-in."""

    htpasswd: Path | None = None

    def problems(self) -> Findings:
        if self.htpasswd and not self.htpasswd.is_file():
            yield f"htpasswd file {self.htpasswd} does not exist", "htpasswd"


@dataclass(frozen=True)
class ListsSettings:
    """[lists]: the category lists."""

    # compiled category index (`schoolgate lists update` writes it); `var/...` goes to the state directory
    index: Path | None = setting(None, parse=_made_file)
    sources: tuple[str, ...] = setting((), parse=_sources)  # UT1 directories, archives or URLs
    extra: tuple[tuple[Path, str], ...] = setting((), parse=_extra_lists)  # [lists.extra] CATEGORY = files
    # Where each UT1 category is fetched from when a URL source cannot be had whole ({name}: UT1's name); "" for never.
    category_url: str = UT1_CATEGORY_URL
    max_age_days: int = 7  # older lists are reported (check, log, metric, alert): the nightly update is not running
    builtin: bool = True  # compile schoolgate's small built-in list into the index
    builtin_skip: tuple[str, ...] = setting((), parse=_builtin_skip)  # its entries to leave out, canonical

    def problems(self) -> Findings:
        if self.max_age_days < 0:
            yield f"max_age_days {self.max_age_days} is negative (0 turns the staleness check off)", "max_age_days"
        if self.category_url and "{name}" not in self.category_url:
            yield f"category_url {self.category_url!r} has no {{name}} for the UT1 category", "category_url"


@dataclass(frozen=True)
class LocalSettings:
    """[local]: the school's own allow and block lists, as written; `Policy.local` holds the entries."""

    allow: tuple[str, ...] = ()
    block: tuple[str, ...] = ()
    allow_files: tuple[Path, ...] = ()
    block_files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ExceptionSettings:
    """[exceptions]: who may open what, for how long."""

    lessons: tuple[tuple[time, time], ...] = setting((), parse=_lessons)
    default_minutes: int = 60
    teacher_max_minutes: int = 180
    it_admin_max_minutes: int = 30 * 24 * 60
    teacher_max_severity: Severity = Severity.LOW
    teacher_groups: tuple[str, ...] = ()
    # Rooms a site can be opened for: name -> the address ranges of its devices.
    rooms: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = setting((), parse=_rooms)

    def max_minutes(self, role: Role) -> int:
        return self.teacher_max_minutes if role is Role.TEACHER else self.it_admin_max_minutes

    def problems(self) -> Findings:
        for name in ("default_minutes", "teacher_max_minutes", "it_admin_max_minutes"):
            if getattr(self, name) < 1:
                yield f"{name} must be at least 1", name


@dataclass(frozen=True)
class MonitoringSettings:
    """[monitoring]: what is recorded and flagged for the DSL."""

    search_terms: bool = True
    flag_min_severity: Severity = Severity.MEDIUM
    block_searches_at: Severity | None = setting(Severity.CRITICAL, never="never")
    console_url: str = ""  # the link alerts carry
    # a pupil's flagged attempts on one risk no further apart than this are one incident
    episode_minutes: int = 30

    def problems(self) -> Findings:
        if self.episode_minutes < 1:
            yield "episode_minutes must be at least 1", "episode_minutes"


@dataclass(frozen=True)
class EmailSettings:
    """[alerts.email] and [reports.email]: an SMTP server and who receives its mail."""

    host: str = ""
    port: int = 25
    sender: str = setting("schoolgate@localhost", key="from")
    to: tuple[str, ...] = ()
    starttls: bool = False
    user: str = ""
    password_file: Path | None = None  # kept out of policy.toml, which is widely readable
    password: str = setting("", hidden=True, repr=False)  # read from password_file


@dataclass(frozen=True)
class WebhookSettings:
    """[alerts.webhook], [alerts.teams], [alerts.google_chat]: a webhook channel; the section
    chooses the message's format (generic JSON, a Teams Adaptive Card, a Google Chat card)."""

    url: str = setting("", repr=False)  # carries the channel's secret token


@dataclass(frozen=True)
class ReminderSettings:
    """[alerts.reminders]: reminders while a high-severity incident stays new (unreviewed)."""

    min_severity: Severity = Severity.HIGH
    after_minutes: int = 30  # the first, this long after the flagged access
    every_minutes: int = 60  # then again this often
    max_reminders: int = 3  # 0: no reminders

    def problems(self) -> Findings:
        for name in ("after_minutes", "every_minutes"):
            if getattr(self, name) < 1:
                yield f"{name} must be at least 1", name
        if self.max_reminders < 0:
            yield "max_reminders must be 0 (none) or more", "max_reminders"


@dataclass(frozen=True)
class AlertSettings:
    """[alerts]: safeguarding alerts to the DSL; on when either channel is set."""

    min_severity: Severity = Severity.HIGH
    per_user_minutes: int = 15
    max_per_hour: int = 60
    email: EmailSettings = EmailSettings()
    webhook: WebhookSettings = WebhookSettings()
    teams: WebhookSettings = WebhookSettings()
    google_chat: WebhookSettings = WebhookSettings()
    reminders: ReminderSettings = ReminderSettings()
    console_url: str = setting("", hidden=True)  # [monitoring] console_url
    max_attempts: int = setting(5, hidden=True)
    retry_initial_s: float = setting(2.0, hidden=True)  # doubles after each failed attempt
    send_timeout_s: float = setting(10.0, hidden=True)

    @property
    def enabled(self) -> bool:
        return bool(self.email.host or self.webhook.url or self.teams.url or self.google_chat.url)

    @property
    def per_user_window_s(self) -> int:
        return 60 * self.per_user_minutes

    def problems(self) -> Findings:
        if self.email.host and not self.email.to:
            yield "[alerts.email] has a host but no recipients (to = [...])", "email"
        if self.enabled and not self.console_url:
            yield "alerts need [monitoring] console_url, the link the DSL follows", "min_severity"


@dataclass(frozen=True)
class RetentionSettings:
    """[retention]: access records are personal data, kept only as long as this says."""

    records_days: int = 180
    flagged_days: int = 2190  # flagged records and their incidents: safeguarding files are kept longer

    def problems(self) -> Findings:
        if self.records_days < 1:
            yield "records_days must be at least 1", "records_days"
        if self.flagged_days < self.records_days:
            yield "flagged_days must be at least records_days", "flagged_days"


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class ReportSettings:
    """[reports]: the period report by email on a schedule (`schoolgate send-report`, run daily by a timer)."""

    schedule: str = ""  # "" (off), "weekly" (the 7 days before `day`) or "monthly" (the calendar month before)
    day: str = "monday"  # weekly: the weekday it is sent; monthly: the day of the month, "1" to "28"
    dsl_to: tuple[str, ...] = ()  # the DSL's copy, naming who is behind open incidents
    email: EmailSettings = EmailSettings()  # the SMTP server, and `to`: the copy without names (IT, governors)

    def problems(self) -> Findings:
        if self.schedule not in ("", "weekly", "monthly"):
            yield f"schedule must be \"weekly\", \"monthly\" or \"\" (off), not {self.schedule!r}", "schedule"
        elif self.schedule == "weekly" and self.day.lower() not in _WEEKDAYS:
            yield f"day must be a weekday (monday ... sunday) for a weekly schedule, not {self.day!r}", "day"
        elif self.schedule == "monthly" and not (self.day.isdigit() and 1 <= int(self.day) <= 28):
            yield f"day must be \"1\" to \"28\" for a monthly schedule (every month has it), not {self.day!r}", "day"
        if self.schedule and not self.email.host:
            yield "a report schedule needs [reports.email] host, the SMTP server", "schedule"
        if self.schedule and not (self.email.to or self.dsl_to):
            yield "a report schedule needs recipients: [reports.email] to, or dsl_to", "schedule"

    def period_due(self, today: date, *, now: bool = False) -> tuple[date, date] | None:
        """The days (first, last, both included) of the report due today, None when none is;
        `now`: the schedule's period ending yesterday, whatever the day."""
        if self.schedule == "weekly" and (now or _WEEKDAYS[today.weekday()] == self.day.lower()):
            return today - timedelta(days=7), today - timedelta(days=1)
        if self.schedule == "monthly" and (now or self.day.isdigit() and today.day == int(self.day)):
            last = today.replace(day=1) - timedelta(days=1)
            return last.replace(day=1), last
        return None


@dataclass(frozen=True)
class SelfCheckSettings:
    """[selfcheck]: where `schoolgate selfcheck` and the console's self-check send their probes."""

    proxy: str = "http://127.0.0.1:8080"  # the gateway as clients use it
    source_address: str = ""  # a local address to probe from (one on a pupils' network); "" lets the system choose


@dataclass(frozen=True)
class ConsoleSettings:
    """[console]: the review console (`schoolgate console`)."""

    host: str = "127.0.0.1"
    port: int = 8600
    secret_file: Path = Path("var/console.secret")  # signs session cookies; created on first start when missing
    # proxies (addresses or networks) whose X-Forwarded-For the console believes
    trusted_proxies: tuple[IPNetwork, ...] = setting((), parse=_addresses_or_networks)


def _phrase_files(r: _Reader, value: Any, *where: str) -> tuple[Path, ...]:
    """The school's own phrase lists, each read now: a broken one is refused with the policy."""
    # Imported here: only policies that name phrase files need the content scorer.
    from schoolgate.categories.content import PhraseListError, load_phrases

    paths = []
    for text in r.strings(value, *where):
        path = r.relative(text)
        try:
            load_phrases(path)
        except PhraseListError as e:
            r.problem(f"phrase list: {e}", *where, value=text)
            continue
        paths.append(path)
    return tuple(paths)


@dataclass(frozen=True)
class ContentSettings:
    """[content]: reading what pages, AI answers and AI prompts say (addons/content.py)."""

    enabled: bool = True
    max_kib: int = 64  # decoded content read per response
    block_at: int = 100  # a page whose top category scores this much is blocked ([groups.NAME] content_block_at)
    flag_at: int = 50  # ... and flagged for the DSL from this much ([groups.NAME] content_flag_at)
    # listed categories whose sites are read all the same (sites on no list always are)
    categories: frozenset[str] = setting(
        frozenset({"forums", "blogs", "chat", "ai", "webhosting"}), parse=_category_names)
    phrase_files: tuple[Path, ...] = setting((), parse=_phrase_files)  # the school's own, beside the shipped ones
    cache_minutes: int = 10  # how long a URL's score is remembered (0: not at all)

    def problems(self) -> Findings:
        if not 1 <= self.max_kib <= 1024:
            yield "max_kib must be between 1 and 1024", "max_kib"
        if self.block_at < 1:
            yield "block_at must be at least 1", "block_at"
        if not 1 <= self.flag_at <= self.block_at:
            yield "flag_at must be at least 1 and at most block_at", "flag_at"
        if self.cache_minutes < 0:
            yield "cache_minutes must be 0 (no cache) or more", "cache_minutes"

    def thresholds(self, group: Group) -> tuple[int, int]:
        """(block_at, flag_at) for a group: its own where it sets them, else these."""
        block_at = self.block_at if group.content_block_at is None else group.content_block_at
        flag_at = self.flag_at if group.content_flag_at is None else group.content_flag_at
        return block_at, flag_at


def _lower_names(r: _Reader, value: Any, *where: str) -> frozenset[str]:
    """Directory group names and DNs, compared without case (LDAP compares them so)."""
    return frozenset(" ".join(v.split()).lower() for v in r.strings(value, *where))


def _user_names(r: _Reader, value: Any, *where: str) -> frozenset[str]:
    """User names in the one form every sign-in gives them (`J.Smith` is `j.smith`)."""
    return frozenset(canonical_user(v) for v in r.strings(value, *where))


def _windows(r: _Reader, value: Any, *where: str) -> Mapping[str, tuple[Span, ...]]:
    windows: dict[str, tuple[Span, ...]] = {}
    for name, spans in r.mapping(value, *where).items():
        parsed = []
        for text in r.strings(spans, *where, name):
            try:
                parsed.append(parse_span(text))
            except ValueError as e:
                r.problem(str(e), *where, name, value=text)
        windows[name] = tuple(parsed)
    return types.MappingProxyType(windows)


def _terms(r: _Reader, value: Any, *where: str) -> tuple[tuple[date, date], ...]:
    terms = []
    for text in r.strings(value, *where):
        try:
            terms.append(parse_term(text))
        except ValueError as e:
            r.problem(str(e), *where, value=text)
    return tuple(terms)


@dataclass(frozen=True)
class WindowRule:
    """What a group does differently while a named time window is open."""

    window: str
    default_action: Action | None
    categories: Mapping[str, Action]


def _group_windows(r: _Reader, value: Any, *where: str) -> Mapping[str, WindowRule]:
    """[groups.NAME.when.WINDOW] default_action = ..., and its .categories table."""
    rules: dict[str, WindowRule] = {}
    for name, spec in r.mapping(value, *where).items():
        spec = r.mapping(spec, *where, name)
        for key in spec:
            if key not in ("default_action", "categories"):
                r.unknown(key, ["default_action", "categories"], *where, name, key)
        action = r.enum(Action, spec["default_action"], (), *where, name, "default_action") if "default_action" in spec else None
        rules[name] = WindowRule(name, None if action is _BAD else action,
                                 _category_actions(r, spec.get("categories", {}), *where, name, "categories"))
    return types.MappingProxyType(rules)


@dataclass(frozen=True)
class DirectorySettings:
    """[directory]: LDAP / Active Directory users, passwords and groups (off while url is "")."""

    url: str = ""  # ldap://host:389 or ldaps://host:636
    start_tls: bool = False  # upgrade ldap:// with StartTLS
    ca_file: Path | None = None  # the CA that signed the directory's certificate (the system's when unset)
    bind_dn: str = ""  # the gateway's service account: search for the user, then bind as them
    bind_password_file: Path | None = None  # its password, in a file of its own (0600)
    user_base: str = ""
    user_filter: str = "(&(objectClass=person)(uid={user}))"  # AD: (&(objectClass=user)(sAMAccountName={user}))
    user_dn: str = ""  # or bind straight as the user: "uid={user},ou=people,dc=school,dc=uk"
    group_base: str = ""  # where the groups are; "" reads only the OUs the user's entry is in
    group_filter: str = "(|(member={dn})(uniqueMember={dn}))"  # AD nested: (member:1.2.840.113556.1.4.1941:={dn})
    group_name_attribute: str = "cn"
    cache_seconds: int = 300  # how long a password check and group memberships are trusted
    timeout_seconds: int = 5
    # The entry's attributes holding a pupil's year group and form, shown to the DSL ("": not read).
    year_attribute: str = ""  # e.g. departmentNumber, or the attribute your MIS sync writes
    form_attribute: str = ""  # e.g. businessCategory

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def problems(self) -> Findings:
        if not self.url:
            return
        if not re.match(r"^ldaps?://[^/]+/?$", self.url):
            yield f"url {self.url!r} must be ldap://host[:port] or ldaps://host[:port]", "url"
        if self.start_tls and self.url.startswith("ldaps:"):
            yield "start_tls is for ldap:// (ldaps:// is TLS from the start)", "start_tls"
        if not self.user_dn and not (self.bind_dn and self.user_base):
            yield "set user_dn (bind as the user), or bind_dn, bind_password_file and user_base (search then bind)", "url"
        if self.user_dn and "{user}" not in self.user_dn:
            yield "user_dn must contain {user}", "user_dn"
        if self.bind_dn and "{user}" not in self.user_filter:
            yield "user_filter must contain {user}", "user_filter"
        if self.group_base and "{dn}" not in self.group_filter:
            yield "group_filter must contain {dn}", "group_filter"
        for key in ("ca_file", "bind_password_file"):
            if (path := getattr(self, key)) is not None and not path.is_file():
                yield f"{key} {path} does not exist", key
        if self.bind_dn and self.bind_password_file is None:
            yield "bind_dn needs bind_password_file (the service account's password, in a file of its own)", "bind_dn"
        if self.cache_seconds < 0 or self.timeout_seconds < 1:
            yield "cache_seconds must be 0 or more and timeout_seconds at least 1", "cache_seconds"


@dataclass(frozen=True)
class KerberosSettings:
    """[kerberos]: single sign-on (Negotiate) for domain-joined computers (off without a keytab)."""

    keytab: Path | None = None  # the key of HTTP/<proxy name>@REALM, readable only by the gateway
    service: str = ""  # e.g. "HTTP/gateway.school.uk"; "" accepts any key in the keytab
    strip_realm: bool = True  # "amy.b@SCHOOL.UK" is recorded and matched to groups as "amy.b"

    @property
    def enabled(self) -> bool:
        return self.keytab is not None

    def problems(self) -> Findings:
        if self.keytab is not None and not self.keytab.is_file():
            yield f"keytab {self.keytab} does not exist", "keytab"


@dataclass(frozen=True)
class OidcSettings:
    """[portal.oidc]: OpenID Connect sign-in (Entra ID, Google Workspace), the code flow with PKCE."""

    issuer: str = ""  # https://login.microsoftonline.com/TENANT/v2.0, https://accounts.google.com
    client_id: str = ""
    client_secret_file: Path | None = None  # for confidential clients; PKCE is used either way
    user_claim: str = "preferred_username"  # Google: "email"; the part before "@" is the user name
    groups_claim: str = "groups"
    allowed_domains: tuple[str, ...] = ()  # needed, e.g. ["school.uk"]: other accounts are refused
    scopes: str = "openid profile email"

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)

    def problems(self) -> Findings:
        if not self.issuer:
            return
        loopback = re.match(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)", self.issuer)
        if not self.issuer.startswith("https://") and not loopback:
            yield f"issuer {self.issuer!r} must be an https:// URL", "issuer"
        if not self.client_id:
            yield "client_id is needed with an issuer", "client_id"
        if not self.allowed_domains:
            # The user name is the part before "@": without this, any account at the provider
            # (any gmail.com address with Google) would sign in as the school's user of that name.
            yield ("allowed_domains is needed with an issuer (the school's own domains, e.g. [\"school.uk\"]): "
                   "otherwise anyone's account at the provider signs in as the school's user of the same name"), \
                "allowed_domains"
        if self.client_secret_file is not None and not self.client_secret_file.is_file():
            yield f"client_secret_file {self.client_secret_file} does not exist", "client_secret_file"


@dataclass(frozen=True)
class PortalSettings:
    """[portal]: the sign-in page for devices that cannot do proxy sign-in (off while host is "")."""

    host: str = ""  # e.g. "signin.school.uk": answered by the gateway itself
    session_hours: float = 8.0  # how long a device stays signed in
    passwords: bool = True  # offer directory / htpasswd passwords on the page
    open_hosts: tuple[str, ...] = setting((), parse=_domains)  # what an unsigned device may reach to sign in
    oidc: OidcSettings = OidcSettings()

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    def opens(self, host: str) -> bool:
        """Whether an unsigned device may reach `host` (the provider's sign-in pages) rather
        than be sent to sign in; the OpenID Connect issuer's host always may."""
        host = host.lower().rstrip(".")
        issuer = urlsplit(self.oidc.issuer).hostname if self.oidc.enabled else None
        return any(host == h or host.endswith("." + h) for h in (*self.open_hosts, *((issuer,) if issuer else ())))

    def problems(self) -> Findings:
        if self.host and not re.match(r"^[a-z0-9]([a-z0-9\-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]*[a-z0-9])?)+$", self.host):
            yield f"host {self.host!r} must be a lower-case DNS name such as signin.school.uk", "host"
        if self.session_hours <= 0:
            yield "session_hours must be more than 0", "session_hours"
        if self.host and not self.passwords and not self.oidc.enabled:
            yield "the sign-in page needs passwords = true or [portal.oidc]", "passwords"


@dataclass(frozen=True)
class AccountingSettings:
    """[accounting]: RADIUS accounting from Wi-Fi controllers (off without a secret_file)."""

    secret_file: Path | None = None  # the shared secret, in a file of its own (0600)
    clients: tuple[IPNetwork, ...] = setting((), parse=_addresses_or_networks)  # the controllers' addresses
    listen_address: str = "0.0.0.0"
    port: int = 1813
    session_hours: float = 12.0  # how long a Start or Interim-Update names the address without a Stop
    strip_domain: bool = True  # "amy.b@school.uk" and "SCHOOL\amy.b" are recorded as "amy.b"

    @property
    def enabled(self) -> bool:
        return self.secret_file is not None

    def problems(self) -> Findings:
        if self.secret_file is None:
            return
        if not self.secret_file.is_file():
            yield f"secret_file {self.secret_file} does not exist", "secret_file"
        if not self.clients:
            yield "clients must list the Wi-Fi controllers' addresses (nothing else is heard)", "clients"
        if not 0 <= self.port < 65536:
            yield f"port {self.port} is not a UDP port", "port"
        if self.session_hours <= 0:
            yield "session_hours must be more than 0", "session_hours"


@dataclass(frozen=True)
class ScheduleSettings:
    """[schedules]: named time windows (lessons, breaks, after school) and term dates."""

    timezone: str = "Europe/London"
    term_dates: tuple[tuple[date, date], ...] = setting((), parse=_terms)  # "2026-09-03..2026-10-23"
    windows: Mapping[str, tuple[Span, ...]] = setting(types.MappingProxyType({}), parse=_windows)

    @cached_property  # asked for on every request of a group with time windows
    def schedule(self) -> Schedule:
        return Schedule(parse_timezone(self.timezone), self.term_dates, self.windows)

    def problems(self) -> Findings:
        try:
            parse_timezone(self.timezone)
        except ValueError as e:
            yield str(e), "timezone"


@dataclass(frozen=True)
class BaselineSettings:
    """[baseline]: the trust's baseline policy, which this one can tighten but never loosen."""

    file: Path | None = None


@dataclass(frozen=True)
class Group:
    """[groups.NAME]: who a group is and what it may reach."""

    name: str = setting(hidden=True)
    title: str = ""  # "" means the group's name
    networks: tuple[IPNetwork, ...] = setting((), parse=_networks)
    users: frozenset[str] = setting(frozenset(), parse=_user_names)
    default_action: Action = Action.ALLOW  # when not written: [gateway] default_action
    # effective: [categories] overlaid with the group's own [groups.NAME.categories]
    categories: Mapping[str, Action] = setting(types.MappingProxyType({}), parse=_category_actions)
    require_auth: bool = False
    safe_search: bool = False  # enforce SafeSearch / YouTube restricted mode
    block_ip_literals: bool = False  # refuse sites asked for by bare IP address (a common bypass)
    raw_tunnels: Action = setting(Action.BLOCK, choices=("allow", "block"))  # SSH, VPNs: neither HTTP nor TLS
    decrypt: Decrypt = Decrypt.NEEDED  # "all": decrypt every connection [tls] allows, not just those that need it
    directory_groups: frozenset[str] = setting(frozenset(), parse=_lower_names)  # directory groups, group DNs, OU DNs
    when: Mapping[str, WindowRule] = setting(types.MappingProxyType({}), parse=_group_windows)  # [groups.NAME.when.WINDOW]
    baseline_group: str = ""  # the trust baseline's group this one is held to ("": the one of the same name)
    content_scoring: bool = True  # read what pages say for this group ([content]); false: by lists alone
    content_block_at: int | None = None  # None: [content] block_at
    content_flag_at: int | None = None  # None: [content] flag_at

    def action_for(self, category: str) -> Action:
        return self.categories.get(category, self.default_action)

    def during(self, rule: WindowRule) -> Group:
        """The group as it is while `rule`'s window is open."""
        return replace(self, default_action=rule.default_action or self.default_action,
                       categories=types.MappingProxyType({**self.categories, **rule.categories}))

    @property
    def strictness(self) -> tuple[int, int]:
        """How much this group blocks, for choosing the strictest group for unknown devices."""
        blocked = sum(action is Action.BLOCK for action in self.categories.values())
        return ((self.default_action or Action.ALLOW).strictness, blocked)


# Every section by its TOML name; `_build` reads them all with `_read_section`.
SECTIONS: dict[str, type] = {
    "school": SchoolSettings,
    "gateway": GatewaySettings,
    "tls": TlsSettings,
    "auth": AuthSettings,
    "lists": ListsSettings,
    "local": LocalSettings,
    "exceptions": ExceptionSettings,
    "monitoring": MonitoringSettings,
    "alerts": AlertSettings,
    "retention": RetentionSettings,
    "reports": ReportSettings,
    "selfcheck": SelfCheckSettings,
    "console": ConsoleSettings,
    "content": ContentSettings,
    "directory": DirectorySettings,
    "kerberos": KerberosSettings,
    "portal": PortalSettings,
    "accounting": AccountingSettings,
    "schedules": ScheduleSettings,
    "baseline": BaselineSettings,
}
# Tables read by hand: category actions and the groups.
OTHER_TABLES = {"categories": "[categories] NAME = ACTION", "groups": "[groups.NAME]"}


@dataclass(frozen=True)
class Policy:
    path: Path
    groups: Mapping[str, Group]
    local: tuple[ListEntry, ...]  # [local] entries, from policy.toml and its list files
    school: SchoolSettings = SchoolSettings()
    gateway: GatewaySettings = GatewaySettings()
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()
    lists: ListsSettings = ListsSettings()
    exceptions: ExceptionSettings = ExceptionSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    alerts: AlertSettings = AlertSettings()
    retention: RetentionSettings = RetentionSettings()
    reports: ReportSettings = ReportSettings()
    selfcheck: SelfCheckSettings = SelfCheckSettings()
    console: ConsoleSettings = ConsoleSettings()
    content: ContentSettings = ContentSettings()
    directory: DirectorySettings = DirectorySettings()
    kerberos: KerberosSettings = KerberosSettings()
    portal: PortalSettings = PortalSettings()
    accounting: AccountingSettings = AccountingSettings()
    schedules: ScheduleSettings = ScheduleSettings()
    baseline: BaselineSettings = BaselineSettings()
    trust: Policy | None = None  # the baseline policy [baseline] file names, read with this one
    watched_files: tuple[Path, ...] = ()  # what a reload watches besides policy.toml

    def group_for(self, client_ip: str, user: str | None,
                  directory_groups: frozenset[str] = frozenset()) -> tuple[Group, str]:
        """The group a client belongs to, and how that was decided (for `explain`).

        A user listed in a group's `users` first; then the first group (in file order)
        naming one of the user's directory groups; then the network, where the longest
        prefix wins, so a room's /27 can differ from the site's /16; then the group for
        unknown devices."""
        if user:
            user = canonical_user(user)
            for group in self.groups.values():
                if user in group.users:
                    return group, f"user {user} is listed in group {group.name}"
            for group in self.groups.values():
                if found := group.directory_groups & directory_groups:
                    return group, f"user {user} is in directory group {sorted(found)[0]} ({group.name})"
        if (on := self.network_of(client_ip)) is not None:
            return on[0], f"client {client_ip} is in {on[1]} ({on[0].name})"
        return (self.groups[self.gateway.unknown_group],
                f"client {client_ip} matches no network; unknown-devices group {self.gateway.unknown_group}")

    def network_of(self, client_ip: str) -> tuple[Group, IPNetwork] | None:
        """The group whose network (the longest prefix) holds the client, if any does."""
        text = canonical_ip(client_ip)
        if text is None:
            return None
        address = ipaddress.ip_address(text)
        best: tuple[int, Group, IPNetwork] | None = None
        for group in self.groups.values():
            for net in group.networks:
                if address.version == net.version and address in net:
                    if best is None or net.prefixlen > best[0]:
                        best = (net.prefixlen, group, net)
        return (best[1], best[2]) if best else None

    def group_during(self, group: Group, when: datetime) -> tuple[Group, str | None]:
        """The group as it is at `when`: its first [groups.NAME.when.WINDOW] whose window is open."""
        if not group.when:
            return group, None
        window = self.schedules.schedule.first_active(list(group.when), when)
        return (group.during(group.when[window]), window) if window else (group, None)

    def intercepts(self, host: str, categories: frozenset[str] | set[str]) -> bool:
        """Whether TLS to this host is decrypted; banking and health pass through untouched."""
        if not self.tls.intercept:
            return False
        if categories & self.tls.no_intercept_categories:
            return False
        return not any(host == d or host.endswith("." + d) for d in self.tls.no_intercept_domains)


# ---- reading ------------------------------------------------------------------------------

class _Locator:
    """Finds the line a TOML key or value was written on, for error messages."""

    _HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
    _KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-"' ]+?)\s*=""")

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.keys: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(self.lines, start=1):
            if m := self._HEADER.match(line):
                table = self._split(m.group(1))
                self.keys.setdefault(table, number)
            elif m := self._KEY.match(line):
                self.keys.setdefault(table + self._split(m.group(1)), number)

    @staticmethod
    def _split(dotted: str) -> tuple[str, ...]:
        parts = re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', dotted)
        return tuple(p.strip().strip("\"'") for p in parts)

    def line(self, *key: str, value: str | None = None) -> int | None:
        for end in range(len(key), 0, -1):
            start = self.keys.get(key[:end])
            if start is None:
                continue
            if value is not None and end == len(key):
                for number in range(start, len(self.lines) + 1):
                    if f'"{value}"' in self.lines[number - 1] or f"'{value}'" in self.lines[number - 1]:
                        return number
            return start
        return None


_VALID_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_BAD = object()  # a value that was reported; the field keeps its default


class _Reader:
    """Collects problems while reading; each accessor returns a safe value on error."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.name = str(path)
        self.locate = _Locator(text)
        self.problems: list[Problem] = []

    def problem(self, message: str, *key: str, value: str | None = None, line: int | None = None) -> None:
        self.problems.append(Problem(self.name, line or self.locate.line(*key, value=value), message))

    def unknown(self, name: str, known: list[str], *key: str) -> None:
        """An unknown key or section, with the known one nearest in spelling."""
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if len(key) == 1:  # a section
            hint = f"; did you mean [{close[0]}]?" if close else "; known: " + ", ".join(f"[{k}]" for k in known)
            self.problem(f"unknown section [{name}]{hint}", *key)
            return
        hint = f"; did you mean {close[0]!r}?" if close else "; known: " + ", ".join(sorted(known))
        self.problem(f"unknown setting {name!r} in [{'.'.join(key[:-1])}]{hint}", *key)

    def mapping(self, value: Any, *key: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            self.problem(f"[{'.'.join(key)}] must be a table", *key)
            return {}
        return value

    def table(self, data: Mapping[str, Any], *key: str) -> Mapping[str, Any]:
        return self.mapping(data.get(key[-1], {}), *key)

    def strings(self, value: Any, *key: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(f"{'.'.join(key)} must be a list of strings", *key)
            return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
        return value

    def known_category(self, name: str, *key: str, value: str | None = None) -> bool:
        if name in CATEGORIES:
            return True
        close = difflib.get_close_matches(name, CATEGORIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (see `schoolgate categories`)"
        self.problem(f"unknown category {name!r}{hint}", *key, value=value)
        return False

    def enum(self, kind: type[Enum], value: Any, choices: tuple[str, ...], *key: str, never: str | None = None) -> Any:
        words = list(choices) or [_word(m) for m in kind]
        if never is not None and value == never:
            return None
        if isinstance(value, str) and value.lower() in words:
            return kind[value.upper()] if kind is Severity else kind(value.lower())
        what = {Action: "an action", Severity: "a severity"}.get(kind, "a choice")
        self.problem(f"{'.'.join(key)} = {value!r} is not {what}; use one of: "
                     + ", ".join(words + ([never] if never else [])), *key)
        return _BAD

    def relative(self, value: str | Path) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.path.parent / path)

    @staticmethod
    def state_directory() -> Path | None:
        """$SCHOOLGATE_STATE_DIR (set by the systemd units and the image): where the files the
        gateway makes belong when the policy's folder is not theirs to write (/etc/schoolgate)."""
        state = os.environ.get("SCHOOLGATE_STATE_DIR")
        return Path(state) if state else None

    def default_path(self, default: Path) -> Path:
        """A path the policy leaves at its default: a file the gateway makes (`var/...`) goes to
        the state directory when there is one, else beside the policy, like a written one."""
        state = self.state_directory()
        if state is not None and default.parts[:1] == ("var",):
            return state.joinpath(*default.parts[1:])
        return self.relative(default)

    def value(self, value: Any, hint: Any, meta: Mapping[str, Any], *key: str) -> Any:
        """One setting read by its declared type; _BAD (reported) when it does not fit."""
        if meta.get("parse"):
            return meta["parse"](self, value, *key)
        optional = type(None) in typing.get_args(hint)
        if optional:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if value == "" and optional and hint is Path:
            return None
        if isinstance(hint, type) and issubclass(hint, Enum):
            return self.enum(hint, value, meta.get("choices", ()), *key, never=meta.get("never"))
        origin = typing.get_origin(hint)
        if origin in (tuple, frozenset):
            item = typing.get_args(hint)[0]
            values = [self.relative(v) for v in self.strings(value, *key)] if item is Path else self.strings(value, *key)
            return origin(values)
        kind: Any = str if hint is Path else (int, float) if hint is float else hint
        if not isinstance(value, kind) or (hint is not bool and isinstance(value, bool)):
            self.problem(f"{'.'.join(key)} must be a {_type_word(hint)}, not {type(value).__name__}", *key)
            return _BAD
        return self.relative(value) if hint is Path else value


def _word(member: Enum) -> str:
    return member.name.lower() if isinstance(member, Severity) else str(member.value)


def _type_word(hint: Any) -> str:
    return {str: "string", int: "whole number", bool: "boolean (true or false)", float: "number",
            Path: "path (a string)"}.get(hint, getattr(hint, "__name__", str(hint)))


def known_keys(cls: type) -> list[str]:
    """The TOML keys a section declares (what the unknown-key check and README test read)."""
    return [toml_key(f) for f in fields(cls) if not f.metadata.get("hidden")]


def _read_section(r: _Reader, cls: type, table: Mapping[str, Any], *where: str, **given: Any) -> Any:
    """A section (or group) read by its dataclass; `given` fills fields decided by the caller.
    A field whose type is itself a section is read as a sub-table ([alerts.email])."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        key = toml_key(f)
        if f.name in given:
            values[f.name] = given[f.name]
        elif f.metadata.get("hidden"):
            continue
        elif is_dataclass(hints[f.name]):  # a sub-table: [alerts.email], [portal.oidc]
            values[f.name] = _read_section(r, hints[f.name], r.table(table, *where, key), *where, key)
        elif key in table:
            if (read := r.value(table[key], hints[f.name], f.metadata, *where, key)) is not _BAD:
                values[f.name] = read
        elif hints[f.name] is Path and f.default is not MISSING:
            values[f.name] = r.default_path(f.default)
    known = known_keys(cls)
    for key in table:
        if key not in known:
            r.unknown(key, known, *where, key)
    section = cls(**values)
    for message, key in section.problems() if hasattr(section, "problems") else ():
        r.problem(message, *where, key)
    return section


def load_policy(path: str | Path) -> Policy:
    """Read and check a policy file; raises PolicyInvalid listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyInvalid([Problem(str(path), None, f"cannot read policy: {e}")]) from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # Python < 3.14 puts the position only in the message: "... (at line 8, column 3)".
        found = re.search(r"\(at (?:line (\d+), column \d+|end of document)\)$", str(e))
        message = str(e)[: found.start()].strip() if found else str(e)
        line = (int(found.group(1)) if found.group(1) else len(text.splitlines())) if found else None
        raise PolicyInvalid([Problem(str(path), line, f"not valid TOML: {message}")]) from e
    return _build(_Reader(path, text), data)


def _build(r: _Reader, data: Mapping[str, Any]) -> Policy:
    for key in data:
        if key not in SECTIONS and key not in OTHER_TABLES:
            r.unknown(key, [*SECTIONS, *OTHER_TABLES], key)

    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        # alerts carry the console link from [monitoring] (read first)
        given = {"console_url": sections["monitoring"].console_url} if cls is AlertSettings else {}
        sections[name] = _read_section(r, cls, r.table(data, name), name, **given)
    gateway: GatewaySettings = sections["gateway"]
    for name in ("alerts", "reports"):  # both send mail: the SMTP password comes from its own file
        mail = sections[name]
        if mail.email.password_file:
            try:
                password = mail.email.password_file.read_text(encoding="utf-8").strip()
                sections[name] = replace(mail, email=replace(mail.email, password=password))
            except OSError as e:
                r.problem(f"cannot read the SMTP password file: {e}", name, "email", "password_file")

    global_categories = _category_actions(r, data.get("categories", {}), "categories")
    groups = _groups(r, r.table(data, "groups"), global_categories, gateway.default_action)
    if gateway.unknown_group and gateway.default_group and gateway.unknown_group != gateway.default_group:
        r.problem("default_group is the older name of unknown_group: set only unknown_group", "gateway", "default_group")
    # Unknown devices get the strictest group unless the school names one: never the most permissive by accident.
    strictest = max(groups.values(), key=lambda g: g.strictness).name if groups else ""
    unknown_group = gateway.unknown_group or gateway.default_group or strictest
    for key, name in (("unknown_group", gateway.unknown_group), ("default_group", gateway.default_group)):
        if groups and name and name not in groups:
            r.problem(f"{key} {name!r} is not a defined group ({', '.join(groups)})", "gateway", key)
    state = r.state_directory()
    database = _resolve_database_url(gateway.database, state if state and gateway.database == GatewaySettings.database
                                     else r.path.parent)
    sections["gateway"] = replace(gateway, default_group=unknown_group, unknown_group=unknown_group, database=database)
    _check_identity(r, sections, groups)
    trust = _read_baseline(r, sections["baseline"], groups)

    exceptions: ExceptionSettings = sections["exceptions"]
    for name in exceptions.teacher_groups:
        if name not in groups:
            r.problem(f"teacher_groups names {name!r}, which is not a group", "exceptions", "teacher_groups", value=name)
    auth: AuthSettings = sections["auth"]
    sign_in = auth.htpasswd or sections["directory"].enabled or sections["kerberos"].enabled or sections["portal"].enabled
    for group in groups.values():
        if group.require_auth and not sign_in:
            r.problem(f"group {group.name} has require_auth = true but [auth] htpasswd is not set "
                      "(nor [directory], [kerberos] or [portal])", "groups", group.name, "require_auth")
    content: ContentSettings = sections["content"]
    for group in groups.values():
        block_at, flag_at = content.thresholds(group)
        if not 1 <= flag_at <= block_at:
            r.problem(f"group {group.name}: content flag threshold {flag_at} must be at least 1 and at most its "
                      f"block threshold {block_at}", "groups", group.name,
                      "content_flag_at" if group.content_flag_at is not None else "content_block_at")

    local: LocalSettings = sections.pop("local")
    entries = _local_entries(r, local)
    watched = [*local.allow_files, *local.block_files, *((auth.htpasswd,) if auth.htpasswd else ()),
               *content.phrase_files]
    if trust is not None:
        watched += [trust.path, *trust.watched_files]

    if r.problems:
        raise PolicyInvalid(r.problems)
    return Policy(path=r.path, groups=groups, local=tuple(entries), watched_files=tuple(watched), trust=trust,
                  **sections)


def _check_identity(r: _Reader, sections: dict[str, Any], groups: Mapping[str, Group]) -> None:
    """What the identity sections need of each other and of the groups."""
    windows = sections["schedules"].windows
    for group in groups.values():
        for name in group.when:
            if name not in windows:
                known = ", ".join(windows) or "none are defined in [schedules.windows]"
                r.problem(f"[groups.{group.name}.when.{name}]: no time window {name!r} ({known})",
                          "groups", group.name, "when", name)
    portal: PortalSettings = sections["portal"]
    if portal.enabled and portal.passwords and not (sections["auth"].htpasswd or sections["directory"].enabled):
        r.problem("the sign-in page offers passwords but neither [directory] nor [auth] htpasswd checks them",
                  "portal", "passwords")


def _read_baseline(r: _Reader, baseline: BaselineSettings, groups: Mapping[str, Group]) -> Policy | None:
    """The trust's baseline policy, read and checked with this one; its problems are this load's."""
    if baseline.file is None:
        return None
    try:
        trust = load_policy(baseline.file)
    except PolicyInvalid as e:
        r.problems.extend(e.problems)
        return None
    if trust.baseline.file is not None:
        r.problem(f"the baseline {baseline.file} names a baseline of its own; a trust baseline must be the last layer",
                  "baseline", "file")
    for group in groups.values():
        if group.baseline_group and group.baseline_group not in trust.groups:
            r.problem(f"baseline_group {group.baseline_group!r} is not a group of the baseline ({', '.join(trust.groups)})",
                      "groups", group.name, "baseline_group")
    return trust


def _groups(r: _Reader, table: Mapping[str, Any], global_categories: Mapping[str, Action],
            default_action: Action) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    seen_networks: dict[IPNetwork, str] = {}
    seen_users: dict[str, str] = {}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            r.problem(f"[groups.{name}] must be a table", "groups", name)
            continue
        if not _VALID_NAME.match(name):
            r.problem(f"group name {name!r} must be lower-case letters, digits, '-' or '_'", "groups", name)
        own = _category_actions(r, spec.get("categories", {}), "groups", name, "categories")
        group = _read_section(r, Group, spec, "groups", name, name=name,
                              categories=types.MappingProxyType({**global_categories, **own}))
        for net in group.networks:
            if net in seen_networks:
                r.problem(f"network {net} is in both {seen_networks[net]} and {name}", "groups", name, "networks",
                          value=str(net))
            seen_networks[net] = name
        for user in group.users:
            if user in seen_users:
                r.problem(f"user {user!r} is in both {seen_users[user]} and {name}", "groups", name, "users", value=user)
            seen_users[user] = name
        groups[name] = replace(group, title=group.title or name,
                               default_action=group.default_action if "default_action" in spec else default_action)
    if not groups:
        r.problem("the policy defines no groups; add at least one [groups.NAME] table", "groups")
    return groups


def _local_entries(r: _Reader, local: LocalSettings) -> list[ListEntry]:
    entries: list[ListEntry] = []
    for action in (Action.ALLOW, Action.BLOCK):
        for text in getattr(local, action.value):
            entry = _entry(r, text, action, line=r.locate.line("local", action.value, value=text), source_file=r.name)
            if entry:
                entries.append(entry)
        for file_path in getattr(local, f"{action.value}_files"):
            entries.extend(_read_list_file(r, file_path, action, ("local", f"{action.value}_files")))
    _check_conflicts(r, entries)
    return entries


def parse_lesson(text: str) -> tuple[time, time]:
    """`08:50-09:50` -> (08:50, 09:50); raises ValueError."""
    start_text, _, end_text = text.partition("-")
    start, end = time.fromisoformat(start_text.strip()), time.fromisoformat(end_text.strip())
    if end <= start:
        raise ValueError("it ends before it starts")
    return start, end


def _resolve_database_url(url: str, base: Path) -> str:
    """Relative SQLite paths are relative to the policy file, not to wherever the gateway was started."""
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str((base / url[len(prefix):]).resolve())
    return url


def _entry(r: _Reader, text: str, action: Action, *, line: int | None, source_file: str) -> ListEntry | None:
    try:
        host, path = normalise_entry(text)
    except InvalidHost as e:
        r.problems.append(Problem(source_file, line, f"{action.value} list entry {text!r}: {e}"))
        return None
    if not path and (too_wide := public_suffix_problem(host)):
        r.problems.append(Problem(source_file, line, f"{action.value} list entry {text!r}: {too_wide}; "
                                                     "name the sites themselves"))
        return None
    return ListEntry(host=host, path=path, action=action, source=f"{source_file}:{line}" if line else source_file, text=text)


def _read_list_file(r: _Reader, path: Path, action: Action, key: tuple[str, ...]) -> list[ListEntry]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        r.problem(f"cannot read {action.value} list {path}: {e}", *key)
        return []
    entries = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if text and (entry := _entry(r, text, action, line=number, source_file=str(path))):
            entries.append(entry)
    return entries


def _check_conflicts(r: _Reader, entries: list[ListEntry]) -> None:
    seen: dict[tuple[str, str], ListEntry] = {}
    for entry in entries:
        other = seen.setdefault((entry.host, entry.path), entry)
        if other is not entry and other.action != entry.action:
            file, _, line = entry.source.rpartition(":")
            r.problems.append(
                Problem(file or entry.source, int(line) if line.isdigit() else None,
                        f"{entry.text!r} is on both the allow list ({other.source}) and the block list")
            )
