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
import weakref

from mitmproxy import connection, ctx, dns, http, tcp, tls, udp
from mitmproxy.net.dns import response_codes
from mitmproxy.proxy import mode_specs, server_hooks

from schoolgate.addons.decision import REFUSED_UPSTREAM, Decision, Kind, attach
from schoolgate.addons.embedded import decided_targets
from schoolgate.addons.identify import Identification
from schoolgate.addons.judge import Judge
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.recorder import Recorder
from schoolgate.addons.responses import connect_refused, fail_closed, refuse, text
from schoolgate.policy import Action
from schoolgate.urls import InvalidHost, Target, target_from_parts

log = logging.getLogger("schoolgate")

RESOLVE_TIMEOUT = 5.0


class Connections:
    def __init__(self, policy: PolicyWatch, identification: Identification, judge: Judge, recorder: Recorder) -> None:
        self.policy = policy
        self.identification = identification
        self.judge = judge
        self.recorder = recorder
        # The decision on each client connection's CONNECT or TLS name, until its handshake is over.
        self.tunnels: weakref.WeakKeyDictionary[connection.Client, Decision] = weakref.WeakKeyDictionary()

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

    @fail_closed
    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Decide by the TLS server name (the only name there is in transparent mode, and
        one a client could set apart from its CONNECT), then decrypt or pass through.
        A blocked name is always decrypted: the pupil sees the block page (or, on a device
        without the school CA, a failed handshake), never the site."""
        client = data.context.client
        tunnel = self.tunnels.get(client)
        address = data.context.server.address
        names = [n for n in (data.client_hello.sni, address[0] if address else None) if n]
        if not names:
            return  # mitmproxy decrypts by default, so the request hook still decides
        port = address[1] if address else 443
        try:
            candidates = [target_from_parts("https", name, port, "/") for name in dict.fromkeys(names)]
        except InvalidHost:
            return  # decrypted, as above
        who = tunnel.who if tunnel is not None else self.identification.by_address(client)
        candidates, shape = decided_targets(*candidates)
        decision = self.judge.decide(who, *candidates, method=tunnel.method if tunnel else "TLS", kind=Kind.TUNNEL,
                                     seen_as=shape, gateway_address=_gateway_address(client))
        if decision.refused or self._intercepts(decision):
            self.tunnels[client] = decision
            return
        data.ignore_connection = True
        self.tunnels.pop(client, None)
        if decision.verdict.action is Action.WARN:
            decision.note = "not decrypted: the warning page could not be shown"
        self.recorder.record(decision)

    def tls_established_client(self, data: tls.TlsData) -> None:
        tunnel = self.tunnels.get(data.context.client)
        if tunnel is not None:
            tunnel.recorded = True  # decrypted: each request inside is decided and recorded on its own

    def tls_failed_client(self, data: tls.TlsData) -> None:
        tunnel = self.tunnels.pop(data.context.client, None)
        if tunnel is not None:
            tunnel.note = "TLS interception failed: does this device trust the school certificate?"
            self.recorder.record(tunnel)

    def _intercepts(self, decision: Decision) -> bool:
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
        who = tunnel.who if tunnel is not None else self.identification.by_address(flow.client_conn)
        targets = [_as(scheme, tunnel.target)] if tunnel is not None else []
        if flow.server_conn.address:
            host, port = flow.server_conn.address[:2]
            targets.append(target_from_parts(scheme, host, port, "/"))
        if not targets:
            raise ValueError("a connection with no destination")  # refused by fail_closed
        decision = attach(flow, self.judge.decide(
            who, *dict.fromkeys(targets), method=scheme.upper(), kind=Kind(scheme), web=False,
            gateway_address=_gateway_address(flow.client_conn)))
        if decision.refused:
            refuse(flow, decision.verdict.reason)

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        self._drop_if_refused(flow)

    def udp_message(self, flow: udp.UDPFlow) -> None:
        self._drop_if_refused(flow)

    @staticmethod
    def _drop_if_refused(flow: tcp.TCPFlow | udp.UDPFlow) -> None:
        """A refused connection is never opened; should one be open anyway, nothing crosses it."""
        decision = flow.metadata.get("schoolgate")
        if decision is None or decision.refused:
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
        the address asked for."""
        if data.server.error or not data.server.address:
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


def _as(scheme: str, target: Target) -> Target:
    return target._replace(scheme=scheme, path="/", query="")
