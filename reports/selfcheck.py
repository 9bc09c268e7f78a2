"""The filtering and monitoring self-check, for the school's annual review.

Each DfE filtering and monitoring standard and each UK Safer Internet Centre
"appropriate filtering" / "appropriate monitoring" checklist item the gateway can
speak to is judged met, partly met, not met or cannot tell, with the evidence and
what to do. The evidence is the live configuration (`Facts`) and what the probes
found when they sent requests through the running gateway (`Probe`, gathered by
`schoolgate.reports.probes`, the only part that touches the network).

Plain Python, no I/O library: `assess` is the whole decision, so the CLI, the
console page and the tests judge the same facts the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from schoolgate.categories.health import Health
from schoolgate.categories.lexicon import RISKS
from schoolgate.policy import Action, Group, Policy

DFE = "DfE filtering and monitoring standards"
UKSIC_FILTERING = "UKSIC appropriate filtering"
UKSIC_MONITORING = "UKSIC appropriate monitoring"

# The probes `schoolgate.reports.probes` runs, by name.
ADULT, SAFESEARCH, DOH, VPN, ALERT, GATEWAY = "adult-site", "safesearch", "doh", "vpn-proxy", "test-alert", "gateway"

# UKSIC's inappropriate-content categories and the schoolgate categories that carry each.
INAPPROPRIATE = (
    ("Discrimination", ("hate",)),
    ("Drugs / substance abuse", ("drugs",)),
    ("Extremism", ("extremism",)),
    ("Gambling", ("gambling",)),
    ("Hate speech", ("hate",)),
    ("Malware / hacking", ("malware", "hacking", "phishing")),
    ("Pornography", ("pornography",)),
    ("Piracy and copyright theft", ("piracy",)),
    ("Self harm", ("self-harm",)),
    ("Violence", ("violence",)),
    ("Mis / disinformation", ("fake-news",)),
)


class Status(StrEnum):
    MET = "met"
    PARTLY = "partly"
    NOT_MET = "not met"
    CANNOT_TELL = "cannot tell"


@dataclass(frozen=True, slots=True)
class Probe:
    """One request (or delivery) the self-check made, and what came of it."""

    name: str
    passed: bool | None  # None: it could not be run (no gateway answering, nothing to test with)
    evidence: str
    figures: Mapping[str, float] = field(default_factory=dict)  # the gateway probe: what its metrics say


@dataclass(frozen=True)
class Facts:
    policy: Policy
    health: Health  # the category lists as `schoolgate check` reads them
    illegal_entries: Mapping[str, int]  # the illegal-content tier on disk, entries by provider (iwf, ctiru)
    illegal_problems: tuple[str, ...]
    accounts_by_role: Mapping[str, int] | None  # active console accounts; None when the database could not be read
    probes: Mapping[str, Probe] = field(default_factory=dict)  # by name; absent: not run


@dataclass(frozen=True, slots=True)
class Item:
    source: str  # DFE, UKSIC_FILTERING or UKSIC_MONITORING
    title: str  # the standard's or checklist item's name
    status: Status
    evidence: str
    action: str = ""  # what to do; "" when nothing is needed

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "item": self.title, "status": self.status.value, "evidence": self.evidence,
                "action": self.action}


def pupil_groups(policy: Policy) -> list[Group]:
    """The groups pupils and guests are in: those that may not open raw tunnels (the
    default; staff groups say `raw_tunnels = "allow"`). All groups if none qualifies."""
    groups = [g for g in policy.groups.values() if g.raw_tunnels is not Action.ALLOW]
    return groups or list(policy.groups.values())


def _action(group: Group, category: str) -> Action:
    return group.categories.get(category, group.default_action)


def _probe(facts: Facts, name: str) -> Probe | None:
    return facts.probes.get(name)


def _with_probes(status: Status, evidence: str, probes: Iterable[Probe | None], action: str,
                 failed_action: str) -> tuple[Status, str, str]:
    """Fold probes into a configuration judgement: a failed probe is not met whatever the
    file says; passed ones confirm; ones not run leave the file's word standing."""
    ran = [p for p in probes if p is not None]
    if not ran:
        return status, evidence + " (not probed)", action
    evidence += "".join(f"; probe: {p.evidence}" for p in ran)
    if any(p.passed is False for p in ran):
        return Status.NOT_MET, evidence, failed_action
    if any(p.passed is None for p in ran) and status is Status.MET:
        return Status.CANNOT_TELL, evidence, "run the self-check where it can reach the gateway (`--proxy`)"
    return status, evidence, action


