"""The decision: given who is asking and what for, what does the policy say, and why.

Plain Python with no mitmproxy in it, so the gateway, `schoolgate explain` and
the tests all run the same code.

Order of precedence (documented in the README):
1. a search typed into the site whose words reach the policy's
   block_searches_at severity is blocked;
2. exceptions granted by teachers or IT, while they last: one for a domain or
   URL opens it; one for a category lifts that category's action;
3. the school's local lists: the most specific matching entry decides
   (deeper host first, then longer URL prefix), so `allow bbc.co.uk` with
   `block bbc.co.uk/sport` blocks only the sport pages;
4. a bare IP address, for groups with block_ip_literals, is blocked;
5. category lists: every category the host, its parent domains or a URL entry
   is listed in; the strictest of the group's actions for them wins, so a
   site in both `news` and `pornography` is treated as pornography;
6. the group's default action.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from schoolgate import flags
from schoolgate.categories.illegal import IllegalTier
from schoolgate.categories.index import CategoryHit
from schoolgate.categories.lexicon import RISKS, RiskHit
from schoolgate.categories.taxonomy import CATEGORIES, Severity
from schoolgate.flags import Flag
from schoolgate.grants import Grant, refusals
from schoolgate.policy import Action, Group, ListEntry, Policy, split_endpoint
from schoolgate.urls import Target, canonical_ip, ip_of, parent_domains, path_matches_prefix


class CategoryLookup(Protocol):
    def lookup(self, host: str, match_path: str) -> list[CategoryHit]: ...

    def has_url_entries(self, host: str) -> bool: ...


class Rule(StrEnum):
    """Which kind of rule decided; the value is what access records store."""

    ILLEGAL = "illegal"  # content that is illegal to view (first step, filled by the lists lane)
    INTERNAL = "internal-destination"  # the gateway's own back office, loopback, link-local
    SEARCH_TERM = "search-term"
    EXCEPTION = "exception"
    LOCAL_ALLOW = "local-allow"
    LOCAL_BLOCK = "local-block"
    IP_LITERAL = "ip-literal"
    CATEGORY = "category"
    DEFAULT = "default"
    RAW_TUNNEL = "raw-tunnel"  # a connection that is not web traffic, for a group that may not make one
    MALFORMED = "malformed-request"  # a request mitmproxy could not parse and refused itself
    FAULT = "decision-failed"  # deciding raised: refused, never passed on
    CONTENT = "content"  # what the response (or an AI prompt) says, scored by addons/content.py
    SIGN_IN = "sign-in"  # proxy credentials refused (wrong, too many attempts, directory unreachable)


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    rule: Rule
    reason: str  # one sentence for people: the block page, logs and `explain`
    group: str
    categories: tuple[str, ...] = ()  # every category the target is listed in
    matched: str = ""  # the entry that decided, as written in its list
    source: str = ""  # where that entry lives (file:line, or the category list)
    category: str | None = None  # the category that decided (rule CATEGORY), for metrics and pages
    flag: Flag | None = None  # the safeguarding concern, computed once for the page, record and alert

    @property
    def rule_text(self) -> str:
        """Compact form stored with each access record."""
        detail = f" {self.matched}" if self.matched else ""
        return f"{self.rule}{detail}"


class LocalLists:
    """The school's own allow/block entries, indexed by host."""

    def __init__(self, entries: Iterable[ListEntry]):
        self._by_host: dict[str, list[ListEntry]] = defaultdict(list)
        for entry in entries:
            self._by_host[entry.host].append(entry)

    def most_specific(self, target: Target) -> ListEntry | None:
        best: ListEntry | None = None
        match_path = target.match_path
        for domain in parent_domains(target.host):
            for entry in self._by_host.get(domain, ()):
                if entry.path and not path_matches_prefix(match_path, entry.path):
                    continue
                if best is None or entry.specificity > best.specificity:
                    best = entry
            if best is not None:
                # Parents are walked deepest first, so nothing later can be more specific.
                return best
        return best

    def url_entry_on(self, host: str) -> ListEntry | None:
        """An entry with a path that can match a request on this host, if there is one."""
        for domain in parent_domains(host):
            for entry in self._by_host.get(domain, ()):
                if entry.path:
                    return entry
        return None


