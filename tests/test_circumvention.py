"""DNS over HTTPS is recognised by protocol, to any host."""

from __future__ import annotations

import base64
import struct

import pytest

from schoolgate.addons.circumvention import is_doh_request
from schoolgate.urls import parse_target


def dns_query(name: str) -> str:
    """An RFC 8484 `dns` parameter: a base64url DNS query, padding stripped."""
    header = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    return base64.urlsafe_b64encode(header + question).decode().rstrip("=")


@pytest.mark.parametrize(
    ("method", "url", "content_type", "accept"),
    [
        ("GET", f"https://cloudflare-dns.com/dns-query?dns={dns_query('example.com')}", None, "application/dns-message"),
        ("GET", f"https://my-own-resolver.example/anything?dns={dns_query('bbc.co.uk')}", None, None),
        ("POST", "https://dns.quad9.net/dns-query", "application/dns-message", "application/dns-message"),
        ("POST", "https://203.0.113.5/q", "application/dns-message", None),
        ("GET", "https://dns.google/resolve?name=example.com&type=A", None, None),
        ("GET", "https://cloudflare-dns.com/dns-query?name=example.com&type=AAAA", None, "application/dns-json"),
        ("GET", "https://doh.example/whatever?x=1", None, "application/dns-json, */*"),
    ],
)
def test_doh_requests(method: str, url: str, content_type: str | None, accept: str | None) -> None:
    assert is_doh_request(method, parse_target(url), content_type, accept)


@pytest.mark.parametrize(
    ("method", "url", "content_type", "accept"),
    [
        ("GET", "https://www.google.com/search?q=dns+over+https", None, "text/html"),
        ("GET", "https://mxtoolbox.com/lookup?dns=example.com", None, "text/html"),  # a DNS tool, not DoH
        ("GET", "https://example.com/?dns=abc", None, None),
        ("POST", "https://example.com/api", "application/json", "application/json"),
        ("GET", "https://example.com/users?name=bob", None, None),
        ("GET", "https://dns.google/", None, "text/html"),
    ],
)
def test_not_doh(method: str, url: str, content_type: str | None, accept: str | None) -> None:
    assert not is_doh_request(method, parse_target(url), content_type, accept)
