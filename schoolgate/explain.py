"""Why a URL gets its verdict for a group: what `schoolgate explain` prints and the
console's *Test a URL* shows. Plain Python: the caller loads the engine and its live state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schoolgate.addons.embedded import decided_targets
from schoolgate.decide import Verdict
from schoolgate.decrypt import Decryption, decryption
from schoolgate.engine import Engine
from schoolgate.layers import TRUST
from schoolgate.policy import Group, Policy
from schoolgate.urls import Target


class UnknownGroup(ValueError):
    pass


def directory_groups(policy: Policy, user: str | None) -> frozenset[str]:
    """The user's groups in the directory, as the gateway would read them (none without one).
    Raises OSError when the directory cannot be asked."""
    if not user or not policy.directory.enabled:
        return frozenset()
    from schoolgate.addons.directory import Directory  # LDAP: only when a directory is configured

    return Directory(policy.directory).groups_of(user) or frozenset()


def choose_group(policy: Policy, group_name: str | None, client: str | None, user: str | None,
                 directory_groups: frozenset[str] = frozenset(), named_by: str = "given with --group") -> tuple[Group, str]:
    """The group to decide for (named, else the one the client and user fall in), and how it was
    chosen: `named_by` says how a named group was given."""
    if not group_name:
        return policy.group_for(client or "", user, directory_groups)
    if group_name not in policy.groups:
        raise UnknownGroup(f"no group {group_name!r}; groups are: {', '.join(policy.groups)}")
    return policy.groups[group_name], named_by


@dataclass(frozen=True)
class Explanation:
    target: Target
    decisive: Target  # the target whose verdict stands: the URL itself or a site it carries
    group: Group
    how: str  # how the group was chosen
    when: datetime
    window: str | None  # the group's open time window, when the group has any
    verdict: Verdict
    layer: str | None  # with a trust baseline: whose rule decided
    tls: Decryption | None  # for HTTPS: whether the gateway decrypts it, and why (None for plain HTTP)

    def lines(self, policy: Policy) -> list[tuple[str, str]]:
        """(label, text) pairs, in the order `explain` prints them."""
        v = self.verdict
        rows = [("url", self.target.url())]
        if self.decisive is not self.target:
            rows.append(("carries", f"{self.decisive.url()} (decided too; the strictest verdict stands)"))
        rows.append(("group", f"{self.group.name} ({self.how})"))
        if self.group.when:
            at = self.when.astimezone(policy.schedules.schedule.timezone)
            rows.append(("window", f"{self.window or 'none open'} at {at:%a %d %b %H:%M}"))
        if self.layer:
            rows.append(("layer", f"{self.layer} (the stricter of the two stands)"))
        rows += [("verdict", v.action.value.upper()), ("rule", v.rule_text), ("reason", v.reason)]
        if v.source:
            rows.append(("source", v.source))
        rows.append(("categories", ", ".join(v.categories) or "(none)"))
        if self.tls is not None:
            rows.append(("https", f"{'decrypted' if self.tls.decrypt else 'passed through undecrypted, decided by name'}"
                                  f" ({self.tls.reason})"))
        return rows


def explain(engine: Engine, target: Target, group: Group, how: str, when: datetime, *,
            user: str | None = None, client_ip: str | None = None) -> Explanation:
    """Decide `target` as the gateway would for this group at `when`: the URL and every site it carries."""
    policy = engine.policy
    group, window = policy.group_during(group, when)
    targets, seen_as = decided_targets(target)
    decided = [(t, engine.decide(t, group, user=user, client_ip=client_ip, seen_as=seen_as)) for t in targets]
    decisive, verdict = max(decided, key=lambda pair: pair[1].action.strictness)
    layer = None
    if policy.trust is not None:
        layer = "the trust's baseline" if verdict.source.startswith(TRUST) else "this school's policy"
    tls = decryption(engine, target.host, group, verdict, user=user, client_ip=client_ip) if target.scheme == "https" else None
    return Explanation(target=target, decisive=decisive, group=group, how=how, when=when, window=window,
                       verdict=verdict, layer=layer, tls=tls)
