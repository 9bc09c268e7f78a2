"""`[gateway] upstream_proxy`: the gateway chained behind another web proxy (schoolgate/upstream.py),
and the sixth-host stall of kept-alive connections, chained or not.

Each new connection to the explicit-proxy listener is handled in mitmproxy's upstream mode
(set up when it connects, so a policy change applies to the next connection and no listener
restarts; switching mitmproxy's `mode` option from a script comes too late, as the listeners
are set up while scripts load). Every hook decides as before, and the connection strategy stays lazy,
so nothing leaves for a blocked site, not even a CONNECT asked of the upstream proxy.
Transparent and WireGuard listeners still connect directly.

Why a kept-alive client connection stalled at its sixth host: mitmproxy's ConnectionHandler
lets one client connection hold at most five server connections per address (`max_conns`, a
Semaphore(5) held for each connection's whole life, idle keep-alive included). Chained, every
server connection has the upstream proxy's address (and direct, sites on one CDN address share
theirs), so five idle connections to five earlier hosts hold all five permits and the sixth
host's connection waits for one of them to close, which a browser's keep-alive never does.
`_close_idle` closes the oldest of them first, as the upstream proxy would on its idle timeout.
"""

from __future__ import annotations

import logging

from mitmproxy import connection, ctx, http
from mitmproxy.proxy import mode_specs, server_hooks
from mitmproxy.proxy.layers import modes

from schoolgate.addons.decision import decision_of
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.responses import text
from schoolgate.upstream import proxy_authorization

log = logging.getLogger("schoolgate")

UPSTREAM_REFUSED = ("The school's internet connection (its upstream web proxy) asked the school gateway for a "
                    "password it does not have, so this page cannot be fetched. This is not a block: please tell IT.\n")


def to_upstream_proxy(client: connection.Client, server: connection.Server) -> bool:
    """Whether `server` is a connection to the upstream proxy this client connection is chained to."""
    mode = client.proxy_mode
    return isinstance(mode, mode_specs.UpstreamMode) and server.address == mode.address


class UpstreamChain:
    def __init__(self, policy: PolicyWatch) -> None:
        self.policy = policy
        self._told: object = None  # the upstream setting last reported in the log

    def load(self, loader) -> None:
        # After every other add-on's server_connect (a test's or a school's script may redirect
        # the connection): the permits are counted by the address it will really go to.
        if ctx.master.addons.get(_LastServerConnect.name) is None:
            ctx.master.addons.add(_LastServerConnect())

    def client_connected(self, client: connection.Client) -> None:
        assert self.policy.engine is not None
        upstream = self.policy.engine.policy.gateway.upstream_proxy
        if upstream != self._told:
            self._told = upstream
            log.info("schoolgate connects %s", f"through the upstream proxy {upstream}" if upstream else "directly")
        if upstream is None or not isinstance(client.proxy_mode, mode_specs.RegularMode):
            return
        handler = ctx.master.addons.get("proxyserver").connections.get(client.id)
        if handler is None or not isinstance(handler.layer, modes.HttpProxy):
            return
        # What mitmproxy's upstream-mode listener would have made: its mode (which the HTTP layer
        # reads the proxy's address from) and its top layer (which the next layers are picked by).
        client.proxy_mode = mode_specs.ProxyMode.parse(upstream.mode)
        handler.layer.context.layers.remove(handler.layer)
        handler.layer = modes.HttpUpstreamProxy(handler.layer.context)

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        self._authorize(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        """Plain HTTP goes to the upstream proxy as it is (absolute-form), with the gateway's
        credentials; here, after the gateway has read and removed the pupil's own."""
        if flow.response is None and flow.live and flow.request.scheme == "http" and flow.request.authority:
            self._authorize(flow)

    def _authorize(self, flow: http.HTTPFlow) -> None:
        assert self.policy.engine is not None
        upstream = self.policy.engine.policy.gateway.upstream_proxy
        mode = flow.client_conn.proxy_mode
        if (upstream is not None and isinstance(mode, mode_specs.UpstreamMode) and mode.data == str(upstream)
                and (authorization := proxy_authorization(upstream))):
            flow.request.headers["Proxy-Authorization"] = authorization

    def response(self, flow: http.HTTPFlow) -> None:
        """A 407 from the upstream proxy is for the gateway, not the pupil (whose browser would
        ask them for the provider's password): the pupil gets a page saying what happened."""
        decision = decision_of(flow)
        if (flow.response is None or flow.response.status_code != 407 or decision is None or decision.refused
                or not isinstance(flow.client_conn.proxy_mode, mode_specs.UpstreamMode)):
            return
        decision.note = "the upstream proxy refused the gateway's credentials (407)"
        flow.response = text(502, UPSTREAM_REFUSED)


class _LastServerConnect:
    name = "schoolgate-close-idle"

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        _close_idle(data.client, data.server)


def _close_idle(client: connection.Client, server: connection.Server) -> None:
    """Before a new server connection waits for one of the five permits its address has per
    client connection (see above), the oldest connection this client holds there is closed.
    It is idle: an HTTP/1 client has one request at a time, and that one is waiting here.
    HTTP/2 clients are left alone (several requests at once; mitmproxy sends each one that
    goes out as HTTP/1 over a connection of its own, closed after it)."""
    if server.error or not server.address or client.alpn in (b"h2", b"h3"):
        return
    handler = ctx.master.addons.get("proxyserver").connections.get(client.id)
    if handler is None or not handler.max_conns[server.address].locked():
        return
    for held, io in handler.transports.items():
        if isinstance(held, connection.Server) and held is not server and held.address == server.address \
                and held.connected and io.writer is not None:
            io.writer.close()
            return
