"""The decision: given who is asking and what for, what does the policy say, and why.

Plain Python with no mitmproxy in it, so the gateway, `schoolgate explain` and
the tests all run the same code.

Order of precedence (documented in the README):
1. the school's local lists: the most specific matching entry decides
   (deeper host first, then longer URL prefix), so `allow bbc.co.uk` with
   `block bbc.co.uk/sport` blocks only the sport pages;
2. category lists: every category the host, its parent domains or a URL entry
   is listed in; the strictest of the group's actions for them wins, so a
   site in both `news` and `pornography` is treated as pornography;
3. the group's default action.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from schoolgate.categories.index import CategoryHit
from schoolgate.categories.taxonomy import CATEGORIES
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
    def __init__(self, policy: Policy, categories: CategoryLookup):
        self.policy = policy
        self.categories = categories
        self.local = LocalLists(policy.local)

    def decide(self, target: Target, group: Group) -> Verdict:
        hits = self.categories.lookup(target.host, target.match_path)
        names = tuple(sorted({hit.category for hit in hits}))

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

        if hits:
            # Strictest action wins; among equals the more severe category is named.
            decisive = max(hits, key=lambda h: (group.action_for(h.category).strictness, _severity(h.category)))
            action = group.action_for(decisive.category)
            return Verdict(
                action=action,
                rule="category",
                reason=f"{decisive.entry} is listed as {_title(decisive.category)}; "
                f"{group.title} policy: {action.value}",
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


def _title(category: str) -> str:
    found = CATEGORIES.get(category)
    return found.title if found else category


def _severity(category: str) -> int:
    found = CATEGORIES.get(category)
    return int(found.severity) if found else 0
