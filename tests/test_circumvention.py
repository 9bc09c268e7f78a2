"""DNS over HTTPS is recognised by protocol, to any host."""

from __future__ import annotations

import base64
import struct

import pytest

from schoolgate.addons.circumvention import is_dns_query, is_doh_request, is_doh_response
from schoolgate.urls import parse_target


def dns_message(name: str) -> bytes:
    """A DNS query for `name`, type A, as a stub resolver sends it."""
    header = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    return header + question


def dns_query(name: str) -> str:
    """An RFC 8484 `dns` parameter: a base64url DNS query, padding stripped."""
    return base64.urlsafe_b64encode(dns_message(name)).decode().rstrip("=")


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
        # more shapes, on any host and path
        ("GET", f"https://dns.nextdns.io/abc123?dns={dns_query('example.com')}", None, None),
        ("GET", "https://x.example/q?dns=" + base64.b64encode(dns_message("example.org")).decode(), None, None),  # standard base64, padded
        ("GET", "https://dns.google/resolve?name=example.com", None, None),
        ("GET", "https://x.example/api?name=example.com&type=AAAA", None, None),
        ("GET", "https://x.example/api?name=example.com&type=28", None, None),
        ("GET", "https://x.example/api?name=example.com&ct=application/dns-json", None, None),
        ("GET", "https://x.example/dns-json?name=example.com", None, "application/json"),
        ("POST", "https://odoh.example/dns-query?targethost=x&targetpath=/dns-query", "application/oblivious-dns-message", None),
        ("GET", "https://x.example/anything", None, "application/dns-message"),
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
        ("GET", "https://example.com/search?name=bob&type=person", None, None),
        ("GET", "https://example.com/search?name=bob&type=a", None, None),  # a DNS type but no domain name
        ("GET", "https://dnstool.example/dns?name=bbc.co.uk", None, "text/html"),  # a lookup page for people, not DoH
    ],
)
def test_not_doh(method: str, url: str, content_type: str | None, accept: str | None) -> None:
    assert not is_doh_request(method, parse_target(url), content_type, accept)


def test_a_post_whose_body_is_a_dns_query_is_doh_whatever_it_claims_to_be():
    body = dns_message("pornhub.com")
    assert is_dns_query(body)
    assert is_doh_request("POST", parse_target("https://x.example/upload"), "application/octet-stream", None, body)
    assert not is_doh_request("POST", parse_target("https://x.example/upload"), "application/octet-stream", None,
                              b"hello world, 1234567890")


@pytest.mark.parametrize("body", [b"", b"\0" * 11, b"\x00\x00\x81\x80" + b"\0" * 20, b"{\"query\": \"x\"}" * 3])
def test_other_bodies_are_not_dns_queries(body):
    assert not is_dns_query(body)


def test_dns_answers_are_known_on_the_way_back():
    assert is_doh_response("application/dns-message")
    assert is_doh_response("application/dns-json; charset=utf-8")
    assert not is_doh_response("application/json")
