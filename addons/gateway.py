"""schoolgate's mitmproxy add-on: the request path.

who is asking (identity) -> what it is (target) -> what the policy says
(Engine, plain Python) -> act (block page, warning, pass through) -> record.

The hooks stay thin: every decision is made by `schoolgate.engine.Engine`,
which knows nothing of mitmproxy and is shared with `schoolgate explain`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import socket
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from mitmproxy import connection, ctx, exceptions, http, tls

from schoolgate import flags, metrics
from schoolgate.addons.circumvention import is_doh_request
from schoolgate.addons.identity import Authenticator, BadCredentials, client_address
from schoolgate.addons.safesearch import apply_query, enforce
from schoolgate.addons.searchterms import SearchTerm, extract_search, extract_search_from_body
from schoolgate.addons.pages import (
    REQUEST_ACCESS_PATH,
    SECURITY_HEADERS,
    block_page,
    request_sent_page,
    support_for,
    warning_page,
)
from schoolgate.alerts import Alert, AlertDispatcher
from schoolgate.categories.index import CategoryHit
from schoolgate.categories.lexicon import RiskHit, RiskLexicon
from schoolgate.db import create_engine
from schoolgate.decide import Verdict
from schoolgate.engine import Engine
from schoolgate.keys import load_or_create_secret
from schoolgate.live import LiveStore
from schoolgate.policy import Action, Group, PolicyInvalid
from schoolgate.records import AccessRecord, RecordWriter, default_spool_path, new_reference, url_for_log
from schoolgate.urls import InvalidHost, Target, parse_target, target_from_parts

log = logging.getLogger("schoolgate")

PROCEED_PATH = "/.well-known/schoolgate/proceed"
# "I understand, continue" is remembered in a cookie on the warned site, signed and bound
# to the pupil, so any gateway process honours it; it is removed before requests go upstream.
ACK_COOKIE = "schoolgate_ack"
WARNING_ACKNOWLEDGED_SECONDS = 30 * 60


def fail_closed(hook):
    """A bug in a hook must not let a request through undecided (mitmproxy would
    log the error and carry on): refuse it, say so, and log the traceback."""

    @functools.wraps(hook)
    def guarded(self, flow: http.HTTPFlow):
        try:
            return hook(self, flow)
        except Exception:
            log.exception("schoolgate could not decide %s %s; refused", flow.request.method, flow.request.pretty_url)
            metrics.DECISION_ERRORS.inc()
            flow.response = http.Response.make(
                503, "The school's web filter could not check this page, so it is not shown. Please tell IT.\n",
                {"Content-Type": "text/plain; charset=utf-8"})
            return None

    return guarded


@dataclass(slots=True)
class Who:
    client_ip: str
    user: str | None
    group: Group


@dataclass(slots=True)
class Decision:
    """What the request hook decided, kept on the flow until it is recorded."""

    who: Who
    target: Target
    verdict: Verdict
    recorded_verdict: str
    rule: str
    decision_us: int
    reference: str | None = None
    recorded: bool = False
    search: SearchTerm | None = None
    search_hit: RiskHit | None = None


@dataclass(slots=True)
class Tunnel:
    """A CONNECT or TLS connection decided by name, until its handshake shows
    whether it is decrypted (then each request inside is recorded) or not."""

    who: Who
    target: Target
    verdict: Verdict
    decision_us: int
    method: str  # CONNECT (explicit proxy) or TLS (transparent mode)


class SchoolGate:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.writer: RecordWriter | None = None
        self.auth = Authenticator()
        # Users who authenticated on a CONNECT; requests inside the tunnel carry no credentials.
        self.tunnel_users: weakref.WeakKeyDictionary[connection.Client, str] = weakref.WeakKeyDictionary()
        # Tunnels awaiting their TLS handshake; a failed one (CA not trusted) is still recorded.
        self.tunnels: weakref.WeakKeyDictionary[connection.Client, Tunnel] = weakref.WeakKeyDictionary()
        self.secret = b""  # from the policy's gateway secret file, shared by all gateway processes
        self.live_store: LiveStore | None = None
        self.alerts: AlertDispatcher | None = None
        self.lexicon = RiskLexicon.default()
        self._watchers: list[asyncio.Task] = []
        self._live_failing = False
        self._refused_stamps: object = None
        self._served_metrics: tuple[str, int] | None = None

    # --- lifecycle -----------------------------------------------------------------

    def load(self, loader) -> None:
        # mitmproxy logs each client connection with its address; access data belongs in the
        # database under the retention policy, not in the service journal.
        logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
        loader.add_option("schoolgate_policy", str, "policy.toml", "Path to the school's policy file.")
        loader.add_option(
            "schoolgate_instance", str, socket.gethostname(), "Name of this gateway process in access records."
        )
        loader.add_option(
            "schoolgate_reload_ms", int, 2000, "Milliseconds between checks of the policy and list files for changes."
        )
        loader.add_option(
            "schoolgate_live_ms", int, 1000,
            "Milliseconds between checks of the database for new exceptions and list changes.",
        )
        loader.add_option(
            "schoolgate_metrics_port", int, -1,
            "Metrics port of this process, overriding the policy's (set per worker by `schoolgate run --workers`).",
        )
        loader.add_option(
            "schoolgate_spool_dir", str, "",
            "Directory for access records kept while the database is unreachable "
            "(default: beside an SQLite database, else the working directory).",
        )
        loader.add_option(
            "schoolgate_spool_max_mb", int, 1024,
            "Most megabytes of access records kept on local disk while the database is unreachable.",
        )

    def configure(self, updated: set[str]) -> None:
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            # Eager mode connects upstream as soon as a CONNECT arrives; a blocked site must never see a connection.
            log.info("schoolgate sets connection_strategy=lazy so blocked sites are never contacted")
            ctx.options.update(connection_strategy="lazy")
        if "schoolgate_policy" in updated:
            try:
                engine = Engine.load(ctx.options.schoolgate_policy, self.engine)
            except PolicyInvalid as e:
                raise exceptions.OptionsError(f"policy {ctx.options.schoolgate_policy} is invalid:\n{e}") from e
            except (OSError, ValueError) as e:
                raise exceptions.OptionsError(f"cannot load policy {ctx.options.schoolgate_policy}: {e}") from e
            self._install(engine)
            if not self.secret:
                assert engine.policy.gateway_secret_file is not None
                self.secret = load_or_create_secret(engine.policy.gateway_secret_file)
            if self.writer is None:
                spool_dir = Path(ctx.options.schoolgate_spool_dir) if ctx.options.schoolgate_spool_dir else None
                self.writer = RecordWriter(
                    engine.policy.database_url,
                    spool_path=default_spool_path(engine.policy.database_url, ctx.options.schoolgate_instance, spool_dir),
                    max_spool_bytes=ctx.options.schoolgate_spool_max_mb << 20,
                )
                self.live_store = LiveStore(create_engine(engine.policy.database_url))
                if engine.policy.alerts is not None:
                    self.alerts = AlertDispatcher(engine.policy.alerts)
            self._serve_metrics(engine)

    async def running(self) -> None:
        assert self.writer is not None
        await self.writer.start()  # also brings the schema up to date
        await self._refresh_live()
        if self.alerts is not None:
            self.alerts.start()
        self._watchers = [asyncio.create_task(self._watch_policy()), asyncio.create_task(self._watch_live())]
        assert self.engine is not None
        log.info(
            "schoolgate enforcing %s: %d groups, %d category entries, %d local entries",
            self.engine.policy.path, len(self.engine.policy.groups), self.engine.index.entry_count, len(self.engine.policy.local),
        )

    async def done(self) -> None:
        for task in self._watchers:
            task.cancel()
        if self.writer:
            await self.writer.close()
        if self.alerts:
            await self.alerts.close()
        if self.live_store:
            await self.live_store.engine.dispose()

    def _install(self, engine: Engine) -> None:
        if self.engine is not None and engine.policy.database_url != self.engine.policy.database_url:
            log.warning("the database setting changed; it takes effect when the gateway restarts")
        if self.engine is not None and engine.policy.alerts != self.engine.policy.alerts:
            log.warning("the [alerts] settings changed; they take effect when the gateway restarts")
        self.engine = engine
        self._refused_stamps = None
        metrics.POLICY_RELOADS.labels("ok").inc()
        metrics.POLICY_VALID.set(1)
        metrics.POLICY_LOADED_AT.set(time.time())
        for category, count in engine.index.sizes().items():
            metrics.LIST_ENTRIES.labels(category).set(count)
        for action in (Action.ALLOW, Action.BLOCK):
            metrics.LIST_ENTRIES.labels(f"local-{action.value}").set(sum(e.action is action for e in engine.policy.local))

    def _serve_metrics(self, engine: Engine) -> None:
        port = ctx.options.schoolgate_metrics_port
        wanted = (engine.policy.metrics_address, port if port >= 0 else engine.policy.metrics_port)
        if self._served_metrics is not None:
            if wanted != self._served_metrics:
                log.warning("the metrics address changed; it takes effect when the gateway restarts")
            return
        if wanted[1]:
            try:
                metrics.serve(*wanted)
            except OSError as e:
                raise exceptions.OptionsError(f"cannot serve metrics on {wanted[0]}:{wanted[1]}: {e}") from e
        self._served_metrics = wanted

    async def _watch_policy(self) -> None:
        """Reload when the policy, its list files or the index change; a broken edit
        is refused and the last good policy keeps serving."""
        while True:
            await asyncio.sleep(ctx.options.schoolgate_reload_ms / 1000)
            engine = self.engine
            if engine is None or not engine.changed_on_disk():
                continue
            stamps = [p.stat().st_mtime_ns if p.exists() else None for p, _ in engine.stamps]
            if stamps == self._refused_stamps:
                continue
            try:
                new = await asyncio.to_thread(Engine.load, engine.policy.path, engine)
            except (PolicyInvalid, OSError, ValueError) as e:
                self._refused_stamps = stamps
                metrics.POLICY_RELOADS.labels("failed").inc()
                metrics.POLICY_VALID.set(0)
                log.error("policy change refused, still enforcing the policy loaded earlier:\n%s", e)
                continue
            self._install(new)
            log.info("policy reloaded from %s", new.policy.path)

    async def _watch_live(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.schoolgate_live_ms / 1000)
            await self._refresh_live()

    async def _refresh_live(self) -> None:
        """Pick up exceptions and list changes made by any console, CLI or gateway.
        While the database is unreachable the last known state keeps applying."""
        assert self.live_store is not None and self.engine is not None
        try:
            if await self.live_store.version() == self.engine.live.version:
                return
            live = await self.live_store.load()
        except Exception as e:  # the database being down must not stop filtering
            if not self._live_failing:
                log.error("cannot read exceptions from the database (%s); the last known ones still apply", e)
            self._live_failing = True
            return
        if self._live_failing:
            log.info("reading exceptions from the database again")
        self._live_failing = False
        self.engine = self.engine.with_live(live)
        log.info("live policy version %d: %d exceptions, %d managed list entries",
                 live.version, len(live.grants), len(live.entries))

    # --- identity -------------------------------------------------------------------

    def _identify(self, flow: http.HTTPFlow) -> Who | None:
        """The client and user; answers 407 itself (and returns None) when a login is needed."""
        assert self.engine is not None
        policy = self.engine.policy
        client_ip = client_address(flow.client_conn.peername)
        user = self.tunnel_users.get(flow.client_conn)
        header = flow.request.headers.get("Proxy-Authorization")
        if header is not None:
            del flow.request.headers["Proxy-Authorization"]  # never forwarded upstream
            if policy.htpasswd is not None:
                try:
                    user = self.auth.check(policy.htpasswd, header)
                except (BadCredentials, OSError, ValueError) as e:
                    log.info("proxy login refused from %s: %s", client_ip, e)
                    flow.response = _login_required()
                    return None
        group, _ = policy.group_for(client_ip, user)
        if group.require_auth and user is None:
            flow.response = _login_required()
            return None
        return Who(client_ip, user, group)

    # --- CONNECT and TLS ------------------------------------------------------------

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        who = self._identify(flow)
        if who is None:
            return
        if who.user:
            self.tunnel_users[flow.client_conn] = who.user
        try:
            target = target_from_parts("https", flow.request.host, flow.request.port, "/")
        except InvalidHost as e:
            flow.response = http.Response.make(400, f"schoolgate: {e}\n", {"Content-Type": "text/plain"})
            return
        assert self.engine is not None
        target, verdict, decision_us = self._decide(who, target)
        if verdict.action is Action.BLOCK and not self.engine.policy.intercepts(target.host, set(verdict.categories)):
            # Without interception there is no page to show: refuse the tunnel itself.
            reference = new_reference()
            flow.response = http.Response.make(
                403,
                f"Blocked by the school's web filter: {verdict.reason}. Reference {reference}\n",
                {"Content-Type": "text/plain; charset=utf-8", "X-Schoolgate-Reference": reference},
            )
            self._write(who, target, "CONNECT", verdict, "block", verdict.rule_text, reference, 403, None, None, decision_us)
            return
        self.tunnels[flow.client_conn] = Tunnel(who, target, verdict, decision_us, "CONNECT")

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Decide by the TLS server name (the only name there is in transparent mode, and
        one a client could set apart from its CONNECT), then decrypt or pass through."""
        assert self.engine is not None
        client = data.context.client
        tunnel = self.tunnels.get(client)
        address = data.context.server.address
        names = [n for n in (data.client_hello.sni, address[0] if address else None) if n]
        if not names:
            return
        try:
            candidates = [target_from_parts("https", name, address[1] if address else 443, "/") for name in dict.fromkeys(names)]
        except InvalidHost:
            return  # mitmproxy decrypts by default, so the request hook still decides
        if tunnel is not None:  # the CONNECT name is the server address, already a candidate
            who, method = tunnel.who, tunnel.method
        else:
            client_ip = client_address(client.peername)
            who, method = Who(client_ip, None, self.engine.policy.group_for(client_ip, None)[0]), "TLS"
        target, verdict, decision_us = self._decide(who, *candidates)
        # A blocked name is always decrypted: the pupil sees the block page (or, on a
        # device without the school CA, a failed handshake), never the site.
        if verdict.action is Action.BLOCK or self.engine.policy.intercepts(target.host, set(verdict.categories)):
            self.tunnels[client] = Tunnel(who, target, verdict, decision_us, method)
            return
        data.ignore_connection = True
        self.tunnels.pop(client, None)
        note = " (not decrypted: the warning page could not be shown)" if verdict.action is Action.WARN else ""
        self._write(who, target, method, verdict, verdict.action.value, verdict.rule_text + note, None, None, None, None, decision_us)

    def tls_established_client(self, data: tls.TlsData) -> None:
        self.tunnels.pop(data.context.client, None)

    def tls_failed_client(self, data: tls.TlsData) -> None:
        tunnel = self.tunnels.pop(data.context.client, None)
        if tunnel is None:
            return
        rule = tunnel.verdict.rule_text + " (TLS interception failed: does this device trust the school certificate?)"
        self._write(tunnel.who, tunnel.target, tunnel.method, tunnel.verdict, tunnel.verdict.action.value, rule,
                    None, None, None, None, tunnel.decision_us)

    # --- HTTP -----------------------------------------------------------------------

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or not flow.live:
            return
        who = self._identify(flow)
        if who is None:
            return
        request = flow.request
        try:
            # Where the request goes (request.host) and what it asks for (the Host header)
            # can differ; both are decided and the stricter verdict stands, so a Host
            # header cannot front for a blocked server, nor the other way round.
            targets = [target_from_parts(request.scheme, name, request.port, request.path)
                       for name in dict.fromkeys((request.pretty_host, request.host))]
        except InvalidHost as e:
            flow.response = http.Response.make(400, f"schoolgate: {e}\n", {"Content-Type": "text/plain"})
            return
        if targets[0].path == PROCEED_PATH:
            self._proceed(flow, who, targets[0])
            return
        if targets[0].path == REQUEST_ACCESS_PATH and request.method == "POST":
            return self._request_access(flow, who)  # awaited by mitmproxy: it writes to the database
        acknowledgement = request.cookies.get(ACK_COOKIE)
        if acknowledgement is not None:
            del request.cookies[ACK_COOKIE]  # ours, not the site's
        search, search_hit = self._search(request, targets[0])
        seen_as = (_DOH_BY_SHAPE,) if is_doh_request(
            request.method, targets[0], request.headers.get("content-type"), request.headers.get("accept")) else ()
        target, verdict, decision_us = self._decide(who, *targets, search_hit=search_hit, seen_as=seen_as)
        decision = Decision(who, target, verdict, verdict.action.value, verdict.rule_text, decision_us,
                            search=search, search_hit=search_hit)
        flow.metadata["schoolgate"] = decision
        if verdict.action is Action.BLOCK:
            flow.response = self._block_page(flow, decision)
        elif verdict.action is Action.WARN and not self._acknowledged(decision, acknowledgement):
            flow.response = self._warning_page(flow, decision)
        elif who.group.safe_search:
            _enforce_safe_search(request, target)

    def _search(self, request: http.Request, target: Target) -> tuple[SearchTerm | None, RiskHit | None]:
        """A search typed into the site, and the worst risk phrase in it."""
        assert self.engine is not None
        if not self.engine.policy.search_terms:
            return None, None
        search = extract_search(target)
        if search is None and request.method == "POST":
            search = extract_search_from_body(target, request.headers.get("content-type"), request.raw_content or b"")
        return search, (self.lexicon.worst(search.query) if search else None)

    def _block_page(self, flow: http.HTTPFlow, decision: Decision) -> http.Response:
        assert self.engine is not None
        policy, verdict, who = self.engine.policy, decision.verdict, decision.who
        decision.reference = reference = new_reference()
        url = flow.request.pretty_url
        risk = decision.search_hit.risk if decision.search_hit else ("self-harm" if "self-harm" in verdict.categories else None)
        page = block_page(
            school=policy.school_name, contact=policy.contact, url=url, categories=verdict.categories,
            reason=verdict.reason, when=datetime.now(UTC), reference=reference,
            # A blocked search about self-harm calls for help, not for a form asking to see the results.
            request_fields=None if verdict.rule == "search-term" else
            {"url": url, "ref": reference, "sig": self._sign(who, "request", url, reference)},
            support=support_for(risk),
        )
        return http.Response.make(403, page, _page_headers("block", reference))

    def _acknowledged(self, decision: Decision, cookie: str | None) -> bool:
        """Whether this pupil chose to continue past this site's warning lately (then it is allowed)."""
        expires, _, sig = (cookie or "").partition(".")
        if not (expires.isdigit() and int(expires) > time.time()):
            return False
        if not hmac.compare_digest(sig, self._sign(decision.who, "ack", decision.target.host, expires)):
            return False
        decision.recorded_verdict = Action.ALLOW.value
        decision.rule = "warning-acknowledged " + decision.verdict.rule_text
        return True

    def _warning_page(self, flow: http.HTTPFlow, decision: Decision) -> http.Response:
        assert self.engine is not None
        policy, verdict = self.engine.policy, decision.verdict
        decision.reference = reference = new_reference()
        url = flow.request.pretty_url
        page = warning_page(
            school=policy.school_name, contact=policy.contact, url=url, categories=verdict.categories,
            reason=verdict.reason, when=datetime.now(UTC), reference=reference,
            proceed_href=self._proceed_link(decision.who, decision.target, url),
        )
        return http.Response.make(403, page, _page_headers("warn", reference))

    def response(self, flow: http.HTTPFlow) -> None:
        self._record_flow(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._record_flow(flow)

    # --- warnings -------------------------------------------------------------------

    def _sign(self, who: Who, *parts: object) -> str:
        """A signature binding a link or form to this client, so another page cannot forge it."""
        message = "\0".join(map(str, (who.client_ip, who.user, *parts))).encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:32]

    def _proceed_link(self, who: Who, target: Target, url: str) -> str:
        expires = int(time.time()) + 15 * 60  # the page itself stays usable for a lesson-sized while
        query = urlencode({"to": url, "exp": expires, "sig": self._sign(who, "proceed", target.host, expires)})
        return f"{PROCEED_PATH}?{query}"

    def _proceed(self, flow: http.HTTPFlow, who: Who, here: Target) -> None:
        """'I understand, continue': check the signature, remember, record, and redirect."""
        args = parse_qs(here.query)
        to, expires, sig = (args.get(k, [""])[0] for k in ("to", "exp", "sig"))
        try:
            destination = parse_target(to)
            valid = (
                destination.host == here.host
                and expires.isdigit()
                and int(expires) > time.time()
                and hmac.compare_digest(sig, self._sign(who, "proceed", here.host, int(expires)))
            )
        except InvalidHost:
            valid = False
        if not valid:
            flow.response = http.Response.make(400, "This link has expired. Go back and try again.\n", {"Content-Type": "text/plain"})
            return
        assert self.engine is not None
        destination, verdict, decision_us = self._decide(who, destination)
        until = str(int(time.time()) + WARNING_ACKNOWLEDGED_SECONDS)
        cookie = (f"{ACK_COOKIE}={until}.{self._sign(who, 'ack', here.host, until)}; Path=/; "
                  f"Max-Age={WARNING_ACKNOWLEDGED_SECONDS}; HttpOnly; SameSite=Lax"
                  + ("; Secure" if here.scheme == "https" else ""))
        flow.metadata["schoolgate"] = Decision(who, destination, verdict, "proceed", verdict.rule_text, decision_us)
        flow.response = http.Response.make(303, b"", {"Location": to, "Cache-Control": "no-store", "Set-Cookie": cookie})

    async def _request_access(self, flow: http.HTTPFlow, who: Who) -> None:
        """The block page's "ask for access" form: store the request for a teacher or IT."""
        form = flow.request.urlencoded_form
        url, reference, sig = form.get("url", ""), form.get("ref", ""), form.get("sig", "")
        reason = form.get("reason", "").strip()
        if not hmac.compare_digest(sig, self._sign(who, "request", url, reference)) or not reason:
            flow.response = http.Response.make(400, "Go back to the block page and try again.\n", {"Content-Type": "text/plain"})
            return
        assert self.engine is not None and self.live_store is not None
        try:
            target = parse_target(url)
            categories = tuple(sorted(self.engine.listed_categories(target)))
            await self.live_store.create_request(
                ref=reference, client_ip=who.client_ip, username=who.user, group=who.group.name,
                url=url, host=target.host, categories=categories, reason=reason,
            )
        except InvalidHost:
            flow.response = http.Response.make(400, "Go back to the block page and try again.\n", {"Content-Type": "text/plain"})
            return
        except Exception as e:  # the request must not vanish without the pupil knowing
            log.error("could not store an access request (%s)", e)
            flow.response = http.Response.make(
                503, "Your request could not be sent. Please tell your teacher.\n", {"Content-Type": "text/plain"})
            return
        policy = self.engine.policy
        page = request_sent_page(school=policy.school_name, contact=policy.contact, url=url,
                                 categories=categories, when=datetime.now(UTC), reference=reference)
        flow.response = http.Response.make(200, page, SECURITY_HEADERS)

    # --- deciding and recording -----------------------------------------------------

    def _decide(self, who: Who, *targets: Target, search_hit: RiskHit | None = None,
                seen_as: tuple[CategoryHit, ...] = ()) -> tuple[Target, Verdict, int]:
        """The strictest verdict over the given names of one request (the first wins ties)."""
        assert self.engine is not None
        started = time.perf_counter()
        decided = [(target, self.engine.decide(target, who.group, user=who.user, client_ip=who.client_ip,
                                               search_hit=search_hit, seen_as=seen_as))
                   for target in targets]
        target, verdict = max(decided, key=lambda pair: pair[1].action.strictness)
        elapsed = time.perf_counter() - started
        metrics.DECISION_SECONDS.observe(elapsed)
        return target, verdict, int(elapsed * 1_000_000)

    def _record_flow(self, flow: http.HTTPFlow) -> None:
        decision: Decision | None = flow.metadata.get("schoolgate")
        if decision is None or decision.recorded:
            return
        decision.recorded = True
        response = flow.response
        self._write(
            decision.who, decision.target, flow.request.method, decision.verdict, decision.recorded_verdict, decision.rule,
            decision.reference, response.status_code if response else None,
            len(flow.request.raw_content or b""),
            len(response.raw_content) if response is not None and response.raw_content is not None else None,
            decision.decision_us, search=decision.search, search_hit=decision.search_hit,
        )

    def _write(self, who: Who, target: Target, method: str, verdict: Verdict, recorded_verdict: str, rule: str,
               reference: str | None, status: int | None, bytes_in: int | None, bytes_out: int | None,
               decision_us: int | None, *, search: SearchTerm | None = None, search_hit: RiskHit | None = None) -> None:
        assert self.engine is not None and self.writer is not None
        policy = self.engine.policy
        flag = flags.assess(verdict.categories, search_hit, ip_literal=verdict.rule == "ip-literal",
                            minimum=policy.flag_min_severity)
        if flag is not None and reference is None:
            reference = new_reference()  # every flagged record can be opened by reference from an alert
        ts = datetime.now(UTC)
        category = verdict.matched.split(":", 1)[0] if verdict.rule == "category" else ("local" if verdict.rule.startswith("local") else "none")
        metrics.REQUESTS.labels(who.group.name, recorded_verdict, category).inc()
        self.writer.submit(
            AccessRecord(
                ts=ts,
                instance=ctx.options.schoolgate_instance,
                seq=0,
                client_ip=who.client_ip,
                user=who.user,
                group=who.group.name,
                method=method,
                scheme=target.scheme,
                host=target.host,
                port=target.port,
                url=url_for_log(target.url(), target.scheme, target.host, target.port, policy.log_urls),
                categories=verdict.categories,
                verdict=recorded_verdict,
                rule=rule,
                reason=verdict.reason,
                status=status,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                ref=reference,
                decision_us=decision_us,
                search_engine=search.engine if search else None,
                search_term=search.query if search else None,
                flag=flag.risk if flag else None,
                flag_severity=int(flag.severity) if flag else None,
                flag_detail=flag.detail if flag else None,
            )
        )
        if flag is not None and self.alerts is not None and reference is not None:
            self.alerts.submit(Alert(
                record_ref=reference, time=ts, risk=flag.risk, severity=flag.severity, group=who.group.name,
                user_key=who.user or who.client_ip,
                summary=f"{flags.risk_title(flag.risk)}: {'a search' if search_hit else 'a site visit'} "
                        f"({recorded_verdict}) in group {who.group.title}",
            ))


def _page_headers(verdict: str, reference: str) -> dict[str, str]:
    return {**SECURITY_HEADERS, "X-Schoolgate-Verdict": verdict, "X-Schoolgate-Reference": reference}


def _login_required() -> http.Response:
    return http.Response.make(
        407,
        "Please log in to use the school's internet.\n",
        {"Proxy-Authenticate": 'Basic realm="schoolgate"', "Content-Type": "text/plain; charset=utf-8"},
    )


# A DNS-over-HTTPS query is treated as category doh whatever server it goes to.
_DOH_BY_SHAPE = CategoryHit("doh", "a DNS-over-HTTPS request")


def _enforce_safe_search(request: http.Request, target: Target) -> None:
    """Rewrite the request as each service documents for networks that enforce SafeSearch."""
    change = enforce(target)
    if change is None:
        return
    if change.set_query:
        path, _, query = request.path.partition("?")
        request.path = f"{path}?{apply_query(query, change.set_query)}"
    for name, value in change.set_headers.items():
        request.headers[name] = value