class Decider:
    def __init__(self, policy: Policy, categories: CategoryLookup,
                 extra_entries: Iterable[ListEntry] = (), grants: Iterable[Grant] = (),
                 illegal: IllegalTier | None = None):
        self.policy = policy
        self.categories = categories
        self.illegal = illegal  # the locked IWF/CTIRU tier: not from the policy, first in every decision
        self.local = LocalLists((*policy.local, *extra_entries))
        self.grants = tuple(grants)

    def decide(self, target: Target, group: Group, *, user: str | None = None, client_ip: str | None = None,
               now: datetime | None = None, search_hit: RiskHit | None = None,
               seen_as: tuple[CategoryHit, ...] = ()) -> Verdict:
        """`search_hit` is the worst lexicon match of a search typed into the site;
        `seen_as` are categories the request shows by itself (a DNS-over-HTTPS query
        to an unlisted server is still category doh)."""
        verdict = self._decide(target, group, user, client_ip, now, search_hit, seen_as)
        flag = flags.assess(verdict.categories, search_hit, ip_literal=verdict.rule is Rule.IP_LITERAL,
                            minimum=self.policy.monitoring.flag_min_severity)
        return replace(verdict, flag=flag) if flag is not None else verdict

    def decide_connection(self, target: Target, group: Group, *, web: bool, **context) -> Verdict:
        """A connection that is not (or not yet seen to be) web traffic: the destination is
        decided as usual, and one the group may reach still needs `raw_tunnels = "allow"`
        when it carries anything other than HTTP or TLS."""
        verdict = self.decide(target, group, **context)
        if web or verdict.action is Action.BLOCK or raw_tunnels_allowed(group):
            return verdict
        return replace(verdict, action=Action.BLOCK, rule=Rule.RAW_TUNNEL, matched=f"{target.host}:{target.port}",
                       reason=f"connections that are not web traffic are blocked for {group.title}",
                       source=f"[groups.{group.name}] raw_tunnels")

    def path_rules(self, host: str, group: Group, user: str | None, client_ip: str | None,
                   now: datetime | None = None) -> str | None:
        """Why requests on this host can be decided apart by their path (so their TLS must
        be decrypted to decide them), or None when the host name decides them all."""
        if self.illegal is not None and self.illegal.has_url_entries(host):
            return "the illegal-content list has addresses on this site"
        if (entry := self.local.url_entry_on(host)) is not None:
            return f"the school's list has {entry.text} ({entry.source})"
        for grant in self._grants_for(group, user, client_ip, now):
            if grant.kind == "url" and (host == grant.host or host.endswith("." + grant.host)):
                return f"exception #{grant.id} opens {grant.what}"
        if self.categories.has_url_entries(host):
            return "a category list has addresses on this site"
        return None

    def _decide(self, target: Target, group: Group, user: str | None, client_ip: str | None,
                now: datetime | None, search_hit: RiskHit | None, seen_as: tuple[CategoryHit, ...]) -> Verdict:
        if self.illegal is not None and (illegal := self.illegal.lookup(target.host, target.match_path)):
            # Before everything: no exception, local allow or category action can open it.
            return Verdict(
                action=Action.BLOCK,
                rule=Rule.ILLEGAL,
                reason=f"this address is on the list of {illegal.description}, which the law requires blocked",
                group=group.name,
                categories=("illegal",),
                matched=illegal.provider,
                source=illegal.source,
                category="illegal",
            )
        hits = [*self.categories.lookup(target.host, target.match_path), *seen_as]
        names = tuple(sorted({hit.category for hit in hits}))

        block_at = self.policy.monitoring.block_searches_at
        if search_hit is not None and block_at is not None and search_hit.severity >= block_at:
            # Before exceptions and local lists: opening a search engine does not open every search.
            return Verdict(
                action=Action.BLOCK,
                rule=Rule.SEARCH_TERM,
                reason=f"this search looks like a search about {RISKS[search_hit.risk].lower()}",
                group=group.name,
                categories=names,
                matched=f"{search_hit.risk}:{search_hit.language}",
                source="risk lexicon",
            )

        grants = self._grants_for(group, user, client_ip, now)

        for grant in grants:
            # An exception opens what its granter may open: a teacher's exception for a host
            # leaves a page on it listed as pornography blocked.
            if grant.opens(target) and not refusals(self.policy, grant.role, names):
                return _exception_verdict(grant, group, names)

        entry = self.local.most_specific(target)
        if entry is not None:
            listed = "allow" if entry.action is Action.ALLOW else "block"
            return Verdict(
                action=entry.action,
                rule=Rule.LOCAL_ALLOW if entry.action is Action.ALLOW else Rule.LOCAL_BLOCK,
                reason=f"{entry.text} is on the school's {listed} list",
                group=group.name,
                categories=names,
                matched=entry.text,
                source=entry.source,
            )

        if target.is_ip and group.block_ip_literals:
            return Verdict(
                action=Action.BLOCK,
                rule=Rule.IP_LITERAL,
                reason="sites asked for by bare IP address are blocked, as they bypass the filter's lists",
                group=group.name,
                categories=names,
                matched=target.host,
            )

        if hits:
            lifted = {g.category: g for g in grants if g.kind == "category"}

            def action(category: str) -> Action:
                return Action.ALLOW if category in lifted else group.action_for(category)

            # Strictest action wins; among equals the more severe category is named.
            decisive = max(hits, key=lambda h: (action(h.category).strictness, _severity(h.category)))
            strictest_without = max(hits, key=lambda h: (group.action_for(h.category).strictness, _severity(h.category)))
            if action(decisive.category).strictness < group.action_for(strictest_without.category).strictness:
                return _exception_verdict(lifted[strictest_without.category], group, names)
            return Verdict(
                action=action(decisive.category),
                rule=Rule.CATEGORY,
                reason=f"{decisive.entry} is listed as {_title(decisive.category)}; "
                f"{group.title} policy: {action(decisive.category).value}",
                group=group.name,
                categories=names,
                matched=f"{decisive.category}:{decisive.entry}",
                source=f"category list {decisive.category}",
                category=decisive.category,
            )

        return Verdict(
            action=group.default_action,
            rule=Rule.DEFAULT,
            reason=f"not on any list; {group.title} default: {group.default_action.value}",
            group=group.name,
        )

    def _grants_for(self, group: Group, user: str | None, client_ip: str | None, now: datetime | None) -> list[Grant]:
        if not self.grants:
            return []
        now = now or datetime.now(UTC)
        return [g for g in self.grants if g.active(now) and g.covers(group.name, user, client_ip)]


