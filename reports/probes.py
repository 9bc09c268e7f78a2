"""What the self-check gathers: the live configuration and the probes, the only part
of it that touches the network.

Each probe sends one real request through the gateway as a client would (from
`[selfcheck] source_address` when set, so it lands in a pupils' group), or reads the
running gateway's metrics, or sends a test alert; `schoolgate.reports.selfcheck`
judges what they found. Each request carries a signed `X-Schoolgate-Probe` header, so the
gateway decides it as usual but records it as a probe: the DSL gets no incident or alert for
the self-check's visit to an adult site. Probes use plain HTTP: a decision is made on the name, so
no device certificate is needed, and the gateway marks its own answers
(`X-Schoolgate-Verdict`), so a block by something else is never counted as the gateway's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.addons.signing import PROBE_HEADER, Signer
from schoolgate.alerts import Alert, send_once
from schoolgate.categories import status
from schoolgate.categories.taxonomy import Severity
from schoolgate.engine import Engine
from schoolgate.keys import load_or_create_secret
from schoolgate.policy import Policy
from schoolgate.reports.accounts import list_accounts
from schoolgate.reports.console import templating
from schoolgate.reports.selfcheck import ADULT, ALERT, DOH, GATEWAY, SAFESEARCH, VPN, Facts, Item, Probe, counts
from schoolgate.urls import parse_target

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
# Well-known sites each probe tries, the first one the lists carry in its category.
ADULT_SITES = ("www.pornhub.com", "www.xvideos.com", "xnxx.com")
VPN_SITES = ("nordvpn.com", "expressvpn.com", "protonvpn.com")
# A DNS-over-HTTPS query (RFC 8484 GET) for example.com's A record.
DOH_URL = "http://dns.google/dns-query?dns=AAABAAABAAAAAAAAB2V4YW1wbGUDY29tAAABAAE"
SAFESEARCH_URL = "http://www.google.com/search?q=schoolgate+self-check&safe=off"


def load_engine(policy_path: Path) -> Engine:
    logging.getLogger("schoolgate.engine").setLevel(logging.ERROR)  # its warnings are items in the report
    return Engine.load(policy_path)


async def gather(engine: Engine, database: AsyncEngine | None, *, probe: bool, send_alert: bool,
                 proxy: str | None = None, source_address: str | None = None) -> Facts:
    """The facts for `selfcheck.assess`: configuration, accounts and (when `probe`) the probes."""
    policy = engine.policy
    tier = engine.illegal
    roles: dict[str, int] | None = None
    if database is not None:
        try:
            roles = {}
            for account in await list_accounts(database):
                if account.active:
                    roles[account.role.value] = roles.get(account.role.value, 0) + 1
        except Exception as e:  # no schema yet, or the database is down: the items say "cannot tell"
            log.warning("self-check: console accounts not read: %s", type(e).__name__)
            roles = None
    probes: dict[str, Probe] = {}
    if probe:
        probes = await run_probes(engine, proxy or policy.selfcheck.proxy,
                                  policy.selfcheck.source_address if source_address is None else source_address,
                                  send_alert=send_alert)
    return Facts(policy=policy, health=status.health_of(engine),
                 illegal_entries=tier.entries_by_provider() if tier is not None else {},
                 illegal_problems=tuple(tier.problems) if tier is not None else ("not loaded",),
                 accounts_by_role=roles, probes=probes)


async def run_probes(engine: Engine, proxy: str, source_address: str, *, send_alert: bool) -> dict[str, Probe]:
    policy = engine.policy
    group, _ = policy.group_for(source_address or "127.0.0.1", None)
    as_group = f"as group {group.name}"
    signer = _gateway_signer(policy.gateway.secret_file)

    async def mark_as_probe(request: httpx.Request) -> None:
        assert signer is not None
        request.headers[PROBE_HEADER] = signer.probe_token(request.url.host)

    transport = httpx.AsyncHTTPTransport(local_address=source_address or None, proxy=proxy, retries=0)
    async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT_S, follow_redirects=False,
                                 event_hooks={"request": [mark_as_probe] if signer else []}) as client:
        found = await asyncio.gather(
            _blocked(client, engine, ADULT, "pornography", ADULT_SITES, as_group),
            _blocked(client, engine, VPN, "vpn-proxy", VPN_SITES, as_group),
            _doh(client, as_group),
            _safe_search(client, as_group),
        )
    probes = {p.name: p for p in found}
    probes[GATEWAY] = await _gateway_metrics(policy)
    if send_alert:
        probes[ALERT] = await _test_alert(policy)
    return probes


def _gateway_signer(path: Path | None) -> Signer | None:
    """The gateway's own key, read and never made here: one made by whoever runs the self-check
    (root, say) could lock the gateway out of its key. Without it the probes go unmarked, and
    the gateway flags them as it would anyone's."""
    if path is None or not path.is_file():
        log.warning("self-check: no gateway key at %s: probes are not marked, and will be flagged", path)
        return None
    try:
        return Signer(load_or_create_secret(path))
    except (OSError, ValueError) as e:
        log.warning("self-check: the gateway key cannot be read (%s): probes are not marked, and will be flagged",
                    type(e).__name__)
        return None


async def _get(client: httpx.AsyncClient, url: str, **headers: str) -> httpx.Response | str:
    """The answer through the gateway, or why there was none."""
    try:
        return await client.get(url, headers=headers)
    except httpx.ProxyError as e:
        return f"the gateway refused: {e}"
    except httpx.HTTPError as e:
        return f"no answer from the gateway ({type(e).__name__})"


