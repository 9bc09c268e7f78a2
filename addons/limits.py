"""Bounds on what one client can hold: connections, time, memory, and the service journal.

- Bodies larger than `stream_large_bodies` (set to 1m unless the admin chose another
  size) are streamed instead of held in memory; content scoring wraps the streams it
  must read (addons/content.py).
- A connection that has not sent a complete request head within
  `schoolgate_client_header_seconds` of connecting, or of its last answer, is closed
  (slowloris: a client trickling header bytes is never idle, so mitmproxy's own
  inactivity timeout does not catch it). Tunnels that pass through undecrypted and
  WebSockets are left to the idle timeout.
- `schoolgate_client_idle_seconds` is mitmproxy's inactivity timeout (`tcp_timeout`).
- At most `schoolgate_max_connections_per_client` connections at once from one address
  (per gateway process); more are refused as they arrive.
- mitmproxy's connection log lines carry the pupil's address and often the site
  (TLS failures); access data belongs in the database, so those lines are cut to
  their first sentence, without the address, and the INFO ones are dropped.

Counts go to metrics (never addresses).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from mitmproxy import connection, ctx, exceptions, http, tcp, tls
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers.tls import parse_client_hello

from schoolgate.metrics import CLIENT_CONNECTIONS, CLIENT_CONNECTIONS_CLOSED, CLIENT_CONNECTIONS_REFUSED

log = logging.getLogger("schoolgate")

DEFAULT_STREAM_LARGE_BODIES = "1m"
_OVER_CAP = "too many connections from this client"
_SWEEP_SECONDS = 1.0
# mitmproxy's loggers whose lines are about one client's connection (they carry `client`).
_CONNECTION_LOGGERS = ("mitmproxy.proxy.server", "mitmproxy.proxy.mode_servers")


class AccessDataFilter(logging.Filter):
    """Keep a client's address and the sites it visits out of the service journal."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "client", None) is None:
            return True
        if record.levelno < logging.WARNING:
            return False  # "client connect", "server connect example.com:443": access data, not service health
        first_sentence = record.getMessage().split(". ", 1)[0].rstrip(".")
        record.msg, record.args = f"{first_sentence} (details withheld: access data is kept in the database)", None
        delattr(record, "client")
        return True


class Limits:
    def __init__(self) -> None:
        self._open: Counter[str] = Counter()  # connections per client address
        self._counted: set[str] = set()  # client connection ids in `_open`
        self._waiting_since: dict[str, float] = {}  # client connection id -> when it began owing a request head
        self._in_flight: Counter[str] = Counter()  # client connection id -> requests being answered
        self._sweeper: asyncio.Task[None] | None = None
        self._filter = AccessDataFilter()

    def load(self, loader) -> None:
        loader.add_option(
            "schoolgate_client_header_seconds", int, 30,
            "Close a client connection that has not sent a complete request head this many seconds "
            "after connecting or after its last answer (slow clients holding connections open). 0: off.",
        )
        loader.add_option(
            "schoolgate_client_idle_seconds", int, 300,
            "Close a connection on which nothing has moved for this many seconds (sets mitmproxy's tcp_timeout).",
        )
        loader.add_option(
            "schoolgate_max_connections_per_client", int, 256,
            "Most connections open at once from one client address, per gateway process. 0: no cap.",
        )
        loader.add_option(
            "schoolgate_log_connections", bool, False,
            "Let mitmproxy's per-connection log lines (client addresses, sites) into the service journal, "
            "for debugging. Off: they are cut to what says something about the service.",
        )

    def configure(self, updated: set[str]) -> None:
        for name in ("schoolgate_client_header_seconds", "schoolgate_client_idle_seconds",
                     "schoolgate_max_connections_per_client"):
            if name in updated and getattr(ctx.options, name) < 0:
                raise exceptions.OptionsError(f"{name} must be 0 or more, not {getattr(ctx.options, name)}")
        if "schoolgate_client_idle_seconds" in updated and ctx.options.schoolgate_client_idle_seconds:
            ctx.options.update(tcp_timeout=ctx.options.schoolgate_client_idle_seconds)
        if not ctx.options.stream_large_bodies:
            ctx.options.update(stream_large_bodies=DEFAULT_STREAM_LARGE_BODIES)
        if "schoolgate_log_connections" in updated:
            for name in _CONNECTION_LOGGERS:
                logger = logging.getLogger(name)
                if ctx.options.schoolgate_log_connections:
                    logger.removeFilter(self._filter)
                else:
                    logger.addFilter(self._filter)

    def running(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="schoolgate-slow-clients")

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    # --- connections ------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        address = client.peername[0]
        cap = ctx.options.schoolgate_max_connections_per_client
        if cap and self._open[address] >= cap:
            client.error = _OVER_CAP
            CLIENT_CONNECTIONS_REFUSED.labels(reason="per-client-cap").inc()
            return
        self._open[address] += 1
        self._counted.add(client.id)
        CLIENT_CONNECTIONS.inc()
        self._waiting_since[client.id] = time.monotonic()

    def client_disconnected(self, client: connection.Client) -> None:
        if client.id not in self._counted:
            return  # refused, or connected before this add-on was running
        self._counted.discard(client.id)
        address = client.peername[0]
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]
        CLIENT_CONNECTIONS.dec()
        self._waiting_since.pop(client.id, None)
        self._in_flight.pop(client.id, None)

    # --- the request head is in; the answer is out ------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._waiting_since.pop(flow.client_conn.id, None)
        self._in_flight[flow.client_conn.id] += 1

    # What comes next is a tunnel or TLS, not a request head (intercepted TLS re-arms at its first answer).
    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._waiting_since.pop(flow.client_conn.id, None)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        self._waiting_since.pop(data.context.client.id, None)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        # A whole ClientHello straight after connecting (transparent mode): the connection may be
        # relayed undecrypted (addons/connections.py), and then tls_clienthello never runs.
        data = nextlayer.data_client()
        if starts_like_tls_record(data) and _whole_client_hello(data):
            self._waiting_since.pop(nextlayer.context.client.id, None)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._waiting_since.pop(flow.client_conn.id, None)

    def response(self, flow: http.HTTPFlow) -> None:
        self._answered(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._answered(flow)

    def _answered(self, flow: http.HTTPFlow) -> None:
        client = flow.client_conn.id
        self._in_flight[client] -= 1
        if self._in_flight[client] > 0:
            return
        self._in_flight.pop(client, None)
        # A CONNECT's tunnel, or a WebSocket, carries no further request heads on this connection.
        if flow.request.method != "CONNECT" and flow.websocket is None and flow.client_conn.connected:
            self._waiting_since[client] = time.monotonic()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            limit = ctx.options.schoolgate_client_header_seconds
            if not limit:
                continue
            too_old = time.monotonic() - limit
            for client_id in [c for c, since in self._waiting_since.items() if since < too_old]:
                del self._waiting_since[client_id]
                if self._close(client_id):
                    CLIENT_CONNECTIONS_CLOSED.labels(reason="header-timeout").inc()

    @staticmethod
    def _close(client_id: str) -> bool:
        """Close a client connection the way mitmproxy's own inactivity timeout does."""
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(client_id) if proxyserver else None
        if handler is None:
            return False
        asyncio.get_running_loop().create_task(handler.on_timeout())
        return True


def _whole_client_hello(data: bytes) -> bool:
    try:
        return parse_client_hello(data) is not None
    except ValueError:
        return False
