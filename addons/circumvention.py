"""Filter circumvention seen in a request: DNS over HTTPS to any resolver,
recognised by the protocol rather than by a list of resolver hosts.

RFC 8484 DoH is a GET whose `dns` parameter is a base64url DNS message, or a
POST of `application/dns-message` (Oblivious DoH, RFC 9230, posts
`application/oblivious-dns-message`). The JSON dialect (Google's dns.google
`/resolve`, Cloudflare's `/dns-query`) is a GET with `name=` (and usually
`type=`) or an `Accept: application/dns-json` (Google also takes
`ct=application/dns-json`). Each shape is recognised on any host and path;
a POST whose body is a DNS query is DoH whatever content type it claims, and
a response that carries DNS answers gives away a server missed on the way in.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from schoolgate.mediatypes import media_type
from schoolgate.urls import Target, decode_base64

DNS_MESSAGE = "application/dns-message"
DNS_JSON = "application/dns-json"
OBLIVIOUS_DNS = "application/oblivious-dns-message"
_DNS_TYPES = frozenset({DNS_MESSAGE, DNS_JSON, OBLIVIOUS_DNS})
_JSON_DOH_PATHS = ("/resolve", "/dns-query", "/dns-json")
# Resource record types by name and number, as the JSON APIs take them in `type=`.
_RR_TYPES = frozenset(
    "a ns cname soa ptr mx txt aaaa srv naptr ds rrsig nsec dnskey nsec3 tlsa svcb https caa any".split()
) | frozenset(map(str, (1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 43, 46, 47, 48, 50, 52, 64, 65, 255, 257)))
_DNS_HEADER_LENGTH = 12


def is_dns_query(message: bytes) -> bool:
    """A DNS query message (RFC 1035): a standard query with one well-formed question."""
    if len(message) < _DNS_HEADER_LENGTH + 5 or message[2] & 0xF8:  # QR=0, opcode 0 (QUERY)
        return False
    qdcount, ancount, nscount = (int.from_bytes(message[i : i + 2], "big") for i in (4, 6, 8))
    if qdcount != 1 or ancount or nscount:
        return False
    i, total = _DNS_HEADER_LENGTH, 0
    while (length := message[i]) != 0:
        total += length + 1
        if length > 63 or total > 255 or i + length + 1 >= len(message):
            return False
        i += length + 1
    return i + 5 <= len(message)


def is_doh_request(method: str, target: Target, content_type: str | None, accept: str | None, body: bytes = b"") -> bool:
    """Whether this HTTP request is a DNS-over-HTTPS query, to whatever host."""
    accepted = {media_type(part) for part in (accept or "").split(",")}
    if media_type(content_type) in _DNS_TYPES or accepted & _DNS_TYPES:
        return True
    if body and method.upper() == "POST" and is_dns_query(body):
        return True
    if not target.query:
        return False
    params = parse_qs(target.query, max_num_fields=50)
    if any(is_dns_query(decode_base64(value) or b"") for value in params.get("dns", ())):
        return True
    if "name" not in params:
        return False
    if DNS_JSON in {media_type(value) for value in params.get("ct", ())}:
        return True
    types = {value.lower() for value in params.get("type", ())}
    return target.path.rstrip("/").endswith(_JSON_DOH_PATHS) or bool(types & _RR_TYPES and _is_domain(params["name"][0]))


def is_doh_response(content_type: str | None) -> bool:
    """Whether a response carries DNS answers (a DoH server the request shape did not give away)."""
    return media_type(content_type) in _DNS_TYPES


def _is_domain(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(labels) >= 2 and all(label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
                                    for label in labels)
