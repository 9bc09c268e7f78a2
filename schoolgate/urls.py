"""Host and URL normalisation: one canonical form for deciding and for lists.

Every comparison in schoolgate (local lists, category index, exceptions) is made
on the forms produced here, so that `Example.COM.`, `example.com:443`,
`user@example.com` and `bücher.de` / `xn--bcher-kva.de` cannot slip past a list
by spelling.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import posixpath
import re
from typing import NamedTuple
from urllib.parse import SplitResult, unquote, urlsplit

import idna

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_HOST_OK = re.compile(r"^[a-z0-9_*](?:[a-z0-9_\-*]*)(?:\.[a-z0-9_\-*]+)*$")
_new_tuple = tuple.__new__
# A host name that normalise_host returns unchanged: lower-case ASCII, no port, a dot,
# a last label starting with a letter (not an IP address). Most hosts in lists and URLs.
CANONICAL_HOST = re.compile(r"(?=.{1,253}\Z)[a-z0-9_][a-z0-9_-]*(?:\.[a-z0-9_-]+)*\.[a-z][a-z0-9_-]*")
_HEX_LABEL = re.compile(r"0x[0-9a-f]*")
# Hosts longer than DNS allows are refused rather than hashed and looked up.
MAX_HOST_LENGTH = 253


class InvalidHost(ValueError):
    """A host that cannot be a real DNS name or IP address."""


class Target(NamedTuple):
    """What a request is for, in canonical form. (A NamedTuple: it is made for
    every request, and a frozen dataclass costs several times as much to build.)"""

    host: str  # lower-case punycode, no trailing dot, or a canonical IP literal
    port: int | None
    path: str  # lower-cased, dot-segments resolved, unreserved escapes decoded; starts with "/"
    query: str  # as sent (for logging and search terms); canonical_query() of it is matched
    scheme: str = "http"
    is_ip: bool = False  # an IP literal, or a name that only spells one (1-2-3-4.sslip.io)

    @property
    def match_path(self) -> str:
        """Path plus canonical query, the form URL-prefix entries are compared with."""
        return self.path + ("?" + canonical_query(self.query) if self.query else "")

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"http": 80, "https": 443}.get(self.scheme)
        port = f":{self.port}" if self.port and self.port != default else ""
        return f"{self.scheme}://{host}{port}{self.path}" + (f"?{self.query}" if self.query else "")


def _parse_ipv4_number(part: str) -> int:
    if part.startswith(("0x", "0X")):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part[1:], 8)
    return int(part, 10)


def _whatwg_ipv4(host: str) -> str | None:
    """Browsers read `2130706433`, `0x7f.1` and `0177.0.0.1` as 127.0.0.1; so must we."""
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts.pop()
    if not parts or len(parts) > 4:
        return None
    try:
        numbers = [_parse_ipv4_number(p) for p in parts]
    except ValueError:
        return None
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n << (8 * (3 - i))
    return str(ipaddress.IPv4Address(value))


# Pupils' browsers ask for the same few thousand hosts all day; a bounded cache
# makes the common case a dictionary hit. Invalid hosts raise and are not cached.
@functools.lru_cache(maxsize=65536)
def normalise_host(raw: str) -> str:
    """Canonical form of a host: strips userinfo, port, brackets and trailing dots,
    lower-cases, turns IDN into punycode and IP literals into their canonical text.

    Raises InvalidHost for something that cannot be a host at all.
    """
    if CANONICAL_HOST.fullmatch(raw):
        return raw
    host = raw.strip()
    if "@" in host:
        host = host.rsplit("@", 1)[1]
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise InvalidHost(f"unterminated IPv6 literal: {raw!r}")
        return _canonical_ipv6(host[1:end], raw)
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    elif host.count(":") > 1:
        return _canonical_ipv6(host, raw)
    if "%" in host:
        host = unquote(host)
    host = host.rstrip(".").lower()
    if not host:
        raise InvalidHost(f"empty host: {raw!r}")
    last_label = host.rsplit(".", 1)[-1]
    if last_label.isdigit() or _HEX_LABEL.fullmatch(last_label):
        # A name ending in a number is an IPv4 address to a browser, or nothing.
        ip = _whatwg_ipv4(host)
        if ip is None:
            raise InvalidHost(f"not a valid IPv4 address: {raw!r}")
        return ip
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
        except idna.IDNAError:
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError as e:
                raise InvalidHost(f"not a valid internationalised name: {raw!r}") from e
    if len(host) > MAX_HOST_LENGTH or not _HOST_OK.match(host):
        raise InvalidHost(f"not a valid host name: {raw!r}")
    return host


def _canonical_ipv6(text: str, raw: str) -> str:
    try:
        address = ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError as e:
        raise InvalidHost(f"not a valid IPv6 address: {raw!r}") from e
    # ::ffff:a.b.c.d reaches the IPv4 host; list it under that name.
    return str(address.ipv4_mapped or address)


# Wildcard DNS services that answer a name with the address spelt inside it, so a
# bare IP can be visited under a host name; and names that always mean loopback.
_IP_SPELLING_SUFFIXES = ("sslip.io", "nip.io", "xip.io", "traefik.me", "nip.direct", "ip.addr.tools", "backname.io",
                         "localtest.me", "lvh.me", "vcap.me", "localhost")
_LOOPBACK_NAMES = frozenset({"localtest.me", "lvh.me", "vcap.me", "localhost"})
_DASHED_IPV4 = re.compile(r"(?:^|-)(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})$")
_HEX_IPV4 = re.compile(r"(?:^|-)([0-9a-f]{8})$")


def disguised_ip(host: str) -> str | None:
    """The IP address a canonical host name only spells: `1-2-3-4.sslip.io`,
    `app.1.2.3.4.nip.io`, `7f000001.nip.io`, `--1.sslip.io` (::1), `x.localtest.me`
    (127.0.0.1). None for an ordinary name."""
    if not host.endswith(_IP_SPELLING_SUFFIXES):  # nearly every host: one C-level test, nothing cached
        return None
    return _disguised_ip(host)


@functools.lru_cache(maxsize=65536)
def _disguised_ip(host: str) -> str | None:
    suffix = next((s for s in _IP_SPELLING_SUFFIXES if host == s or host.endswith("." + s)), None)
    if suffix is None:
        return None
    if suffix in _LOOPBACK_NAMES:
        return "127.0.0.1"
    labels = host[: -len(suffix)].rstrip(".").split(".") if host != suffix else []
    if len(labels) >= 4 and all(label.isdigit() for label in labels[-4:]):
        candidates = [".".join(labels[-4:])]
    elif labels:
        last = labels[-1]
        candidates = []
        if m := _DASHED_IPV4.search(last):
            candidates.append(".".join(m.groups()))
        if m := _HEX_IPV4.search(last):
            candidates.append(str(ipaddress.IPv4Address(int(m.group(1), 16))))
        if "--" in last or last.count("-") == 7:  # sslip.io's IPv6: dashes for colons
            candidates.append(last.replace("-", ":"))
    else:
        return None
    return next((found for candidate in candidates if (found := canonical_ip(candidate)) is not None), None)


@functools.lru_cache(maxsize=65536)  # every hook asks it of the client's address and each name: mostly the same few
def canonical_ip(text: str) -> str | None:
    """One spelling of an IP address: zone and brackets dropped, IPv4-mapped IPv6
    (`::ffff:10.1.2.3`) as the IPv4 address it reaches; None when not an address."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped or address)