# --- the items ------------------------------------------------------------------------

def _roles(facts: Facts) -> Item:
    title = "1. Roles and responsibilities: who manages filtering and monitoring"
    roles = facts.accounts_by_role
    if roles is None:
        return Item(DFE, title, Status.CANNOT_TELL, "the console accounts could not be read",
                    "run the self-check where the database is reachable")
    dsl, it = roles.get("dsl", 0), roles.get("it_admin", 0)
    evidence = f"{dsl} safeguarding lead (DSL) and {it} IT administrator console accounts"
    if dsl and it:
        return Item(DFE, title, Status.PARTLY, evidence + "; the governor and senior leader responsible are not "
                    "recorded by schoolgate", "name the senior leader and governor responsible in the school's policy")
    return Item(DFE, title, Status.NOT_MET, evidence, "give the DSL and IT their own console accounts: "
                "`schoolgate accounts add NAME --role dsl` (and `--role it_admin`)")


def _review(facts: Facts) -> Item:
    title = "2. Review filtering and monitoring at least annually; test that it works"
    probed = [p for p in facts.probes.values() if p.passed is not None]
    if not probed:
        return Item(DFE, title, Status.CANNOT_TELL, "no probe reached the gateway",
                    "run `schoolgate selfcheck --proxy` against the gateway pupils use")
    return Item(DFE, title, Status.PARTLY, f"this self-check probed the gateway {len(probed)} ways from one address",
                "also test from a pupil device in each group (SWGfL Test Filtering), consider SEND, EAL, AI and BYOD, "
                "and keep this report with the review's minutes")


def _illegal(facts: Facts) -> list[Item]:
    loaded: Mapping[str, int] = facts.illegal_entries
    where = "on disk"
    live = _gateway_values(_probe(facts, GATEWAY))
    if live is not None and "illegal_entries:iwf" in live:
        loaded = {p: int(live.get(f"illegal_entries:{p}", 0)) for p in ("iwf", "ctiru")}
        where = "in the running gateway"
    problems = "; ".join(facts.illegal_problems)

    def item(source: str, title: str, providers: tuple[str, ...]) -> Item:
        counts = ", ".join(f"{p.upper()} {loaded.get(p, 0):,} entries" for p in providers)
        evidence = f"{counts} {where}" + (f"; {problems}" if problems else "")
        missing = [p for p in providers if not loaded.get(p)]
        todo = ("put the lists in the illegal-content directory (categories/README.md, "
                "\"The illegal-content tier\") and keep them refreshed twice a day")
        if len(missing) == len(providers):
            return Item(source, title, Status.NOT_MET, evidence, todo)
        if missing or problems:
            return Item(source, title, Status.PARTLY, evidence, todo)
        return Item(source, title, Status.MET, evidence)

    locked = item(UKSIC_FILTERING, "Illegal content filters cannot be disabled by anyone", ("iwf", "ctiru"))
    if locked.status is not Status.NOT_MET:
        locked = Item(locked.source, locked.title, locked.status,
                      locked.evidence + "; the tier is checked before exceptions and local lists and its directory "
                      "is not a policy setting", locked.action)
    return [
        item(DFE, "3. Filtering blocks illegal content (IWF member, CTIRU list, CSAM)", ("iwf", "ctiru")),
        item(UKSIC_FILTERING, "IWF: block child sexual abuse material using the IWF URL list", ("iwf",)),
        item(UKSIC_FILTERING, "Integrate the police assessed list of unlawful terrorist content (CTIRU)", ("ctiru",)),
        locked,
    ]


