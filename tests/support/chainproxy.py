"""A real HTTP proxy on 127.0.0.1 for the gateway to be chained behind (the provider's or
local authority's proxy, in miniature): CONNECT tunnels and absolute-form requests, each
recorded with the host it was asked for, then sent on to the loopback test servers (port 80
to the HTTP one, 443 to the HTTPS one) like the loopback add-on does for a direct gateway.

It keeps every connection alive, as real proxies do, and can ask for credentials (407) or
refuse given hosts (502), to test what the pupil sees when it does.
"""

from __future__ import annotations

import base64
import http.client
import socket
import socketserver
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

from .upstream import Upstream

# Hop-by-hop headers a proxy does not forward (RFC 9110 7.6.1), nor the length it sets itself.
_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
        "transfer-encoding", "upgrade", "content-length"}


@dataclass(frozen=True)
class Asked:
    method: str  # "CONNECT", or the method of an absolute-form request
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization header, as sent


class ChainProxy:
    def __init__(self, upstream: Upstream, *, credentials: str = "", refuse: frozenset[str] = frozenset()) -> None:
        self.upstream = upstream
        self.credentials = credentials  # "user:password" asked for with 407; "" asks for none
        self.refuse = refuse  # hosts answered 502
        self._lock = threading.Lock()
        self._asked: list[Asked] = []
        self.connections = 0  # client connections accepted (the gateway's connections to this proxy)
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with proxy._lock:
                    proxy.connections += 1
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while proxy._one(self.rfile, self.wfile, self.connection):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="chain-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def asked(self) -> list[Asked]:
        with self._lock:
            return list(self._asked)

    def hosts(self, method: str | None = None) -> set[str]:
        return {a.host for a in self.asked if method is None or a.method == method}

    def _one(self, rfile: BinaryIO, wfile: BinaryIO, sock: socket.socket) -> bool:
        """Answer one request; False when the connection is over."""
        line = rfile.readline(65537).decode("latin-1").strip()
        if not line:
            return False
        method, target, _ = line.split(" ", 2)
        headers: list[tuple[str, str]] = []
        while (header := rfile.readline(65537).decode("latin-1").rstrip("\r\n")):
            name, _, value = header.partition(":")
            headers.append((name.strip(), value.strip()))
        named = {name.lower(): value for name, value in headers}
        body = rfile.read(int(named.get("content-length", 0) or 0))
        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            port = int(port_text)
        else:
            parts = urlsplit(target)
            host, port = parts.hostname or "", parts.port or 80
        with self._lock:
            self._asked.append(Asked(method, host, port, named.get("proxy-authorization")))
        if self.credentials and named.get("proxy-authorization") != _basic(self.credentials):
            _answer(wfile, 407, b"proxy credentials needed\n", [("Proxy-Authenticate", 'Basic realm="la"')])
            return True
        if host in self.refuse:
            _answer(wfile, 502, b"the upstream proxy cannot reach this site\n")
            return True
        loopback_port = {80: self.upstream.http_port, 443: self.upstream.https_port}.get(port, port)
        if method == "CONNECT":
            _tunnel(sock, wfile, loopback_port)
            return False
        origin = http.client.HTTPConnection("127.0.0.1", loopback_port, timeout=10)
        try:
            path = urlsplit(target)._replace(scheme="", netloc="").geturl() or "/"
            origin.request(method, path, body, {n: v for n, v in headers if n.lower() not in _HOP})
            response = origin.getresponse()
            _answer(wfile, response.status, response.read(),
                    [(n, v) for n, v in response.getheaders() if n.lower() not in _HOP], response.reason)
        finally:
            origin.close()
        return True

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> ChainProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def _answer(wfile: BinaryIO, status: int, body: bytes, headers: Sequence[tuple[str, str]] = (), reason: str = "") -> None:
    head = f"HTTP/1.1 {status} {reason or http.client.responses.get(status, '')}\r\n"
    head += "".join(f"{n}: {v}\r\n" for n, v in headers) + f"Content-Length: {len(body)}\r\n\r\n"
    wfile.write(head.encode("latin-1") + body)
    wfile.flush()


def _tunnel(client: socket.socket, wfile: BinaryIO, port: int) -> None:
    """200 to the CONNECT, then bytes both ways until either side closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as origin:
        wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        wfile.flush()
        pump = threading.Thread(target=_copy, args=(origin, client), daemon=True)
        pump.start()
        _copy(client, origin)
        pump.join(10)


def _copy(source: socket.socket, dest: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            dest.sendall(data)
    except OSError:
        pass
    try:
        dest.shutdown(socket.SHUT_WR)
    except OSError:
        pass