def canonical_query(query: str) -> str:
    """The query as list entries are compared with it: lower-cased, escapes of
    unreserved characters decoded (`%76=` is `v=`), `%20` as `+`, empty pairs
    dropped and pairs sorted, so neither reordering nor encoding moves it."""
    return _canonical_query(query)


@functools.lru_cache(maxsize=16384)
def _canonical_query(query: str) -> str:
    text = query.split("#", 1)[0]
    if "%" in text:
        text = _decode_unreserved(text)
    text = text.lower().replace("%20", "+")
    return "&".join(sorted(pair for pair in text.split("&") if pair))


def is_ip(host: str) -> bool:
    """True for a canonical IP literal as normalise_host returns it."""
    if ":" in host:
        return True
    return host[-1:].isdigit() and _whatwg_ipv4(host) == host


def ip_of(host: str) -> str | None:
    """The IP address a host is, or only spells (`1-2-3-4.sslip.io`); None for a real name."""
    return host if is_ip(host) else disguised_ip(host)


def _decode_unreserved(text: str) -> str:
    return _PERCENT.sub(lambda m: chr(int(m.group(1), 16)) if chr(int(m.group(1), 16)) in _UNRESERVED else m.group(0).upper(), text)


def normalise_path(raw: str) -> str:
    """Lower-cased path with `%7E`-style escapes of unreserved characters decoded,
    duplicate slashes folded and `.`/`..` resolved, so `/A/./b/../%73horts` and
    `/a/shorts` are one path for list matching."""
    path = (raw or "/").lower()
    if "%" in path:
        path = _decode_unreserved(path).lower()
    if not path.startswith("/"):
        path = "/" + path
    if "//" in path:
        path = re.sub(r"/{2,}", "/", path)
    if "/." not in path:
        return path  # nothing to resolve: the common case
    resolved = posixpath.normpath(path)
    if resolved.startswith("//"):
        resolved = resolved[1:]
    if path.endswith("/") and resolved != "/":
        resolved += "/"
    return resolved


def parse_target(url: str) -> Target:
    """Parse an absolute URL (or `host[:port][/path]`) into a Target."""
    if "://" not in url:
        url = "http://" + url
    parts = _split_url(url)
    netloc = parts.netloc
    host = normalise_host(netloc)
    try:
        port = parts.port
    except ValueError as e:
        raise InvalidHost(f"bad port in {url!r}") from e
    return Target(
        host=host,
        port=port,
        path=normalise_path(parts.path),
        query=parts.query,
        scheme=(parts.scheme or "http").lower(),
        is_ip=ip_of(host) is not None,
    )


