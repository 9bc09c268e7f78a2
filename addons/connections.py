"""Every connection decided, not just HTTP requests: CONNECT tunnels, TLS handshakes,
bytes that are neither HTTP nor TLS (raw TCP), UDP, DNS, and the upstream
connection itself (a name that resolves to the gateway's own machine).

A CONNECT or TLS connection is decided by name and its Decision kept per client
connection until the handshake shows what it carries: decrypted (each request
inside is then decided and recorded by the request hook), passed through
undecrypted (recorded here), failed (recorded here), or raw bytes (decided again
as a raw tunnel, refused for groups without `raw_tunnels = "allow"`, recorded by
the Recorder with bytes and duration when the connection ends).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import replace

from mitmproxy import connection, ctx, dns, http, tcp, tls, udp
from mitmproxy.connection import ConnectionState
from mitmproxy.net.dns import response_codes
from mitmproxy.proxy import commands, events, layer, layers, mode_specs, server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.tls import parse_client_hello

from schoolgate import metrics
from schoolgate.addons.decision import REFUSED_UPSTREAM, Decision, Kind, Who, attach
from schoolgate.addons.embedded import decided_targets
from schoolgate.addons.identify import Identification
from schoolgate.addons.judge import Judge
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.recorder import Recorder
from schoolgate.addons.responses import connect_refused, fail_closed, refuse, text
from schoolgate.addons.upstream import to_upstream_proxy
from schoolgate.decrypt import decryption
from schoolgate.policy import Action
from schoolgate.urls import InvalidHost, Target, target_from_parts

log = logging.getLogger("schoolgate")

RESOLVE_TIMEOUT = 5.0
# How often a connection relayed undecrypted is decided again while it carries data: it ends
# when the policy in force, an exception running out or the group's timetable no longer lets it
# pass, rather than living on for as long as the pupil keeps it busy.
RECHECK_SECONDS = 5.0
_RECHECK_AT, _CUT = "schoolgate_recheck_at", "schoolgate_cut"  # a raw flow's metadata
NO_LONGER_ALLOWED = "no longer allowed"


class Connections:
    def __init__(self, policy: PolicyWatch, identification: Identification, judge: Judge, recorder: Recorder) -> None:
        self.policy = policy
        self.identification = identification
        self.judge = judge
        self.recorder = recorder
        # The decision on each client connection's CONNECT or TLS name, until its handshake is over.
        self.tunnels: weakref.WeakKeyDictionary[connection.Client, Decision] = weakref.WeakKeyDictionary()
        # TLS decided in relay_undecrypted to be decrypted, for tls_clienthello; connections relayed undecrypted.
        self.hellos: weakref.WeakKeyDictionary[connection.Client, Decision] = weakref.WeakKeyDictionary()
        self.relays: weakref.WeakKeyDictionary[connection.Client, Passthrough] = weakref.WeakKeyDictionary()

    def configure(self, updated: set[str]) -> None:
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            # Eager mode connects upstream as soon as a CONNECT arrives; a blocked site must never see a connection.
            log.info("schoolgate sets connection_strategy=lazy so blocked sites are never contacted")
            ctx.options.update(connection_strategy="lazy")

    # --- CONNECT and TLS -----------------------------------------------------------

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        who = await self.identification.identify(flow)
        if who is None:
            return
        try:
            target = target_from_parts("https", flow.request.host, flow.request.port, "/")
        except InvalidHost as e:
            flow.response = text(400, f"schoolgate: {e}\n")
            return
        targets, shape = decided_targets(target)  # a name can carry a site (www-x-com.translate.goog, 1-2-3-4.sslip.io)
        decision = self.judge.decide(who, *targets, method="CONNECT", kind=Kind.TUNNEL, seen_as=shape,
                                     gateway_address=_gateway_address(flow.client_conn))
        assert self.policy.engine is not None
        if decision.refused and not self._intercepts(decision):
            flow.response = connect_refused(decision)
            self.recorder.record(decision, status=403)
            return
        self.tunnels[flow.client_conn] = decision

    def load(self, loader) -> None:
        # mitmproxy asks script add-ons before its own NextLayer, which picks the TLS layers that
        # `relay_undecrypted` may replace (and can wait for the rest of a ClientHello only once
        # they are picked): so that hook goes at the end of mitmproxy's chain, after NextLayer.
        if ctx.master.addons.get(_AfterNextLayer.name) is None:
            ctx.master.addons.add(_AfterNextLayer(self.relay_undecrypted))

    @fail_closed
    def relay_undecrypted(self, nextlayer: layer.NextLayer) -> None:
        """A TLS connection that need not be decrypted is handed to a plain relay here, before
        any TLS layer runs: decided by name (CONNECT and TLS server name), relayed without
        a hook per chunk, and recorded with its bytes and duration when it closes. Anything
        else (a blocked name, one that needs decrypting, a ClientHello that does not parse)
        keeps mitmproxy's TLS layers and `tls_clienthello` below."""
        chosen = nextlayer.layer
        if not (isinstance(chosen, layers.ServerTLSLayer) and isinstance(chosen.child_layer, layers.ClientTLSLayer)
                and nextlayer.context.client.transport_protocol == "tcp"):
            return
        try:
            hello = parse_client_hello(nextlayer.data_client())
        except ValueError:
            return  # not a ClientHello mitmproxy can read either: its TLS layer fails it and says so
        if hello is None:
            nextlayer.layer = None  # the rest of the ClientHello is still on its way: asked again with more data
            return
        context = nextlayer.context
        decision = self._decide_hello(context.client, context.server.address, hello.sni)
        if decision is None or decision.refused or self._decrypts(decision):
            if decision is not None:
                self.hellos[context.client] = decision
            return
        self.tunnels.pop(context.client, None)
        address, sni = context.server.address, hello.sni
        relay = Passthrough(context, decision, self._passed_through,
                            still_open=lambda: self._still_passes(context.client, address, sni, decision.method))
        self.relays[context.client] = relay
        nextlayer.layer = relay

    @fail_closed
    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Decide by the TLS server name (the only name there is in transparent mode, and
        one a client could set apart from its CONNECT), then decrypt or pass through.
        A blocked name is always decrypted: the pupil sees the block page (or, on a device
        without the school CA, a failed handshake), never the site. Usually `relay_undecrypted`
        has decided already; a connection it could not hand to a relay is passed through here,
        recorded by name without its bytes."""
        client = data.context.client
        decided = self.hellos.pop(client, None)
        if decided is not None:  # in relay_undecrypted, to be decrypted
            self.tunnels[client] = decided
            return
        decision = self._decide_hello(client, data.context.server.address, data.client_hello.sni)
        if decision is None:
            return  # mitmproxy decrypts by default, so the request hook still decides
        if decision.refused or self._decrypts(decision):
            self.tunnels[client] = decision
            return
        data.ignore_connection = True
        self.tunnels.pop(client, None)
        self.recorder.record(decision)

    def _decide_hello(self, client: connection.Client, address: connection.Address | None,
                      sni: str | None) -> Decision | None:
        """The decision on a TLS connection's names (its server name, and where it goes), in
        the light of its CONNECT; None when it names nothing a decision can be made on."""
        tunnel = self.tunnels.get(client)
        who = tunnel.who if tunnel is not None else self.identification.by_address(client)
        return self._decide_names(who, tunnel.method if tunnel else "TLS", client, address, sni)

    def _decide_names(self, who: Who, method: str, client: connection.Client,
                      address: connection.Address | None, sni: str | None) -> Decision | None:
        names = [n for n in (sni, address[0] if address else None) if n]
        if not names:
            return None
        port = address[1] if address else 443
        try:
            candidates = [target_from_parts("https", name, port, "/") for name in dict.fromkeys(names)]
        except InvalidHost:
            return None
        candidates, shape = decided_targets(*candidates)
        return self.judge.decide(who, *candidates, method=method, kind=Kind.TUNNEL,
                                 seen_as=shape, gateway_address=_gateway_address(client))

    def _still_passes(self, client: connection.Client, address: connection.Address | None,
                      sni: str | None, method: str) -> str | None:
        """Why a connection relayed undecrypted may not go on, decided again on the same names for
        whoever is at that address now; None while it may. What cannot be decided is cut (it runs
        inside the relay, where an exception would only drop one chunk and let the next through)."""
        try:
            again = self._decide_names(self.identification.by_address(client), method, client, address, sni)
            if self._refused_now(again):
                return NO_LONGER_ALLOWED
            if again is not None and self._needs_decrypting(again):
                return "its pages now need looking into, so the next connection is decrypted"
        except Exception:
            log.exception("an open connection could not be decided again, so it is cut")
            return "it could not be decided again"
        return None

    def _refused_now(self, again: Decision | None) -> bool:
        """Whether an open connection, decided again, is refused now; a refusal is recorded as an attempt."""
        if again is None or not again.refused:
            return False
        again.note = "an open connection, cut: the policy in force no longer allows it"
        self.recorder.record(again)
        return True

    def _decrypts(self, decision: Decision) -> bool:
        """Whether this TLS connection is decrypted; one that is not says so in its record."""
        if self._needs_decrypting(decision):
            metrics.TLS_CONNECTIONS.labels("decrypted").inc()
            return True
        metrics.TLS_CONNECTIONS.labels("passed-through").inc()
        warned = decision.verdict.action is Action.WARN  # only where [tls] never decrypts it
        decision.note = "not decrypted: the warning page could not be shown" if warned else "not decrypted"
        return False

    def _needs_decrypting(self, decision: Decision) -> bool:
        engine = self.policy.engine
        assert engine is not None
        who = decision.who
        return decryption(engine, decision.target.host, who.group, decision.verdict,
                          user=who.user, client_ip=who.client_ip).decrypt

    def _passed_through(self, relay: Passthrough) -> None:
        """A relayed connection is over (or could not be opened): its record, with what crossed it."""
        self.relays.pop(relay.context.client, None)
        decision, error = relay.decision, relay.context.server.error
        if error and REFUSED_UPSTREAM in error:
            decision.block(replace(decision.verdict, action=Action.BLOCK), error.split(": ", 1)[-1])
        elif error:
            decision.note += f"; the site could not be reached: {error}"
        self.recorder.record(decision, bytes_in=relay.sent, bytes_out=relay.received)

    def client_disconnected(self, client: connection.Client) -> None:
        relay = self.relays.get(client)
        if relay is not None:  # closed before its relay saw both ends close
            self._passed_through(relay)
        tunnel = self.tunnels.pop(client, None)
        if tunnel is not None and not tunnel.recorded:
            # Closed before anything inside was decided (a ClientHello cut short, nothing sent):
            # the CONNECT is still an attempt, and a refused one must be on record.
            tunnel.note = "closed before its TLS handshake or any byte was relayed"
            self.recorder.record(tunnel)

    def tls_established_client(self, data: tls.TlsData) -> None:
        tunnel = self.tunnels.get(data.context.client)
        if tunnel is not None:
            tunnel.recorded = True  # decrypted: each request inside is decided and recorded on its own

    def tls_failed_client(self, data: tls.TlsData) -> None:
        tunnel = self.tunnels.pop(data.context.client, None)
        if tunnel is not None:
            tunnel.note = "TLS interception failed: does this device trust the school certificate?"
            self.recorder.record(tunnel)

    def _intercepts(self, decision: Decision) -> bool:  # whether it may be decrypted at all ([tls])
        assert self.policy.engine is not None
        return self.policy.engine.policy.intercepts(decision.target.host, set(decision.verdict.categories))

    # --- what is neither HTTP nor TLS ------------------------------------------------

    @fail_closed
    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._raw(flow, "tcp")

    @fail_closed
    def udp_start(self, flow: udp.UDPFlow) -> None:
        self._raw(flow, "udp")

    def _raw(self, flow: tcp.TCPFlow | udp.UDPFlow, scheme: str) -> None:
        """Raw bytes through a tunnel or a transparent connection: the destination, and
        whether this group may carry anything but the web at all."""
        tunnel = self.tunnels.get(flow.client_conn)
        if tunnel is not None:
            tunnel.recorded = True  # the raw flow's own decision, below, is its record
        who = tunnel.who if tunnel is not None else self.identification.by_address(flow.client_conn)
        decision = attach(flow, self._decide_raw(flow, scheme, who))
        if decision.refused:
            refuse(flow, decision.verdict.reason)

    def _decide_raw(self, flow: tcp.TCPFlow | udp.UDPFlow, scheme: str, who: Who) -> Decision:
        """The decision on a raw flow's names: its tunnel's, and where it goes."""
        tunnel = self.tunnels.get(flow.client_conn)
        targets = [_as(scheme, tunnel.target)] if tunnel is not None else []
        if flow.server_conn.address:
            host, port = flow.server_conn.address[:2]
            targets.append(target_from_parts(scheme, host, port, "/"))
        if not targets:
            raise ValueError("a connection with no destination")  # refused by fail_closed
        return self.judge.decide(who, *dict.fromkeys(targets),
                                 method=scheme.upper(), kind=Kind(scheme), web=False,
                                 gateway_address=_gateway_address(flow.client_conn))

    @fail_closed
    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        self._recheck_raw(flow, "tcp")
        self._drop_if_refused(flow)

    @fail_closed
    def udp_message(self, flow: udp.UDPFlow) -> None:
        self._recheck_raw(flow, "udp")
        self._drop_if_refused(flow)

    def _recheck_raw(self, flow: tcp.TCPFlow | udp.UDPFlow, scheme: str) -> None:
        """Raw bytes are decided again every RECHECK_SECONDS, as a relayed TLS connection is:
        once the policy no longer lets them through, nothing more crosses (mitmproxy cannot
        close a raw flow from a hook; the idle timeout ends it)."""
        decision = flow.metadata.get("schoolgate")
        if decision is None or decision.refused or flow.metadata.get(_CUT):
            return
        now = time.monotonic()
        if now < flow.metadata.setdefault(_RECHECK_AT, decision.started + RECHECK_SECONDS):
            return
        flow.metadata[_RECHECK_AT] = now + RECHECK_SECONDS
        if self._refused_now(self._decide_raw(flow, scheme, self.identification.by_address(flow.client_conn))):
            flow.metadata[_CUT] = True
            _note_cut(decision, NO_LONGER_ALLOWED)

    @staticmethod
    def _drop_if_refused(flow: tcp.TCPFlow | udp.UDPFlow) -> None:
        """A refused connection is never opened; should one be open anyway, or one cut since,
        nothing crosses it."""
        decision = flow.metadata.get("schoolgate")
        if decision is None or decision.refused or flow.metadata.get(_CUT):
            flow.messages[-1].content = b""

    @fail_closed
    def dns_request(self, flow: dns.DNSFlow) -> None:
        """A DNS query (transparent, WireGuard or DNS mode) for a name the group may not
        reach is answered NXDOMAIN and recorded; allowed lookups are not recorded (the
        connection that follows is)."""
        who = self.identification.by_address(flow.client_conn)
        targets: list[Target] = []
        for question in flow.request.questions:
            try:
                targets.append(target_from_parts("https", question.name, 443, "/"))
            except InvalidHost:
                continue
        if not targets:
            return
        decision = self.judge.decide(who, *targets, method="DNS", kind=Kind.DNS,
                                     gateway_address=_gateway_address(flow.client_conn))
        if decision.refused:
            attach(flow, decision)
            flow.response = flow.request.fail(response_codes.NXDOMAIN)

    # --- the connection upstream --------------------------------------------------------

    @fail_closed
    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """A name that resolves to the gateway's own machine (loopback, link-local, its
        own addresses) is not a destination: refused before any connection, and recorded.
        Otherwise the connection goes to the address checked, not to a second lookup's
        answer (DNS rebinding). Runs before add-ons that redirect connections, so it sees
        the address asked for. The upstream proxy a chained gateway goes through is no
        destination: it is the school's own setting, and the sites behind it are decided by name."""
        if data.server.error or not data.server.address or to_upstream_proxy(data.client, data.server):
            return
        host, port = data.server.address[:2]
        back_office = self.judge.back_office()
        gateway_address = _gateway_address(data.client)
        try:
            resolved = [host] if back_office.internal(host, port, gateway_address) else await _resolve(host, port)
        except Exception:  # unresolvable: mitmproxy's own connect fails and says so
            return
        if not any(back_office.internal(address, port, gateway_address) for address in resolved):
            data.server.address = (resolved[0], port)
            return
        data.server.error = f"{REFUSED_UPSTREAM}: the gateway's own machine is not a destination"
        try:
            target = target_from_parts("https" if data.server.tls else "tcp", host, port, "/")
        except InvalidHost:
            return
        who = self.tunnels[data.client].who if data.client in self.tunnels else self.identification.by_address(data.client)
        decision = Decision(who, target, back_office.verdict(target, who.group), "CONNECT", Kind.TUNNEL,
                            note=f"{host} resolves to the gateway's own machine or network")
        self.recorder.record(decision)


