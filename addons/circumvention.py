"""Filter circumvention seen in a request: DNS over HTTPS to any resolver,
recognised by the protocol rather than by a list of resolver hosts.

RFC 8484 DoH is a GET whose `dns` parameter is a base64url DNS message, or a
POST of `application/dns-message`. The JSON dialect (Google's dns.google
`/resolve`, Cloudflare's `/dns-query`) is a GET with `name=` (and usually
`type=`) or an `Accept: application/dns-json`.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qs

from schoolgate.urls import Target

DNS_MESSAGE = "application/dns-message"
DNS_JSON = "application/dns-json"
_JSON_DOH_PATHS = ("/resolve", "/dns-query")
_DNS_HEADER_LENGTH = 12


def _mime(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _is_dns_message(encoded: str) -> bool:
    """A base64url (unpadded, as RFC 8484 sends it) DNS message with at least one question."""
    try:
        message = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return False
    return len(message) >= _DNS_HEADER_LENGTH and int.from_bytes(message[4:6], "big") >= 1


def is_doh_request(method: str, target: Target, content_type: str | None, accept: str | None) -> bool:
    """Whether this HTTP request is a DNS-over-HTTPS query, to whatever host."""
    method = method.upper()
    accepted = {_mime(part) for part in (accept or "").split(",")}
    if _mime(content_type) in (DNS_MESSAGE, DNS_JSON) or DNS_JSON in accepted:
        return True
    if method != "GET" or not target.query:
        return False
    params = parse_qs(target.query, max_num_fields=50)
    if "dns" in params and (DNS_MESSAGE in accepted or _is_dns_message(params["dns"][0])):
        return True
    path = target.path.rstrip("/")
    return "name" in params and path.endswith(_JSON_DOH_PATHS)
