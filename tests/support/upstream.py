"""Real HTTP and HTTPS upstream servers on 127.0.0.1 that record every request they answer.

Every response body is a known function of the request (see `expected_body`) so tests can
assert both content and byte counts after the bytes have passed through the gateway.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Statuses that must not carry a body (RFC 9110), so /status/NNN sends none for them.
_BODYLESS = {204, 304}


def expected_body(host: str, path: str, query: str = "") -> bytes:
    """The body upstream sends for an ordinary request: `upstream <Host header><path>?<query>`."""
    return f"upstream {host}{path}?{query}".encode()


def bytes_body(n: int) -> bytes:
    """The body of /bytes/N: N bytes of a repeating, recognisable pattern."""
    pattern = b"0123456789abcdef"
    return (pattern * (n // len(pattern) + 1))[:n]


@dataclass(frozen=True)
class UpstreamRequest:
    scheme: str  # "http" or "https"
    host: str  # the Host header exactly as received (may carry ":port")
    sni: str | None  # TLS server name sent by the client (the gateway); None for plain HTTP
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes

    @property
    def hostname(self) -> str:
        """Host header without port, lower-cased."""
        return urlsplit("//" + self.host).hostname or ""


class RequestLog:
    """Thread-safe list of requests seen by the upstream servers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[UpstreamRequest] = []

    def add(self, request: UpstreamRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def all(self) -> list[UpstreamRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as mitmproxy expects from real servers
    disable_nagle_algorithm = True  # else each keep-alive response waits ~40 ms for a delayed ACK
    server: _Server

    def _handle(self) -> None:
        target = urlsplit(self.path)
        body = self._read_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        host = self.headers.get("Host", "")
        self.server.log.add(
            UpstreamRequest(
                scheme=self.server.scheme,
                host=host,
                sni=getattr(self.connection, "sni", None),
                method=self.command,
                path=target.path,
                query=target.query,
                headers=headers,
                body=body,
            )
        )
        status, payload = self._response(host, target.path, target.query)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""
        # The gateway may stream uploads chunked; decode so the recorded body is the payload.
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    @staticmethod
    def _response(host: str, path: str, query: str) -> tuple[int, bytes]:
        parts = path.split("/")
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == "status":
                status = int(parts[2])
                return status, b"" if status in _BODYLESS else expected_body(host, path, query)
            if parts[1] == "bytes":
                return 200, bytes_body(int(parts[2]))
        return 200, expected_body(host, path, query)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is the record; stderr noise would only clutter pytest output


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, scheme: str, log: RequestLog, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scheme = scheme
        self.log = log
        self.tls = tls

    @property
    def port(self) -> int:
        return self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            return super().finish_request(request, client_address)
        # Handshake here, in the per-connection thread, so one slow client cannot stall accept().
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for *.test (the gateway runs with ssl_insecure, any name is served)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "schoolgate test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("*.test"),
                    x509.DNSName("test"),
                    # OpenSSL will not match a wildcard directly below a TLD; clients that
                    # verify this certificate themselves (passthrough tests) need exact names.
                    x509.DNSName("bank.test"),
                    x509.DNSName("games.test"),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "upstream-cert.pem", directory / "upstream-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])  # the handler speaks HTTP/1.1 only

    def remember_sni(conn: ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        conn.sni = server_name  # type: ignore[attr-defined]  # read back by the handler

    context.sni_callback = remember_sni  # type: ignore[assignment]
    return context


class Upstream:
    """One plain HTTP and one HTTPS server on 127.0.0.1 random ports, sharing one request log."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="sg-upstream-")
        self.cert_path, key_path = _self_signed(Path(self._dir.name))
        self._log = RequestLog()
        self._http = _Server("http", self._log)
        self._https = _Server("https", self._log, _tls_context(self.cert_path, key_path))
        self._threads = [
            threading.Thread(target=server.serve_forever, name=f"upstream-{server.scheme}", daemon=True)
            for server in (self._http, self._https)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def http_port(self) -> int:
        return self._http.port

    @property
    def https_port(self) -> int:
        return self._https.port

    @property
    def requests(self) -> list[UpstreamRequest]:
        return self._log.all()

    def requests_for(self, host: str) -> list[UpstreamRequest]:
        """Requests whose Host header names `host` (port and case ignored)."""
        wanted = host.lower()
        return [r for r in self._log.all() if r.hostname == wanted]

    def clear(self) -> None:
        self._log.clear()

    def close(self) -> None:
        for server in (self._http, self._https):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._dir.cleanup()

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