def _split_url(url: str) -> SplitResult:
    """urlsplit(url), with the common case (printable ASCII http(s), no IPv6 literal,
    where urlsplit strips and checks nothing) split directly at a third of the cost."""
    if url.startswith("https://"):
        start, scheme = 8, "https"
    elif url.startswith("http://"):
        start, scheme = 7, "http"
    else:
        return urlsplit(url)
    if not (url.isascii() and url.isprintable()):
        return urlsplit(url)
    end = len(url)
    for delimiter in "/?#":
        found = url.find(delimiter, start, end)
        if found >= 0:
            end = found
    netloc = url[start:end]
    if "[" in netloc or "]" in netloc:
        return urlsplit(url)
    path, _, fragment = url[end:].partition("#")
    path, _, query = path.partition("?")
    return _new_tuple(SplitResult, (scheme, netloc, path, query, fragment))  # SplitResult._make, without its call


def target_from_parts(scheme: str, host: str, port: int | None, path_and_query: str) -> Target:
    """Build a Target from what a proxy sees (host header/SNI, port, request path)."""
    path, _, query = path_and_query.partition("?")
    query = query.split("#", 1)[0]
    canonical = normalise_host(host)
    return Target(
        host=canonical,
        port=port,
        path=normalise_path(path.split("#", 1)[0]),
        query=query,
        scheme=scheme.lower(),
        is_ip=ip_of(canonical) is not None,
    )


def parent_domains(host: str) -> list[str]:
    """`a.b.example.com` -> [`a.b.example.com`, `b.example.com`, `example.com`, `com`].
    IP literals have no parents."""
    if is_ip(host):
        return [host]
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def path_matches_prefix(match_path: str, prefix: str) -> bool:
    """URL-prefix entries match at a boundary: `/watch` matches `/watch`,
    `/watch/x` and `/watch?v=1`, not `/watchlist`. An entry with a query matches
    its path with every one of its parameters among the request's, in any order
    and beside any others (`/watch?v=1` matches `/watch?list=2&v=1`)."""
    if match_path.startswith(prefix) and (
        len(match_path) == len(prefix) or prefix.endswith(("/", "?", "=", "&")) or match_path[len(prefix)] in "/?&;#"
    ):
        return True
    return "?" in prefix and query_entry_matches(match_path, prefix)


# squidGuard compares URL entries with the host minus one leading www/web/ftp
# label (optionally numbered: www2.). Stripping it from entries too is ours.
_URL_HOST_PREFIX = re.compile(r"(?:www|web|ftp)[0-9]*\.")


def url_host_start(host: str) -> int:
    """Where the host URL entries are compared with begins: after a leading
    `www.`/`www2.`/`web.`/`ftp.` label, else 0."""
    m = _URL_HOST_PREFIX.match(host)
    return m.end() if m and m.end() < len(host) else 0


def url_entry_matches(match_path: str, prefix: str) -> bool:
    """Whether a URL entry's path prefix (both canonical) covers this path and query:
    squidGuard's plain string prefix, and an entry's query parameters in any order among others."""
    return match_path.startswith(prefix) or ("?" in prefix and query_entry_matches(match_path, prefix))


def query_entry_matches(match_path: str, prefix: str) -> bool:
    """Whether a URL entry with a query (both canonical) covers this path and query:
    the same path, and each of the entry's parameters present; a parameter written
    `name=` matches any value of that name."""
    path, _, wanted = prefix.partition("?")
    here, _, query = match_path.partition("?")
    if here.split(";", 1)[0] != path:  # a `;matrix` parameter does not make it another page
        return False
    pairs = query.split("&")
    names = {pair.split("=", 1)[0] + "=" for pair in pairs}
    return all(pair in pairs or (pair.endswith("=") and pair in names) for pair in wanted.split("&") if pair)


def normalise_entry(raw: str) -> tuple[str, str]:
    """A list entry as IT staff write it (`example.com`, `*.example.com`,
    `https://Example.com/Path`, `example.com/path?q=1`) -> (host, path-prefix or "").

    Raises InvalidHost for entries that are not a host."""
    entry = raw.strip()
    if "://" in entry:
        entry = entry.split("://", 1)[1]
    if entry.startswith("*."):
        entry = entry[2:]
    elif entry.startswith("."):
        entry = entry[1:]
    host, sep, rest = entry.partition("/")
    canonical = normalise_host(host)
    if not sep or not rest.strip("/"):
        return canonical, ""
    path, _, query = ("/" + rest).partition("?")
    prefix = normalise_path(path)
    if path.endswith("/") is False and prefix.endswith("/") and prefix != "/":
        prefix = prefix.rstrip("/")
    if query and (query := canonical_query(query)):
        prefix += "?" + query
    return canonical, prefix


def decode_base64(text: str) -> bytes | None:
    """Base64 or base64url, with or without its padding, as URLs carry it (a DoH `dns`
    parameter, a web proxy's hidden address); None when it is neither."""
    padded = text + "=" * (-len(text) % 4)
    for alphabet in (b"-_", b"+/"):
        try:
            return base64.b64decode(padded, altchars=alphabet, validate=True)
        except (binascii.Error, ValueError):
            continue
    return None
