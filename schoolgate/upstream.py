"""`[gateway] upstream_proxy`: the gateway chained behind the broadband provider's or local
authority's web proxy. Plain Python: the setting read, and mitmproxy's listen modes for it.

Each connection to the explicit-proxy listener is handled in mitmproxy's upstream mode
(addons/upstream.py): every decision is still made here first, then allowed plain HTTP goes to
the upstream proxy as absolute-form requests and everything else (decrypted or passed through)
through a CONNECT tunnel of its own. Credentials go in the Proxy-Authorization header, never in
a log.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit


@dataclass(frozen=True)
class UpstreamProxy:
    scheme: str  # "http", or "https" for a proxy that itself speaks TLS to the gateway
    host: str
    port: int
    credentials: str = field(default="", repr=False)  # "user:password"; kept out of reprs and logs

    def __str__(self) -> str:
        """As logs and `schoolgate check` show it: without the credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        """For clients that take a proxy URL (urllib's http_proxy); not for logs."""
        if not self.credentials:
            return str(self)
        user, _, password = self.credentials.partition(":")
        return str(self).replace("://", f"://{quote(user, safe='')}:{quote(password, safe='')}@", 1)

    @property
    def mode(self) -> str:
        """mitmproxy's proxy mode for a connection chained behind this proxy."""
        return f"upstream:{self}"


def parse_upstream_proxy(text: str) -> UpstreamProxy:
    """`http://[user:password@]host:port` (or https://); raises ValueError saying what is wrong,
    without repeating a password."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"is not a proxy URL ({e})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("names no host")
    if port is None:
        raise ValueError("needs its port (e.g. :8080)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be scheme://host:port, without a path")
    if parts.username is not None and not parts.password:
        raise ValueError("has a user name but no password (write user:password@host:port)")
    credentials = f"{unquote(parts.username)}:{unquote(parts.password)}" if parts.username and parts.password else ""
    return UpstreamProxy(parts.scheme, parts.hostname, port, credentials)


def proxy_authorization(upstream: UpstreamProxy) -> str | None:
    """The Proxy-Authorization header the gateway sends the upstream proxy (Basic), if it has credentials."""
    return "Basic " + base64.b64encode(upstream.credentials.encode()).decode() if upstream.credentials else None