def _gateway_values(probe: Probe | None) -> Mapping[str, float] | None:
    """The running gateway's own figures (its metrics), when the probe read them."""
    return probe.figures if probe is not None and probe.passed is not None else None


def _up_to_date(facts: Facts) -> Item:
    title = "3. Filtering is operational, up to date and applied to all users, guests and devices"
    health, policy = facts.health, facts.policy
    age = health.age_days
    live = _gateway_values(_probe(facts, GATEWAY))
    if live is not None and "lists_age_seconds" in live:
        seconds = live["lists_age_seconds"]
        age = None if seconds < 0 else seconds / 86400
    parts = [f"unknown devices get group {policy.gateway.unknown_group!r}"]
    parts.append("category lists: the small built-in list only" if age is None
                 else f"category lists compiled {age:.1f} days ago (max_age_days = {policy.lists.max_age_days})")
    problems = health.problems()
    parts += problems[:3] + ([f"and {len(problems) - 3} more (`schoolgate lists status`)"] if len(problems) > 3 else [])
    evidence = "; ".join(parts)
    if age is None:
        return Item(DFE, title, Status.NOT_MET, evidence,
                    "compile the category lists (`schoolgate lists update`) and enable the nightly timer")
    if policy.lists.max_age_days and age > policy.lists.max_age_days:
        return Item(DFE, title, Status.NOT_MET, evidence, "the nightly `schoolgate lists update` is not running: "
                    "check `systemctl status schoolgate-lists.timer`")
    if health.problems():
        return Item(DFE, title, Status.PARTLY, evidence, "fix the problems listed (`schoolgate lists status`)")
    return Item(DFE, title, Status.MET, evidence)


def _differentiated(facts: Facts) -> list[Item]:
    groups = list(facts.policy.groups.values())
    profiles = {tuple(sorted((c, a.value) for c, a in g.categories.items())) + (g.default_action.value,) for g in groups}
    pupils = ", ".join(g.name for g in pupil_groups(facts.policy))
    evidence = (f"{len(groups)} groups ({', '.join(g.name for g in groups)}), {len(profiles)} different filtering "
                f"profiles; judged as pupils' groups below (raw tunnels blocked): {pupils}")
    if len(profiles) >= 2:
        status, action = Status.MET, ""
    else:
        status, action = Status.NOT_MET, "give pupils and staff (at least) their own groups and category actions"
    return [Item(DFE, "3. Age and ability appropriate; no blanket profile (at least pupil and staff profiles)",
                 status, evidence, action),
            Item(UKSIC_FILTERING, "Age appropriate, differentiated filtering", status, evidence, action)]


def _circumvention(facts: Facts) -> list[Item]:
    pupils = pupil_groups(facts.policy)
    open_to = sorted({g.name for g in pupils for c in ("vpn-proxy", "doh") if _action(g, c) is not Action.BLOCK})
    ip_open = sorted(g.name for g in pupils if not g.block_ip_literals)
    evidence = (f"vpn-proxy and doh blocked for {len(pupils) - len(open_to)} of {len(pupils)} pupil groups; "
                f"bare IP addresses refused for {len(pupils) - len(ip_open)}")
    if open_to:
        status, action = Status.NOT_MET, f"block vpn-proxy and doh for {', '.join(open_to)}"
    elif ip_open:
        status, action = Status.PARTLY, f"set block_ip_literals = true for {', '.join(ip_open)}"
    else:
        status, action = Status.MET, ""
    failed = "the gateway let a circumvention request through: is the traffic passing the gateway, and the lists loaded?"
    status, evidence, action = _with_probes(status, evidence, (_probe(facts, VPN), _probe(facts, DOH)), action, failed)
    return [Item(DFE, "3. Identifies and blocks circumvention (VPNs, proxy services)", status, evidence, action),
            Item(UKSIC_FILTERING, "Circumvention", status, evidence, action)]


