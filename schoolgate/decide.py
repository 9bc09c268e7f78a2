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

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from schoolgate.categories.index import CategoryHit
from schoolgate.categories.lexicon import RISKS, RiskHit
from schoolgate.categories.taxonomy import CATEGORIES
from schoolgate.grants import Grant
from schoolgate.policy import Action, Group, ListEntry, Policy
from schoolgate.urls import Target, parent_domains, path_matches_prefix


class CategoryLookup(Protocol):
    def lookup(self, host: str, match_path: str) -> list[CategoryHit]: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    rule: str  # which kind of rule decided: local-allow, local-block, category, default
    reason: str  # one sentence for people: the block page, logs and `explain`
    group: str
    categories: tuple[str, ...] = ()  # every category the target is listed in
    matched: str = ""  # the entry that decided, as written in its list
    source: str = ""  # where that entry lives (file:line, or the category list)

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


class Decider:
    def __init__(self, policy: Policy, categories: CategoryLookup,
                 extra_entries: Iterable[ListEntry] = (), grants: Iterable[Grant] = ()):
        self.policy = policy
        self.categories = categories
        self.local = LocalLists((*policy.local, *extra_entries))
        self.grants = tuple(grants)

    def decide(self, target: Target, group: Group, *, user: str | None = None, client_ip: str | None = None,
               now: datetime | None = None, search_hit: RiskHit | None = None,
               seen_as: tuple[CategoryHit, ...] = ()) -> Verdict:
        """`search_hit` is the worst lexicon match of a search typed into the site;
        `seen_as` are categories the request shows by itself (a DNS-over-HTTPS query
        to an unlisted server is still category doh)."""
        hits = [*self.categories.lookup(target.host, target.match_path), *seen_as]
        names = tuple(sorted({hit.category for hit in hits}))

        block_at = self.policy.block_searches_at
        if search_hit is not None and block_at is not None and search_hit.severity >= block_at:
            # Before exceptions and local lists: opening a search engine does not open every search.
            return Verdict(
                action=Action.BLOCK,
                rule="search-term",
                reason=f"this search looks like a search about {RISKS[search_hit.risk].lower()}",
                group=group.name,
                categories=names,
                matched=f"{search_hit.risk}:{search_hit.language}",
                source="risk lexicon",
            )

        grants = self._grants_for(group, user, client_ip, now)

        for grant in grants:
            if grant.opens(target):
                return _exception_verdict(grant, group, names)

        entry = self.local.most_specific(target)
        if entry is not None:
            listed = "allow" if entry.action is Action.ALLOW else "block"
            return Verdict(
                action=entry.action,
                rule=f"local-{listed}",
                reason=f"{entry.text} is on the school's {listed} list",
                group=group.name,
                categories=names,
                matched=entry.text,
                source=entry.source,
            )

        if target.is_ip and group.block_ip_literals:
            return Verdict(
                action=Action.BLOCK,
                rule="ip-literal",
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
                rule="category",
                reason=f"{decisive.entry} is listed as {_title(decisive.category)}; "
                f"{group.title} policy: {action(decisive.category).value}",
                group=group.name,
                categories=names,
                matched=f"{decisive.category}:{decisive.entry}",
                source=f"category list {decisive.category}",
            )

        return Verdict(
            action=group.default_action,
            rule="default",
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
        rule="exception",
        reason=f"{grant.what} opened for {grant.whom} by {grant.granted_by} ({grant.role}) until {until}: {grant.reason}",
        group=group.name,
        categories=categories,
        matched=f"#{grant.id} {grant.what}",
        source=f"exception #{grant.id}",
    )


def _title(category: str) -> str:
    found = CATEGORIES.get(category)
    return found.title if found else category


def _severity(category: str) -> int:
    found = CATEGORIES.get(category)
    return int(found.severity) if found else 0
