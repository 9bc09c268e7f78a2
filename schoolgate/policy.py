"""The school's policy: `policy.toml` read, checked and turned into plain data.

Loading either returns a complete, valid `Policy` or raises `PolicyInvalid`
carrying every problem found, each with file, line and what is wrong, so that
`schoolgate check` can list them all and the gateway can keep its last good
policy.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from schoolgate.alerts import AlertSettings
from schoolgate.categories.taxonomy import CATEGORIES, Severity
from schoolgate.urls import InvalidHost, normalise_entry

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    title: str
    networks: tuple[IPNetwork, ...]
    users: frozenset[str]
    default_action: Action
    categories: Mapping[str, Action]  # effective: global defaults overlaid with the group's own
    require_auth: bool
    safe_search: bool = False  # enforce SafeSearch / YouTube restricted mode
    block_ip_literals: bool = False  # refuse sites asked for by bare IP address (a common bypass)

    def action_for(self, category: str) -> Action:
        return self.categories.get(category, self.default_action)


@dataclass(frozen=True)
class Policy:
    path: Path
    school_name: str
    contact: str
    groups: Mapping[str, Group]
    default_group: str
    database_url: str
    metrics_address: str
    metrics_port: int  # 0 turns the metrics endpoint off
    log_urls: UrlLogging
    local: tuple[ListEntry, ...]
    intercept_tls: bool
    no_intercept_domains: tuple[str, ...]
    no_intercept_categories: frozenset[str]
    htpasswd: Path | None
    lists_index: Path | None  # compiled category index (`schoolgate lists update` writes it)
    lists_sources: list[str] = field(default_factory=list)  # UT1 directories, archives or URLs
    lists_extra: list[tuple[Path, str]] = field(default_factory=list)  # (file, category)
    watched_files: tuple[Path, ...] = ()  # what a reload watches besides policy.toml
    # [exceptions]: who may open what, for how long
    lessons: tuple[tuple[time, time], ...] = ()
    exception_default_minutes: int = 60
    exception_max_minutes: Mapping[Role, int] = field(default_factory=lambda: {Role.TEACHER: 180, Role.IT_ADMIN: 30 * 24 * 60})
    teacher_max_severity: Severity = Severity.LOW
    teacher_groups: tuple[str, ...] = ()
    # [monitoring] and [alerts]: what the DSL hears about
    search_terms: bool = True
    flag_min_severity: Severity = Severity.MEDIUM
    block_searches_at: Severity | None = Severity.CRITICAL
    alerts: AlertSettings | None = None
    # [retention]: access logs are personal data, kept only as long as this says
    records_days: int = 180
    flagged_days: int = 2190  # flagged records and their incidents: safeguarding files are kept longer
    # [console]: the review console (`schoolgate console`)
    console_host: str = "127.0.0.1"
    console_port: int = 8600
    console_secret_file: Path | None = None  # signs session cookies; created on first start when missing
    gateway_secret_file: Path | None = None  # signs warning and request-access links; shared by all gateways

    def group_for(self, client_ip: str, user: str | None) -> tuple[Group, str]:
        """The group a client belongs to, and how that was decided (for `explain`).

        A known user's group beats the network; among networks the longest
        prefix wins, so a room's /27 can differ from the site's /16."""
        if user:
            for group in self.groups.values():
                if user in group.users:
                    return group, f"user {user} is listed in group {group.name}"
        try:
            address = ipaddress.ip_address(client_ip.split("%", 1)[0])
        except ValueError:
            address = None
        if address is not None:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            best: tuple[int, Group, IPNetwork] | None = None
            for group in self.groups.values():
                for net in group.networks:
                    if address.version == net.version and address in net:
                        if best is None or net.prefixlen > best[0]:
                            best = (net.prefixlen, group, net)
            if best:
                return best[1], f"client {client_ip} is in {best[2]} ({best[1].name})"
        return self.groups[self.default_group], f"client {client_ip} matches no network; default group"

    def intercepts(self, host: str, categories: frozenset[str] | set[str]) -> bool:
        """Whether TLS to this host is decrypted; banking and health pass through untouched."""
        if not self.intercept_tls:
            return False
        if categories & self.no_intercept_categories:
            return False
        return not any(host == d or host.endswith("." + d) for d in self.no_intercept_domains)


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


_TOP_LEVEL = {"school", "gateway", "tls", "auth", "lists", "local", "categories", "groups", "exceptions", "monitoring",
              "alerts", "retention", "console"}
_VALID_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


class _Reader:
    """Collects problems while reading; each accessor returns a safe value on error."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.name = str(path)
        self.locate = _Locator(text)
        self.problems: list[Problem] = []

    def problem(self, message: str, *key: str, value: str | None = None, line: int | None = None) -> None:
        self.problems.append(Problem(self.name, line or self.locate.line(*key, value=value), message))

    def table(self, data: Mapping[str, Any], *key: str) -> Mapping[str, Any]:
        value = data.get(key[-1], {})
        if not isinstance(value, dict):
            self.problem(f"[{'.'.join(key)}] must be a table", *key)
            return {}
        return value

    def get(self, data: Mapping[str, Any], kind: type | tuple[type, ...], default: Any, *key: str) -> Any:
        value = data.get(key[-1], default)
        if value is default:
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.problem(f"{'.'.join(key)} must be a {names}, not {type(value).__name__}", *key)
            return default
        return value

    def strings(self, data: Mapping[str, Any], *key: str) -> list[str]:
        value = self.get(data, list, [], *key)
        good = [v for v in value if isinstance(v, str)]
        if len(good) != len(value):
            self.problem(f"{'.'.join(key)} must be a list of strings", *key)
        return good

    def action(self, value: Any, *key: str) -> Action | None:
        try:
            return Action(value)
        except ValueError:
            self.problem(
                f"{'.'.join(key)} = {value!r} is not an action; use one of: "
                + ", ".join(a.value for a in Action),
                *key,
            )
            return None

    def category_actions(self, table: Mapping[str, Any], *key: str) -> dict[str, Action]:
        actions: dict[str, Action] = {}
        for name, value in table.items():
            if name not in CATEGORIES:
                close = difflib.get_close_matches(name, CATEGORIES, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else " (see `schoolgate categories`)"
                self.problem(f"unknown category {name!r}{hint}", *key, name)
                continue
            if (action := self.action(value, *key, name)) is not None:
                actions[name] = action
        return actions

    def severity(self, data: Mapping[str, Any], default: str, *key: str, allow_none_word: bool = False) -> Severity | None:
        text = self.get(data, str, default, *key)
        if allow_none_word and text == "never":
            return None
        try:
            return Severity[text.upper()]
        except KeyError:
            words = [s.name.lower() for s in Severity] + (["never"] if allow_none_word else [])
            self.problem(f"{'.'.join(key)} = {text!r}; use one of: {', '.join(words)}", *key)
            return Severity[default.upper()]

    def relative(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.path.parent / path)


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
        if key not in _TOP_LEVEL:
            r.problem(f"unknown section [{key}]; expected one of: " + ", ".join(sorted(_TOP_LEVEL)), key)

    school = r.table(data, "school")
    gateway = r.table(data, "gateway")
    tls = r.table(data, "tls")
    auth = r.table(data, "auth")
    lists = r.table(data, "lists")
    local = r.table(data, "local")

    default_action = r.action(gateway.get("default_action", "allow"), "gateway", "default_action") or Action.ALLOW
    global_categories = r.category_actions(r.table(data, "categories"), "categories")

    groups: dict[str, Group] = {}
    seen_networks: dict[IPNetwork, str] = {}
    seen_users: dict[str, str] = {}
    for name, spec in r.table(data, "groups").items():
        if not isinstance(spec, dict):
            r.problem(f"[groups.{name}] must be a table", "groups", name)
            continue
        if not _VALID_NAME.match(name):
            r.problem(f"group name {name!r} must be lower-case letters, digits, '-' or '_'", "groups", name)
        networks = []
        for text in r.strings(spec, "groups", name, "networks"):
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError as e:
                hint = ""
                try:
                    hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
                except ValueError:
                    pass
                r.problem(f"network {text!r} is not a valid CIDR network ({e}){hint}", "groups", name, "networks", value=text)
                continue
            if net in seen_networks:
                r.problem(f"network {net} is in both {seen_networks[net]} and {name}", "groups", name, "networks", value=text)
            seen_networks[net] = name
            networks.append(net)
        users = r.strings(spec, "groups", name, "users")
        for user in users:
            if user in seen_users:
                r.problem(f"user {user!r} is in both {seen_users[user]} and {name}", "groups", name, "users", value=user)
            seen_users[user] = name
        own = r.category_actions(r.table(spec, "groups", name, "categories"), "groups", name, "categories")
        group_default = spec.get("default_action")
        groups[name] = Group(
            name=name,
            title=r.get(spec, str, name, "groups", name, "title"),
            networks=tuple(networks),
            users=frozenset(users),
            default_action=(r.action(group_default, "groups", name, "default_action") if group_default else None) or default_action,
            categories={**global_categories, **own},
            require_auth=r.get(spec, bool, False, "groups", name, "require_auth"),
            safe_search=r.get(spec, bool, False, "groups", name, "safe_search"),
            block_ip_literals=r.get(spec, bool, False, "groups", name, "block_ip_literals"),
        )
        for key in spec:
            if key not in {"title", "networks", "users", "categories", "default_action", "require_auth",
                           "safe_search", "block_ip_literals"}:
                r.problem(f"unknown setting {key!r} in [groups.{name}]", "groups", name, key)
    if not groups:
        r.problem("the policy defines no groups; add at least one [groups.NAME] table", "groups")

    default_group = r.get(gateway, str, next(iter(groups), ""), "gateway", "default_group")
    if groups and default_group not in groups:
        r.problem(f"default_group {default_group!r} is not a defined group ({', '.join(groups)})", "gateway", "default_group")

    log_urls_text = r.get(gateway, str, "full", "gateway", "log_urls")
    try:
        log_urls = UrlLogging(log_urls_text)
    except ValueError:
        r.problem(f"log_urls = {log_urls_text!r}; use one of: full, path-less, none", "gateway", "log_urls")
        log_urls = UrlLogging.FULL

    metrics_port = r.get(gateway, int, 9464, "gateway", "metrics_port")
    if not 0 <= metrics_port <= 65535:
        r.problem(f"metrics_port {metrics_port} is not a TCP port (0 turns metrics off)", "gateway", "metrics_port")

    database = r.get(gateway, str, "sqlite+aiosqlite:///schoolgate.db", "gateway", "database")
    database_url = _resolve_database_url(database, r.path.parent)

    entries: list[ListEntry] = []
    watched: list[Path] = []
    for action in (Action.ALLOW, Action.BLOCK):
        for text in r.strings(local, "local", action.value):
            entry = _entry(r, text, action, line=r.locate.line("local", action.value, value=text), source_file=r.name)
            if entry:
                entries.append(entry)
        for file_text in r.strings(local, "local", f"{action.value}_files"):
            file_path = r.relative(file_text)
            watched.append(file_path)
            entries.extend(_read_list_file(r, file_path, action, ("local", f"{action.value}_files"), file_text))
    _check_conflicts(r, entries)

    no_intercept_domains = []
    for text in r.strings(tls, "tls", "no_intercept_domains"):
        try:
            no_intercept_domains.append(normalise_entry(text)[0])
        except InvalidHost as e:
            r.problem(str(e), "tls", "no_intercept_domains", value=text)
    no_intercept_categories = r.strings(tls, "tls", "no_intercept_categories")
    for name in no_intercept_categories:
        if name not in CATEGORIES:
            r.problem(f"unknown category {name!r} in no_intercept_categories", "tls", "no_intercept_categories", value=name)

    htpasswd_text = r.get(auth, str, "", "auth", "htpasswd")
    htpasswd = r.relative(htpasswd_text) if htpasswd_text else None
    if htpasswd and not htpasswd.is_file():
        r.problem(f"htpasswd file {htpasswd} does not exist", "auth", "htpasswd")
    if htpasswd:
        watched.append(htpasswd)
    for group in groups.values():
        if group.require_auth and not htpasswd:
            r.problem(f"group {group.name} has require_auth = true but [auth] htpasswd is not set", "groups", group.name, "require_auth")

    index_text = r.get(lists, str, "", "lists", "index")
    lists_index = r.relative(index_text) if index_text else None
    lists_extra = []
    for name, spec in r.table(lists, "lists", "extra").items():
        if name not in CATEGORIES:
            r.problem(f"unknown category {name!r} for an extra list", "lists", "extra", name)
            continue
        for file_text in spec if isinstance(spec, list) else [spec]:
            lists_extra.append((r.relative(str(file_text)), name))

    exceptions = r.table(data, "exceptions")
    lessons = []
    for text in r.strings(exceptions, "exceptions", "lessons"):
        try:
            lessons.append(parse_lesson(text))
        except ValueError as e:
            r.problem(f"lesson {text!r} is not HH:MM-HH:MM ({e})", "exceptions", "lessons", value=text)
    max_minutes = {
        Role.TEACHER: r.get(exceptions, int, 180, "exceptions", "teacher_max_minutes"),
        Role.IT_ADMIN: r.get(exceptions, int, 30 * 24 * 60, "exceptions", "it_admin_max_minutes"),
    }
    teacher_max_severity = r.severity(exceptions, "low", "exceptions", "teacher_max_severity")
    teacher_groups = r.strings(exceptions, "exceptions", "teacher_groups")
    for name in teacher_groups:
        if name not in groups:
            r.problem(f"teacher_groups names {name!r}, which is not a group", "exceptions", "teacher_groups", value=name)

    monitoring = r.table(data, "monitoring")
    alerts = _alert_settings(r, r.table(data, "alerts"), r.get(monitoring, str, "", "monitoring", "console_url"))

    retention = r.table(data, "retention")
    records_days = r.get(retention, int, 180, "retention", "records_days")
    flagged_days = r.get(retention, int, 2190, "retention", "flagged_days")
    if records_days < 1 or flagged_days < records_days:
        r.problem("retention: records_days must be at least 1 and flagged_days at least records_days",
                  "retention", "flagged_days")
    console = r.table(data, "console")
    secret_text = r.get(console, str, "var/console.secret", "console", "secret_file")

    if r.problems:
        raise PolicyInvalid(r.problems)
    return Policy(
        path=r.path,
        school_name=r.get(school, str, "Our school", "school", "name"),
        contact=r.get(school, str, "your IT team", "school", "contact"),
        groups=groups,
        default_group=default_group,
        database_url=database_url,
        metrics_address=r.get(gateway, str, "127.0.0.1", "gateway", "metrics_address"),
        metrics_port=metrics_port,
        log_urls=log_urls,
        local=tuple(entries),
        intercept_tls=r.get(tls, bool, True, "tls", "intercept"),
        no_intercept_domains=tuple(no_intercept_domains),
        no_intercept_categories=frozenset(no_intercept_categories),
        htpasswd=htpasswd,
        lists_index=lists_index,
        lists_sources=[s if "://" in s else str(r.relative(s)) for s in r.strings(lists, "lists", "sources")],
        lists_extra=lists_extra,
        watched_files=tuple(watched),
        lessons=tuple(lessons),
        exception_default_minutes=r.get(exceptions, int, 60, "exceptions", "default_minutes"),
        exception_max_minutes=max_minutes,
        teacher_max_severity=teacher_max_severity,
        teacher_groups=tuple(teacher_groups),
        search_terms=r.get(monitoring, bool, True, "monitoring", "search_terms"),
        flag_min_severity=r.severity(monitoring, "medium", "monitoring", "flag_min_severity"),
        block_searches_at=r.severity(monitoring, "critical", "monitoring", "block_searches_at", allow_none_word=True),
        alerts=alerts,
        records_days=records_days,
        flagged_days=flagged_days,
        console_host=r.get(console, str, "127.0.0.1", "console", "host"),
        console_port=r.get(console, int, 8600, "console", "port"),
        console_secret_file=r.relative(secret_text),
        gateway_secret_file=r.relative(r.get(gateway, str, "var/gateway.secret", "gateway", "secret_file")),
    )


def _alert_settings(r: _Reader, alerts: Mapping[str, Any], console_url: str) -> AlertSettings | None:
    """[alerts] with its [alerts.email] and [alerts.webhook] channels; None when no channel is set."""
    email = r.table(alerts, "alerts", "email")
    webhook = r.table(alerts, "alerts", "webhook")
    smtp_host = r.get(email, str, "", "alerts", "email", "host") or None
    webhook_url = r.get(webhook, str, "", "alerts", "webhook", "url") or None
    if not smtp_host and not webhook_url:
        return None
    recipients = r.strings(email, "alerts", "email", "to")
    if smtp_host and not recipients:
        r.problem("[alerts.email] has a host but no recipients (to = [...])", "alerts", "email", "host")
    password = None
    if password_file := r.get(email, str, "", "alerts", "email", "password_file"):
        try:  # kept out of policy.toml, which is widely readable
            password = r.relative(password_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            r.problem(f"cannot read the SMTP password file: {e}", "alerts", "email", "password_file")
    if not console_url:
        r.problem("alerts need [monitoring] console_url, the link the DSL follows", "alerts")
    return AlertSettings(
        console_url=console_url,
        smtp_host=smtp_host,
        smtp_port=r.get(email, int, 25, "alerts", "email", "port"),
        smtp_from=r.get(email, str, "schoolgate@localhost", "alerts", "email", "from"),
        smtp_to=recipients,
        smtp_starttls=r.get(email, bool, False, "alerts", "email", "starttls"),
        smtp_user=r.get(email, str, "", "alerts", "email", "user") or None,
        smtp_password=password,
        webhook_url=webhook_url,
        min_severity=r.severity(alerts, "high", "alerts", "min_severity") or Severity.HIGH,
        per_user_window_s=60 * r.get(alerts, int, 15, "alerts", "per_user_minutes"),
        max_per_hour=r.get(alerts, int, 60, "alerts", "max_per_hour"),
    )


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
    return ListEntry(host=host, path=path, action=action, source=f"{source_file}:{line}" if line else source_file, text=text)


def _read_list_file(r: _Reader, path: Path, action: Action, key: tuple[str, ...], written: str) -> list[ListEntry]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        r.problem(f"cannot read {action.value} list {path}: {e}", *key, value=written)
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