def _inappropriate(facts: Facts) -> list[Item]:
    pupils = pupil_groups(facts.policy)
    entries = facts.health.entries
    items = []
    for title, categories in INAPPROPRIATE:
        lax = sorted({g.name for g in pupils for c in categories if _action(g, c) is Action.ALLOW})
        watched = sorted({g.name for g in pupils for c in categories if _action(g, c) is Action.MONITOR})
        empty = [c for c in categories if not entries.get(c)]
        listed = ", ".join(f"{c} {entries.get(c, 0):,} entries" for c in categories)
        restricted = len(pupils) - len(lax) - len(watched)
        evidence = f"{'/'.join(categories)}: blocked or warned for {restricted} of {len(pupils)} pupil groups; {listed}"
        if lax:
            status, action = Status.NOT_MET, f"block, warn or monitor {'/'.join(categories)} for {', '.join(lax)}"
        elif watched:
            status, action = Status.PARTLY, f"only monitored for {', '.join(watched)}: block or warn if the review agrees"
        elif empty:
            status, action = Status.PARTLY, (f"no list fills {', '.join(empty)}: add one under [lists.extra] "
                                             "(searches and page content are still scored)")
        else:
            status, action = Status.MET, ""
        if title == "Pornography":
            status, evidence, action = _with_probes(status, evidence, [_probe(facts, ADULT)], action,
                                                   "a listed adult site was not blocked: is the traffic passing the gateway?")
        items.append(Item(UKSIC_FILTERING, title, status, evidence, action))
    worst = min((i.status for i in items), key=_ORDER.index, default=Status.MET)
    harmful = Item(DFE, "3. Filtering blocks harmful and inappropriate content", worst,
                   f"{sum(i.status is Status.MET for i in items)} of {len(items)} UKSIC content categories met",
                   "see the UKSIC content items below" if worst is not Status.MET else "")
    return [harmful, *items]


def _alerts(facts: Facts) -> list[Item]:
    alerts = facts.policy.alerts
    channels = [name for name, on in (("email", alerts.email.host and alerts.email.to),
                                      ("webhook", alerts.webhook.url)) if on]
    evidence = (f"alerts of {alerts.min_severity.name.lower()} severity and above by {' and '.join(channels)}"
                if channels else "no alert channel ([alerts.email] or [alerts.webhook])")
    if not channels:
        status, action = Status.NOT_MET, "set [alerts.email] host and to (or [alerts.webhook] url) to reach the DSL"
    elif not facts.policy.monitoring.console_url:
        status, action = Status.PARTLY, "set [monitoring] console_url so alerts link to the incident"
    else:
        status, action = Status.MET, ""
    if channels:
        status, evidence, action = _with_probes(status, evidence, [_probe(facts, ALERT)], action,
                                               "the test alert was not delivered: check the SMTP host or webhook")
    return [Item(DFE, "3. Provides alerts when content is blocked or flagged", status, evidence, action),
            Item(UKSIC_MONITORING, "Alert management", status, evidence, action)]


def _identification(facts: Facts) -> list[Item]:
    p = facts.policy
    sources = [name for name, on in (("htpasswd", p.auth.htpasswd), ("directory", p.directory.enabled),
                                     ("Kerberos", p.kerberos.enabled), ("sign-in page", p.portal.enabled),
                                     ("RADIUS accounting", p.accounting.enabled)) if on]
    searches = "search terms recorded" if p.monitoring.search_terms else "search terms NOT recorded"
    urls = f"URLs recorded {p.gateway.log_urls.value}"
    evidence = f"identity: {', '.join(sources) or 'network addresses only'}; {searches}; {urls}; device address and time always"
    if sources and p.monitoring.search_terms:
        status, action = Status.MET, ""
    elif p.monitoring.search_terms:
        status, action = Status.PARTLY, "set up sign-in ([directory], [kerberos], [portal] or [accounting]) so records name pupils"
    else:
        status, action = Status.NOT_MET, "set [monitoring] search_terms = true"
    return [Item(DFE, "3. Identifies device, IP address, the individual, time and search term", status, evidence, action),
            Item(UKSIC_FILTERING, "Identification", status, evidence, action),
            Item(UKSIC_MONITORING, "Identification", status, evidence, action)]