async def _resolve(host: str, port: int) -> list[str]:
    """The addresses of `host`, in the resolver's order of preference."""
    infos = await asyncio.wait_for(
        asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _gateway_address(client: connection.Client) -> str | None:
    """The address this client reached the gateway at. Through a WireGuard tunnel (or the
    local redirector) `sockname` is the destination the device asked for, not the gateway."""
    if not client.sockname or isinstance(client.proxy_mode, (mode_specs.WireGuardMode, mode_specs.LocalMode)):
        return None
    return client.sockname[0]


class _AfterNextLayer:
    name = "schoolgate-tls-relay"

    def __init__(self, hook: Callable[[layer.NextLayer], None]) -> None:
        self.next_layer = hook


class Passthrough(layers.TCPLayer):
    """A TLS connection relayed undecrypted, as mitmproxy relays an ignored connection (no
    flow, no hook per chunk), counting the bytes each way; `done` is called once when
    both ends have closed or the site could not be reached."""

    def __init__(self, context: Context, decision: Decision, done: Callable[[Passthrough], None], *,
                 still_open: Callable[[], str | None]) -> None:
        super().__init__(context, ignore=True)
        self.decision = decision
        self.sent = self.received = 0
        self._done = done
        self._still_open = still_open  # why it must end now, or None
        self._next_check = time.monotonic() + RECHECK_SECONDS

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if (isinstance(event, events.OpenConnectionCompleted) and event.reply
                and event.command.connection is self.context.server and not self.context.server.error):
            # Through an upstream proxy that refused the CONNECT, the error reaches only this
            # event, not the connection (as a failed direct connect does): kept for the record.
            self.context.server.error = event.reply
        yield from super().handle_event(event)

    def start(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from super().start(event)
        self._over()

    def relay_messages(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived):
            if time.monotonic() >= self._next_check:
                self._next_check = time.monotonic() + RECHECK_SECONDS
                if (why := self._still_open()) is not None:
                    yield from self._cut(why)
                    return
            if event.connection is self.context.client:
                self.sent += len(event.data)
            else:
                self.received += len(event.data)
        yield from super().relay_messages(event)
        self._over()

    def _cut(self, why: str) -> layer.CommandGenerator[None]:
        """End both sides now, relaying nothing more."""
        _note_cut(self.decision, why)
        self._handle_event = self.done
        for side in (self.context.server, self.context.client):
            if side.state is not ConnectionState.CLOSED:
                yield commands.CloseConnection(side)
        self._over()

    def _over(self) -> None:
        if self._handle_event == self.done:
            self._done(self)


def _note_cut(decision: Decision, why: str) -> None:
    """Say in an open connection's record that it was cut, when and why."""
    cut = f"cut after {time.monotonic() - decision.started:.0f} s: {why}"
    decision.note = f"{decision.note}; {cut}" if decision.note else cut


def _as(scheme: str, target: Target) -> Target:
    return target._replace(scheme=scheme, path="/", query="")
