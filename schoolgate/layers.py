"""A trust's baseline: a policy each school's policy can tighten but never loosen.

A multi-academy trust or local authority writes one baseline file (a policy file of its
own: groups, categories, local lists) and each school points `[baseline] file` at it.
Every request is decided by both layers, the school's (with its exceptions and live
lists) and the trust's, and the stricter verdict stands: a school can block more, but
a local allow, an exception or a category set to "allow" cannot open what the trust
blocks. On a tie the school's verdict stands, so `explain` shows the rule closest to
the school. A school group is held to the trust group of the same name, or the one its
`baseline_group` names, else the baseline's group for unknown devices.

Plain Python: the two Deciders are built by the engine.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from schoolgate.decide import Decider, Verdict
from schoolgate.policy import Decrypt, Group, Policy
from schoolgate.urls import Target

TRUST = "trust baseline"


class Layered:
    """Decides like a Decider, over the school's layer and the trust's."""

    def __init__(self, school: Decider, trust: Decider, trust_policy: Policy) -> None:
        self.school, self.trust, self.trust_policy = school, trust, trust_policy

    def trust_group(self, group: Group) -> Group:
        groups = self.trust_policy.groups
        name = group.baseline_group or group.name
        return groups[name] if name in groups else groups[self.trust_policy.gateway.unknown_group]

    def tightened(self, group: Group) -> Group:
        """The school's group with the trust's switches that only tighten (SafeSearch,
        bare IP addresses, sign-in, decrypting everything) turned on where the trust turns them on."""
        trust = self.trust_group(group)
        return replace(group, safe_search=group.safe_search or trust.safe_search,
                       block_ip_literals=group.block_ip_literals or trust.block_ip_literals,
                       require_auth=group.require_auth or trust.require_auth,
                       decrypt=Decrypt.ALL if Decrypt.ALL in (group.decrypt, trust.decrypt) else group.decrypt)

    def decide(self, target: Target, group: Group, **context: Any) -> Verdict:
        return self._stricter(self.school.decide(target, group, **context),
                              self.trust.decide(target, self.trust_group(group), **context), group)

    def decide_connection(self, target: Target, group: Group, *, web: bool, **context: Any) -> Verdict:
        return self._stricter(self.school.decide_connection(target, group, web=web, **context),
                              self.trust.decide_connection(target, self.trust_group(group), web=web, **context), group)

    def path_rules(self, host: str, group: Group, user: str | None, client_ip: str | None) -> str | None:
        return (self.school.path_rules(host, group, user, client_ip)
                or self.trust.path_rules(host, self.trust_group(group), user, client_ip))

    @staticmethod
    def _stricter(school: Verdict, trust: Verdict, group: Group) -> Verdict:
        if trust.action.strictness <= school.action.strictness:
            return school
        # The record, the block page and explain name the trust's rule, and say it is the trust's.
        return replace(trust, group=group.name, source=f"{TRUST}: {trust.source}" if trust.source else TRUST,
                       reason=f"{trust.reason} (the trust's baseline policy)",
                       flag=trust.flag or school.flag)
