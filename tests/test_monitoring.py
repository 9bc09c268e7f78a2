"""Safeguarding monitoring end to end: search terms recorded and flagged, the DSL
alerted once by email and webhook, SafeSearch enforced upstream, circumvention
blocked and flagged. Real mitmdump, loopback upstream standing in for the search
engines (requests carry the real query parameters), real SMTP and webhook
receivers on 127.0.0.1, real SQLite."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import struct
import threading
from urllib.parse import parse_qs, quote_plus

import pytest

from support.alerts import SmtpSink, WebhookReceiver
from support.clients import curl, httpx_client
from support.waiting import wait_for

POLICY = """\
[gateway]
database = "{database}"
metrics_port = {metrics_port}
default_group = "pupils"

[monitoring]
console_url = "https://console.school.test/incidents/"
block_searches_at = "BLOCK_AT"

[alerts]
min_severity = "high"
per_user_minutes = 15
[alerts.email]
host = "127.0.0.1"
port = SMTP_PORT
from = "schoolgate@school.test"
to = ["dsl@school.test"]
[alerts.webhook]
url = "WEBHOOK_URL"

[categories]
doh = "block"
vpn-proxy = "block"

[groups.pupils]
networks = ["127.0.0.1/32"]
safe_search = true
block_ip_literals = true

[groups.staff]
networks = ["127.0.0.2/32"]
"""


class Receivers:
    """The SMTP sink and webhook receiver, served from an event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.smtp = self._run(SmtpSink().start())
        self.webhook = self._run(WebhookReceiver().start())

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def close(self) -> None:
        self._run(self.smtp.stop())
        self._run(self.webhook.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def receivers():
    r = Receivers()
    yield r
    r.close()


@pytest.fixture
def start(gateway_factory, receivers):
    def start_gateway(block_at: str = "never"):
        policy = (POLICY.replace("BLOCK_AT", block_at).replace("SMTP_PORT", str(receivers.smtp.port))
                  .replace("WEBHOOK_URL", receivers.webhook.url))
        return gateway_factory(policy)
    return start_gateway


def records(gw) -> list[dict]:
    with sqlite3.connect(gw.db_path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM access_log ORDER BY seq")]


def search(gw, engine_url: str, query: str, source_ip: str = "127.0.0.1"):
    return curl(gw, engine_url + quote_plus(query), source_ip=source_ip)


def test_search_terms_are_recorded_and_worrying_ones_flagged_and_alerted_once(start, receivers, upstream):
    gw = start()
    assert search(gw, "http://www.google.co.uk/search?q=", "history homework tudors").status == 200
    assert search(gw, "https://www.bing.com/search?q=", "how to kill myself").status == 200  # flagged, not blocked
    assert search(gw, "https://duckduckgo.com/?q=", "how to k1ll mys3lf").status == 200  # same pupil, same risk
    assert search(gw, "https://www.youtube.com/results?search_query=", "cutting board").status == 200
    assert search(gw, "https://fr.wikipedia.org/w/index.php?search=", "comment se suicider", source_ip="127.0.0.2").status == 200

    wait_for(lambda: len(receivers.smtp.messages) == 2 and len(receivers.webhook.requests) == 2)
    gw.stop()
    rows = records(gw)
    assert [(r["search_engine"], r["search_term"], r["flag"], r["flag_severity"]) for r in rows] == [
        ("google", "history homework tudors", None, None),
        ("bing", "how to kill myself", "self-harm", 4),
        ("duckduckgo", "how to k1ll mys3lf", "self-harm", 4),
        ("youtube", "cutting board", None, None),
        ("wikipedia", "comment se suicider", "self-harm", 4),
    ]
    assert rows[1]["flag_detail"] == "search matched 'how to kill myself' (en)" and rows[1]["ref"]

    # One alert per pupil and risk; each carries a link and no personal detail.
    emails, hooks = receivers.smtp.messages, [body for _, body in receivers.webhook.requests]
    links = {f"https://console.school.test/incidents/{rows[i]['ref']}" for i in (1, 4)}
    assert {h["link"] for h in hooks} == links
    for message in emails:
        text = message.get_body(("plain",)).get_content()
        assert any(link in text for link in links)
    for sent in [m.as_string() for m in emails] + [str(h) for h in hooks]:
        for personal in ("kill myself", "k1ll", "suicider", "127.0.0.1", "127.0.0.2", "bing.com", "wikipedia"):
            assert personal not in sent


def test_severe_searches_can_be_blocked_with_support_information(start, upstream):
    gw = start(block_at="critical")
    blocked = search(gw, "https://www.google.com/search?q=", "how to kill myself")
    assert blocked.status == 403 and "search about self-harm" in blocked.text
    assert "Childline" in blocked.text and "Samaritans" in blocked.text
    assert "Ask for access" not in blocked.text
    assert upstream.requests_for("www.google.com") == []
    assert search(gw, "https://www.google.com/search?q=", "self harm support").status == 200  # topic words only flag


def test_safe_search_is_enforced_upstream(start, upstream):
    gw = start()
    search(gw, "https://www.google.com/search?safe=off&q=", "volcanoes")
    search(gw, "https://www.bing.com/search?adlt=off&q=", "volcanoes")
    search(gw, "https://duckduckgo.com/?kp=-2&q=", "volcanoes")
    with httpx_client(gw) as client:
        client.get("https://www.youtube.com/results?search_query=volcanoes")
    google, = upstream.requests_for("www.google.com")
    bing, = upstream.requests_for("www.bing.com")
    ddg, = upstream.requests_for("duckduckgo.com")
    youtube, = upstream.requests_for("www.youtube.com")
    assert parse_qs(google.query) == {"safe": ["active"], "q": ["volcanoes"]}
    assert parse_qs(bing.query)["adlt"] == ["strict"]
    assert parse_qs(ddg.query)["kp"] == ["1"]
    assert youtube.headers["youtube-restrict"] == "Strict"
    # staff are not in a safe_search group
    search(gw, "https://www.google.com/search?q=", "volcanoes", source_ip="127.0.0.2")
    assert "safe" not in parse_qs(upstream.requests_for("www.google.com")[1].query)


def _dns_query(name: str) -> bytes:
    header = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\0"
    return header + labels + struct.pack(">HH", 1, 1)


def test_dns_over_https_and_bare_ip_addresses_are_blocked_and_flagged(start, upstream):
    gw = start()
    message = base64.urlsafe_b64encode(_dns_query("adult.test")).rstrip(b"=").decode()
    unlisted = curl(gw, f"https://resolver.unlisted.test/dns-query?dns={message}", "-H", "Accept: application/dns-message")
    assert unlisted.status == 403  # not on any list: recognised by the request itself
    listed = curl(gw, "https://dns.google/resolve?name=adult.test&type=A")
    assert listed.status == 403  # a known DoH server
    bare_ip = curl(gw, "http://203.0.113.9/")
    assert bare_ip.status == 403 and "bare IP address" in bare_ip.text
    assert upstream.requests == []

    gw.stop()
    rows = records(gw)
    assert [(r["host"], r["verdict"], r["flag"]) for r in rows] == [
        ("resolver.unlisted.test", "block", "circumvention"),
        ("dns.google", "block", "circumvention"),
        ("203.0.113.9", "block", "circumvention"),
    ]
    assert rows[0]["rule"] == "category doh:a DNS-over-HTTPS request"
    assert rows[2]["rule"] == "ip-literal 203.0.113.9"
