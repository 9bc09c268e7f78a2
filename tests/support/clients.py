"""Real clients through the gateway: the curl binary, and httpx bound to a chosen source address.

Tests place a client in a school network by its loopback source address (127.0.0.2, 127.0.0.3,
... are all valid on Linux), so both clients bind every connection to `source_ip`.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx

from .gateway import Gateway

CURL = "/usr/bin/curl"
_PROXY_ENV = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}


@dataclass(frozen=True)
class CurlResult:
    status: int  # final HTTP status; 0 when no response arrived (e.g. CONNECT refused)
    body: bytes
    headers: dict[str, str]  # final response headers, lower-cased names, repeats joined with ", "
    stderr: str
    exit_code: int  # curl's exit code: 0 ok, 56 when the proxy refused CONNECT, 28 on timeout
    connect_status: int | None  # the proxy's answer to CONNECT (https:// URLs only)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _last_header_block(raw: str) -> dict[str, str]:
    # curl writes every header block it received (CONNECT reply, 1xx, final); keep the final one.
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.strip()]
    headers: dict[str, str] = {}
    for line in blocks[-1].splitlines()[1:] if blocks else []:
        name, _, value = line.partition(":")
        key, value = name.strip().lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def curl(
    gw: Gateway,
    url: str,
    *extra: str,
    source_ip: str = "127.0.0.1",
    user: str | None = None,
    password: str | None = None,
    max_time: float = 20,
) -> CurlResult:
    """Run /usr/bin/curl through the gateway, trusting its CA and never following redirects."""
    with tempfile.TemporaryDirectory(prefix="sg-curl-") as tmp:
        body_path, headers_path = Path(tmp) / "body", Path(tmp) / "headers"
        cmd = [
            CURL,
            "-q",  # ignore any ~/.curlrc
            "-sS",
            "--proxy", gw.proxy_url,
            "--cacert", str(gw.ca_cert),
            "--interface", source_ip,
            "--max-time", str(max_time),
            "-o", str(body_path),
            "-D", str(headers_path),
            "-w", "%{json}",
        ]
        if user is not None:
            cmd += ["--proxy-user", f"{user}:{password or ''}"]
        cmd += [*extra, url]
        env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_ENV}
        done = subprocess.run(cmd, capture_output=True, env=env, timeout=max_time + 10)
        info: dict[str, Any] = json.loads(done.stdout or b"{}")
        connect_status = info.get("http_connect") or None
        return CurlResult(
            status=info.get("http_code", 0),
            body=body_path.read_bytes() if body_path.exists() else b"",
            headers=_last_header_block(headers_path.read_text("latin-1") if headers_path.exists() else ""),
            stderr=done.stderr.decode("utf-8", errors="replace"),
            exit_code=done.returncode,
            connect_status=connect_status,
        )


class _SourceBoundBackend(httpcore.SyncBackend):
    """Binds every outgoing socket to one local address."""

    def __init__(self, source_ip: str) -> None:
        self._source_ip = source_ip

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        return super().connect_tcp(host, port, timeout, self._source_ip, socket_options)


class _BoundProxyTransport(httpx.HTTPTransport):
    # httpx 0.28 does not pass local_address to its proxy pool (and httpcore's HTTPProxy would not
    # use it for proxy connections anyway), so build the pool with a source-bound network backend.
    def __init__(self, proxy_url: str, ssl_context: ssl.SSLContext, source_ip: str, auth: tuple[str, str] | None) -> None:
        super().__init__()
        self._pool = httpcore.HTTPProxy(
            proxy_url=proxy_url,
            proxy_auth=auth,
            ssl_context=ssl_context,
            network_backend=_SourceBoundBackend(source_ip),
        )


def httpx_client(
    gw: Gateway,
    source_ip: str = "127.0.0.1",
    auth: tuple[str, str] | None = None,
    **client_options: Any,
) -> httpx.Client:
    """An httpx.Client that goes through the gateway from `source_ip`, trusting only its CA.

    `auth` is proxy authentication (user, password). Redirects are not followed (httpx default).
    """
    ssl_context = ssl.create_default_context(cafile=str(gw.ca_cert))
    transport = _BoundProxyTransport(gw.proxy_url, ssl_context, source_ip, auth)
    client_options.setdefault("timeout", 20)
    return httpx.Client(transport=transport, trust_env=False, **client_options)
