"""Safeguarding flags: which access records a Designated Safeguarding Lead should see.

A record is flagged with a risk and a severity when the site is listed under a
UK safeguarding heading (self-harm, extremism, pornography...), when a search
typed into it matches the risk lexicon, or when it is an attempt to get round
the filter (VPN/proxy sites, DNS-over-HTTPS, bare IP addresses). Flags are
independent of the verdict: a blocked search for self-harm methods and an
allowed one are both the DSL's business. The policy decides what blocks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from schoolgate.categories.lexicon import RISKS, RiskHit
from schoolgate.categories.taxonomy import CATEGORIES, HEADINGS, Severity

CIRCUMVENTION = "circumvention"
# Categories whose purpose is getting round the filter, whatever their UKSIC heading.
CIRCUMVENTION_CATEGORIES = frozenset({"vpn-proxy", "doh"})
# Every risk a record can be flagged with (what the queue's risk filter offers).
RISK_NAMES = tuple(sorted({*RISKS, *HEADINGS, CIRCUMVENTION}))


@dataclass(frozen=True, slots=True)
class Flag:
    risk: str  # a UK safeguarding heading, a lexicon risk, or "circumvention"
    severity: Severity
    detail: str  # what raised it, for the DSL


def assess(categories: Iterable[str], search_hit: RiskHit | None = None, *, ip_literal: bool = False,
           minimum: Severity = Severity.MEDIUM) -> Flag | None:
    """The most severe concern about one access attempt, if it reaches `minimum`."""
    concerns: list[Flag] = []
    for name in categories:
        category = CATEGORIES.get(name)
        if category is None:
            continue
        if name in CIRCUMVENTION_CATEGORIES:
            concerns.append(Flag(CIRCUMVENTION, category.severity, f"site listed as {category.title}"))
        elif category.heading:
            concerns.append(Flag(category.heading, category.severity, f"site listed as {category.title}"))
    if search_hit is not None:
        concerns.append(Flag(search_hit.risk, search_hit.severity,
                             f"search matched {search_hit.phrase!r} ({search_hit.language})"))
    if ip_literal:
        concerns.append(Flag(CIRCUMVENTION, Severity.MEDIUM, "site asked for by bare IP address"))
    if not concerns:
        return None
    worst = max(concerns, key=lambda flag: flag.severity)
    return worst if worst.severity >= minimum else None


def risk_title(risk: str) -> str:
    """A flag's risk as people read it: a lexicon risk, a UK safeguarding heading, or circumvention."""
    return RISKS.get(risk) or HEADINGS.get(risk) or ("Getting round the filter" if risk == CIRCUMVENTION else risk)
