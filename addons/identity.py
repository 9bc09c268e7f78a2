"""Who is asking: the client's address, and the user named by proxy authentication.

Proxy authentication is optional per group: clients of a group with
`require_auth = true` are asked to log in (407); anyone else may send
credentials and is then recorded by name. Credentials are checked against an
htpasswd file (bcrypt or SHA1), re-read when the file changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path

from mitmproxy.utils.htpasswd import HtpasswdFile

# bcrypt is deliberately slow; a browser sends the same header on every request,
# so a successful check is remembered for a while (keyed by a hash, never the password).
_CACHE_SECONDS = 300


class BadCredentials(Exception):
    """Credentials were sent but are wrong or malformed."""


def client_address(peername: tuple) -> str:
    """Canonical text of the client's IP (IPv4-mapped IPv6 shown as IPv4)."""
    address = ipaddress.ip_address(str(peername[0]).split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)


def parse_basic(header: str) -> tuple[str, str]:
    """`Basic dXNlcjpwYXNz` -> (user, password); raises BadCredentials."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        raise BadCredentials("only Basic proxy authentication is supported")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise BadCredentials("malformed Basic credentials") from e
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise BadCredentials("malformed Basic credentials")
    return user, password


@dataclass
class _Loaded:
    path: Path
    stamp: tuple[int, int]
    file: HtpasswdFile


class Authenticator:
    def __init__(self) -> None:
        self._loaded: _Loaded | None = None
        self._verified: dict[bytes, float] = {}

    def check(self, htpasswd: Path, header: str) -> str:
        """The user named by a Proxy-Authorization header, if the password is right.
        Raises BadCredentials otherwise."""
        user, password = parse_basic(header)
        key = hashlib.sha256(f"{htpasswd}\0{user}\0{password}".encode()).digest()
        now = time.monotonic()
        if self._verified.get(key, 0) > now:
            return user
        if not self._file(htpasswd).check_password(user, password):
            raise BadCredentials(f"wrong user name or password for {user!r}")
        if len(self._verified) > 10_000:
            self._verified = {k: t for k, t in self._verified.items() if t > now}
        self._verified[key] = now + _CACHE_SECONDS
        return user

    def _file(self, path: Path) -> HtpasswdFile:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if self._loaded is None or self._loaded.path != path or self._loaded.stamp != stamp:
            self._loaded = _Loaded(path, stamp, HtpasswdFile.from_file(path))
            self._verified.clear()  # a removed user or changed password takes effect at once
        return self._loaded.file

