"""One decision record per flow: who asked, for what, what the policy said and
what was done about it, kept on the flow until the Recorder writes it.

Every hook that decides stores a `Decision` with `attach(flow, decision)`; any add-on
reads it with `decision_of(flow)` (HTTP, TCP, UDP and DNS flows alike) and may still
change `outcome`, `verdict` or `note` until the Recorder, last in addons/script.py,
writes it in `response`, `error`, `tcp_end`, `udp_end`... Plain Python: no mitmproxy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from schoolgate.addons.searchterms import SearchTerm
from schoolgate.categories.lexicon import RiskHit
from schoolgate.decide import Rule, Verdict
from schoolgate.identities import Source
from schoolgate.policy import Action, Group
from schoolgate.urls import Target

METADATA_KEY = "schoolgate"
# How a connection the gateway refused before opening it reads in its error (and the flow's).
REFUSED_UPSTREAM = "refused by schoolgate"


def carried_names(pretty_host: str, host: str, sni: str | None, scheme: str) -> list[str]:
    """Every name one request carries (its Host header first, the one people see; then where
    it is sent; then its connection's TLS server name): each is decided, and each must be open."""
    return list(dict.fromkeys((pretty_host, host, *((sni,) if sni and scheme == "https" else ()))))


class Outcome(StrEnum):
    """What was done, as access records store it."""

    ALLOW = "allow"
    BLOCK = "block"
    WARN = "warn"  # the warning page was shown
    PROCEED = "proceed"  # "I understand, continue" on a warning page
    MONITOR = "monitor"  # allowed, of interest

    @classmethod
    def of(cls, action: Action) -> Outcome:
        return cls(action.value)


class Kind(StrEnum):
    """What carried the attempt."""

    HTTP = "http"
    TUNNEL = "tunnel"  # a CONNECT or TLS connection, decided by name before anything inside is seen
    TCP = "tcp"  # bytes that are neither HTTP nor TLS
    UDP = "udp"
    DNS = "dns"


@dataclass(slots=True)
class Who:
    client_ip: str
    user: str | None
    group: Group
    source: Source = Source.NETWORK  # how the user (or, without one, the group) was known


@dataclass(slots=True)
class Decision:
    who: Who
    target: Target
    verdict: Verdict
    method: str  # GET, POST..., CONNECT, TLS, TCP, UDP, DNS
    kind: Kind = Kind.HTTP
    outcome: Outcome = Outcome.ALLOW
    note: str = ""  # what happened beyond the rule, e.g. "warning acknowledged", "TLS interception failed"
    decision_us: int = 0
    reference: str | None = None  # the block or warning page's reference number
    search: SearchTerm | None = None
    search_hit: RiskHit | None = None
    url: str | None = None  # the URL as requested (case kept); the target's normalised URL when None
    started: float = field(default_factory=time.monotonic)
    recorded: bool = False
    probe: bool = False  # the self-check's own request: recorded, never flagged

    def __post_init__(self) -> None:
        if self.outcome is Outcome.ALLOW and self.verdict.action is not Action.ALLOW:
            self.outcome = Outcome.of(self.verdict.action)

    @property
    def refused(self) -> bool:
        return self.outcome is Outcome.BLOCK

    @property
    def rule(self) -> Rule:
        return self.verdict.rule

    @property
    def rule_text(self) -> str:
        return f"{self.verdict.rule_text}{f' ({self.note})' if self.note else ''}"

    def block(self, verdict: Verdict, note: str = "") -> None:
        """Turn this decision into a block (e.g. a content check on the response), before it is recorded."""
        self.verdict, self.outcome = verdict, Outcome.BLOCK
        if note:
            self.note = note


def attach(flow, decision: Decision) -> Decision:
    flow.metadata[METADATA_KEY] = decision
    return decision


def decision_of(flow) -> Decision | None:
    return flow.metadata.get(METADATA_KEY)