def _content_analysis(facts: Facts) -> Item:
    content = facts.policy.content
    scored = [g.name for g in facts.policy.groups.values() if g.content_scoring]
    if content.enabled and scored:
        return Item(UKSIC_FILTERING, "Contextual content filters (real-time analysis, AI-generated content)", Status.MET,
                    f"page content and AI chat prompts scored for {', '.join(scored)} "
                    f"(blocked from {content.block_at}, flagged from {content.flag_at})")
    return Item(UKSIC_FILTERING, "Contextual content filters (real-time analysis, AI-generated content)",
                Status.NOT_MET, "content scoring is off", "set [content] enabled = true")


def _safe_search(facts: Facts) -> Item:
    pupils = pupil_groups(facts.policy)
    off = sorted(g.name for g in pupils if not g.safe_search)
    evidence = f"SafeSearch enforced for {len(pupils) - len(off)} of {len(pupils)} pupil groups"
    status, action = (Status.NOT_MET, f"set safe_search = true for {', '.join(off)}") if off else (Status.MET, "")
    status, evidence, action = _with_probes(status, evidence, [_probe(facts, SAFESEARCH)], action,
                                           "a search with safe=off came back unfiltered for the probe's group")
    return Item(UKSIC_FILTERING, "Safe search", status, evidence, action)


def _monitoring(facts: Facts) -> list[Item]:
    p = facts.policy
    roles = facts.accounts_by_role
    dsl = None if roles is None else roles.get("dsl", 0)
    evidence = (f"records flagged for the DSL from {p.monitoring.flag_min_severity.name.lower()} severity; "
                f"searches blocked at {p.monitoring.block_searches_at.name.lower() if p.monitoring.block_searches_at else 'never'}; "
                + ("DSL console accounts: unknown" if dsl is None else f"{dsl} DSL console account(s)"))
    if dsl is None:
        status, action = Status.CANNOT_TELL, "run the self-check where the database is reachable"
    elif not dsl:
        status, action = Status.NOT_MET, "give the DSL a console account to review flagged records"
    else:
        status, action = Status.MET, ""
    strategy = Item(DFE, "4. Effective monitoring: incidents picked up urgently, acted on and the outcome recorded",
                    status, evidence, action)
    alert = next(i for i in _alerts(facts) if i.source == DFE)
    if strategy.status is Status.MET and alert.status is not Status.MET:
        strategy = Item(strategy.source, strategy.title, Status.PARTLY, strategy.evidence + "; alerts: " + alert.evidence,
                        alert.action)
    presentation = Item(UKSIC_MONITORING, "Log-file presentation and reporting", status,
                        "the review console (flagged queue, incidents with context and notes, period report); " + evidence,
                        action)
    retention = Item(UKSIC_MONITORING, "Data retention", Status.MET,
                     f"access records kept {p.retention.records_days} days, flagged records and incidents "
                     f"{p.retention.flagged_days} days, in {_where(p.gateway.database)}")
    priority = Item(UKSIC_MONITORING, "Prioritisation", Status.MET,
                    f"five severities; the DSL is alerted from {p.alerts.min_severity.name.lower()}")
    return [strategy, presentation, retention, priority]


def _where(database: str) -> str:
    """Where the records are, without credentials."""
    scheme, _, rest = database.partition("://")
    host = rest.rpartition("@")[2]
    return f"{scheme.split('+')[0]} at {host or 'the default path'}"