def _exception_verdict(grant: Grant, group: Group, categories: tuple[str, ...]) -> Verdict:
    until = grant.ends_at.astimezone().strftime("%H:%M %d %b")
    return Verdict(
        action=Action.ALLOW,
        rule=Rule.EXCEPTION,
        reason=f"{grant.what} opened for {grant.whom} by {grant.granted_by} ({grant.role}) until {until}: {grant.reason}",
        group=group.name,
        categories=categories,
        matched=f"#{grant.id} {grant.what}",
        source=f"exception #{grant.id}",
    )


def raw_tunnels_allowed(group: Group) -> bool:
    """Whether the group may open connections that carry neither HTTP nor TLS (SSH, VPNs...).
    Pupils may not: blocked unless the policy says `raw_tunnels = "allow"`."""
    return group.raw_tunnels is Action.ALLOW


# Names that always mean this machine, whatever DNS says.
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class BackOffice:
    """Destinations that are the gateway's own machine or network plumbing: loopback,
    unspecified and link-local addresses (cloud metadata), `localhost`, and the
    gateway's own addresses. A pupil must never reach the console or metrics through
    the proxy; the policy's `internal_destinations` names any that should be reachable."""

    def __init__(self, own_addresses: Iterable[str] = (), allowed: Iterable[str] = ()):
        self.own = frozenset(_address(a) for a in own_addresses if _address(a) is not None)
        self.allowed_hosts: set[str] = set()
        self.allowed_endpoints: set[tuple[str, int]] = set()
        self.allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed:
            host, port = split_endpoint(entry.strip().lower())
            if port is not None:
                self.allowed_endpoints.add((str(_address(host) or host), port))
                continue
            try:
                self.allowed_networks.append(ipaddress.ip_network(host, strict=False))
            except ValueError:
                self.allowed_hosts.add(host)

    def internal(self, host: str, port: int | None, gateway_address: str | None = None) -> bool:
        """Whether (host, port) is the back office and not opened by the policy.
        `host` is a normalised name or an IP address (as decided, or as resolved);
        `gateway_address` is the address this client reached the gateway at."""
        address = _address(ip_of(host) or "")
        if address is None:
            name = host.rstrip(".").lower()
            if not (name in _LOCAL_NAMES or name.endswith(".localhost")):
                return False
        elif not (address.is_loopback or address.is_unspecified or address.is_link_local or address in self.own
                  or (gateway_address is not None and address == _address(gateway_address))):
            return False
        return not self._opened(host, address, port)

    def _opened(self, host: str, address, port: int | None) -> bool:
        key = str(address) if address is not None else host.rstrip(".").lower()
        if key in self.allowed_hosts or (key, port) in self.allowed_endpoints:
            return True
        return address is not None and any(address in network for network in self.allowed_networks)

    def verdict(self, target: Target, group: Group, categories: tuple[str, ...] = ()) -> Verdict:
        return Verdict(
            action=Action.BLOCK, rule=Rule.INTERNAL, group=group.name, categories=categories,
            reason="this address is the school gateway's own machine or network, not a web site",
            matched=f"{target.host}:{target.port}", source="[gateway] internal_destinations",
            flag=Flag(flags.CIRCUMVENTION, Severity.MEDIUM, "tried to reach the gateway's own machine"),
        )


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    canonical = canonical_ip(text)
    return ipaddress.ip_address(canonical) if canonical else None


def _title(category: str) -> str:
    found = CATEGORIES.get(category)
    return found.title if found else category


def _severity(category: str) -> int:
    found = CATEGORIES.get(category)
    return int(found.severity) if found else 0