def _blocked_by_gateway(response: httpx.Response) -> bool:
    return response.status_code == 403 and response.headers.get("x-schoolgate-verdict") == "block"


async def _blocked(client: httpx.AsyncClient, engine: Engine, name: str, category: str, hosts: tuple[str, ...],
                   as_group: str) -> Probe:
    listed = [h for h in hosts if category in engine.listed_categories(parse_target(f"http://{h}/"))]
    if not listed:
        return Probe(name, False, f"none of {', '.join(hosts)} is on the {category} list")
    url = f"http://{listed[0]}/"
    answer = await _get(client, url)
    if isinstance(answer, str):
        return Probe(name, None, f"{url}: {answer}")
    if _blocked_by_gateway(answer):
        return Probe(name, True, f"{url} blocked {as_group} (reference {answer.headers.get('x-schoolgate-reference')})")
    return Probe(name, False, f"{url} answered {answer.status_code} {as_group}, not the gateway's block page")


async def _doh(client: httpx.AsyncClient, as_group: str) -> Probe:
    answer = await _get(client, DOH_URL, accept="application/dns-message")
    if isinstance(answer, str):
        return Probe(DOH, None, f"DNS-over-HTTPS query: {answer}")
    if _blocked_by_gateway(answer):
        return Probe(DOH, True, f"a DNS-over-HTTPS query to dns.google was refused {as_group}")
    return Probe(DOH, False, f"a DNS-over-HTTPS query to dns.google answered {answer.status_code} {as_group}")


async def _safe_search(client: httpx.AsyncClient, as_group: str) -> Probe:
    """A search asking for safe=off: the gateway rewrites it to safe=active before Google sees
    it, which shows in Google's answer (its redirect to HTTPS, or the page's own links)."""
    answer = await _get(client, SAFESEARCH_URL)
    if isinstance(answer, str):
        return Probe(SAFESEARCH, None, f"a Google search: {answer}")
    if answer.headers.get("x-schoolgate-verdict"):
        return Probe(SAFESEARCH, None, f"the search itself was {answer.headers['x-schoolgate-verdict']}ed {as_group}")
    seen = answer.headers.get("location", "") + answer.text[:200_000]
    if "safe=active" in seen and "safe=off" not in seen:
        return Probe(SAFESEARCH, True, f"a Google search asking safe=off came back with safe=active {as_group}")
    return Probe(SAFESEARCH, False, f"a Google search asking safe=off came back without safe=active {as_group}")


_METRICS = {
    "schoolgate_illegal_tier_ok": "illegal_tier_ok",
    "schoolgate_category_lists_age_seconds": "lists_age_seconds",
    "schoolgate_category_lists_stale": "lists_stale",
}


def parse_metrics(text: str) -> dict[str, float]:
    """The few gauges the self-check reads from the Prometheus text format."""
    figures: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        base, _, labels = name.partition("{")
        try:
            number = float(value)
        except ValueError:
            continue
        if base in _METRICS:
            figures[_METRICS[base]] = number
        elif base == "schoolgate_illegal_tier_entries" and 'provider="' in labels:
            figures["illegal_entries:" + labels.split('provider="', 1)[1].split('"', 1)[0]] = number
    return figures


async def _gateway_metrics(policy: Policy) -> Probe:
    gateway = policy.gateway
    if not gateway.metrics_port:
        return Probe(GATEWAY, None, "the gateway's metrics are off ([gateway] metrics_port = 0)")
    host = f"[{gateway.metrics_address}]" if ":" in gateway.metrics_address else gateway.metrics_address
    url = f"http://{host}:{gateway.metrics_port}/metrics"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S, trust_env=False) as client:
            response = await client.get(url)
            response.raise_for_status()
    except httpx.HTTPError as e:
        return Probe(GATEWAY, None, f"{url}: no answer ({type(e).__name__})")
    figures = parse_metrics(response.text)
    if not figures:
        return Probe(GATEWAY, None, f"{url} does not look like a schoolgate gateway's metrics")
    ok = figures.get("illegal_tier_ok") == 1 and figures.get("lists_stale", 0) == 0
    shown = ", ".join(f"{k} {v:g}" for k, v in sorted(figures.items()))
    return Probe(GATEWAY, ok, f"the running gateway reports {shown}", figures)


async def _test_alert(policy: Policy) -> Probe:
    alerts = policy.alerts
    if not (alerts.email.host and alerts.email.to) and not alerts.webhook.url:
        return Probe(ALERT, None, "no alert channel configured")
    alert = Alert(record_ref="", time=datetime.now(UTC), risk="self-check", severity=Severity.CRITICAL,
                  group="(self-check)", user_key="", summary="A test alert from the schoolgate self-check: no action needed")
    results = await send_once(alert, alerts)
    failed = [f"{channel}: {problem}" for channel, problem in results if problem]
    delivered = [channel for channel, problem in results if not problem]
    if failed:
        return Probe(ALERT, False, "test alert not delivered by " + "; ".join(failed))
    return Probe(ALERT, True, "test alert accepted by " + ", ".join(delivered))


def summary(probes: Mapping[str, Probe]) -> list[Probe]:
    return [probes[name] for name in (ADULT, SAFESEARCH, DOH, VPN, GATEWAY, ALERT) if name in probes]


def render_html(items: list[Item], probes: list[Probe], *, school: str) -> str:
    """The self-check as one self-contained printable page (`schoolgate selfcheck --format html`)."""
    from markupsafe import Markup

    return templating.environment().get_template("selfcheck.html").render(
        items=items, probes=probes, counts=counts(items), school=school, checked_at=datetime.now(UTC),
        standalone=True, stylesheet=Markup(templating.stylesheet()))