def _monitoring_content(facts: Facts) -> Item:
    p = facts.policy
    title = "Monitoring content: self-harm and suicide, bullying, grooming, extremism, drugs, violence"
    risks = ", ".join(RISKS.values())
    if not p.monitoring.search_terms:
        return Item(UKSIC_MONITORING, title, Status.NOT_MET, "search terms are not read", "set [monitoring] search_terms = true")
    evidence = (f"searches and AI prompts read for {risks}; flagged from {p.monitoring.flag_min_severity.name.lower()}"
                + ("; page content scored too" if p.content.enabled else "; page content NOT scored"))
    if not p.content.enabled:
        return Item(UKSIC_MONITORING, title, Status.PARTLY, evidence, "set [content] enabled = true")
    return Item(UKSIC_MONITORING, title, Status.MET, evidence)


def _by_design(facts: Facts) -> list[Item]:
    """Items the product meets by how it works; listed so the review sees every line."""
    remote = Item(UKSIC_FILTERING, "Remote devices", Status.CANNOT_TELL,
                  "school laptops off site are filtered only when they connect through the gateway's WireGuard mode",
                  "check that off-site school devices use `--mode wireguard` (deploy/README.md)")
    return [
        Item(DFE, "3. Filters all internet feeds, including backup connections", Status.CANNOT_TELL,
             "the gateway filters what is routed through it",
             "check that backup links and guest Wi-Fi route through the gateway (transparent mode, or the firewall's "
             "default-deny egress in deploy/nftables)"),
        Item(UKSIC_FILTERING, "Control: the school can allow or block quickly, with an audit trail", Status.MET,
             "managed lists and exceptions reach every gateway within a second; every change is in the audit log"),
        Item(UKSIC_FILTERING, "Reporting mechanism (wrongly blocked or allowed)", Status.MET,
             "every block page offers \"ask for access\"; requests are reviewed in the console"),
        Item(UKSIC_FILTERING, "Network level", Status.MET, "filtering is applied by the gateway, not software on devices"),
        Item(UKSIC_FILTERING, "Reports", Status.MET, "the period report (console and `schoolgate report`)"),
        remote,
        Item(UKSIC_MONITORING, "Mobile devices and BYOD", Status.CANNOT_TELL,
             "the gateway sees what passes it; apps that pin certificates are decided by name only",
             "test monitoring on the school's mobile devices and guest Wi-Fi"),
    ]


_ORDER = [Status.NOT_MET, Status.CANNOT_TELL, Status.PARTLY, Status.MET]
_CHECKS: tuple[Callable[[Facts], Item | list[Item]], ...] = (
    _roles, _review, _illegal, _up_to_date, _differentiated, _inappropriate, _circumvention, _alerts,
    _identification, _content_analysis, _safe_search, _monitoring, _monitoring_content, _by_design,
)


def assess(facts: Facts) -> list[Item]:
    """Every item, DfE standards first, then UKSIC filtering, then monitoring (in the order written)."""
    items: list[Item] = []
    for check in _CHECKS:
        found = check(facts)
        items.extend(found if isinstance(found, list) else [found])
    order = (DFE, UKSIC_FILTERING, UKSIC_MONITORING)
    return sorted(items, key=lambda i: order.index(i.source))


def counts(items: Iterable[Item]) -> dict[Status, int]:
    found = dict.fromkeys(Status, 0)
    for item in items:
        found[item.status] += 1
    return found


def text_lines(items: list[Item], probes: Iterable[Probe]) -> list[str]:
    """`schoolgate selfcheck` as text: each item, then what each probe did."""
    lines = []
    source = ""
    for item in items:
        if item.source != source:
            source = item.source
            lines += ["", source.upper()]
        lines.append(f"[{item.status.value.upper():11}] {item.title}")
        lines.append(f"    evidence: {item.evidence}")
        if item.action:
            lines.append(f"    to do:    {item.action}")
    lines += ["", "PROBES"]
    for probe in probes:
        result = {True: "passed", False: "FAILED", None: "not run"}[probe.passed]
        lines.append(f"  {probe.name:12} {result:8} {probe.evidence}")
    found = counts(items)
    lines += ["", ", ".join(f"{n} {status.value}" for status, n in found.items())]
    return lines
