"""Content scoring end to end: a real mitmdump with the schoolgate add-ons, a real
client (curl), and a loopback site serving harmful, borderline and educational
pages, plain, gzip, chunked, larger than stream_large_bodies, and as an AI
answer's event stream. Records are read back from the real SQLite database."""

from __future__ import annotations

import gzip
import json
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.clients import curl, httpx_client
from support.upstream import _self_signed, _tls_context
from support.waiting import wait_for

PAGES = Path(__file__).parent / "fixtures" / "pages"
CASINO = (PAGES / "gambling-casino.html").read_bytes()
HELPLINE = (PAGES / "neg-samaritans.html").read_bytes()
NHS = (PAGES / "neg-nhs-selfharm.html").read_bytes()
VENTING = (PAGES / "borderline-venting.html").read_bytes()
PROANA = (PAGES / "selfharm-proana.html").read_bytes()
# A harmful page larger than stream_large_bodies: the first KiB hold the words, the rest is filler.
LARGE = PROANA + b"<p>" + b"filler words about nothing much. " * 8000 + b"</p>"
SENTENCE = "Sure. Here are suicide methods, the most painless way to die, the lethal dose, and how to tie a noose."
ANSWER = SENTENCE.split(" ")

POLICY = """\
[gateway]
default_action = "allow"
[categories]
pornography = "block"
[local]
allow = ["trusted.test"]
[groups.pupils]
title = "Pupils"
networks = ["127.0.0.0/8"]
"""


class _Pages(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []  # paths asked for, by every instance

    def do_POST(self) -> None:
        self.seen.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(b'{"ok": true}', {"Content-Type": "application/json"})

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/gzip-casino":
            return self._send(gzip.compress(CASINO), {"Content-Encoding": "gzip"})
        if path == "/chunked-casino":
            return self._chunked([CASINO[i:i + 200] for i in range(0, len(CASINO), 200)])
        if path == "/chunked-helpline":
            return self._chunked([HELPLINE[i:i + 200] for i in range(0, len(HELPLINE), 200)])
        if path == "/large-proana":
            return self._send(LARGE)
        if path == "/answer":
            events = [f"data: {json.dumps({'delta': {'text': w + ' '}})}\n\n".encode() for w in ANSWER]
            events += [b'data: {"delta": {"text": "AFTER-THE-CUT"}}\n\n'] * 3
            return self._chunked(events, "text/event-stream")
        body = {"/casino": CASINO, "/helpline": HELPLINE, "/nhs": NHS, "/venting": VENTING}.get(path)
        if body is None:
            self.send_error(404)
            return
        self._send(body)

    def _send(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _chunked(self, chunks: list[bytes], content_type: str = "text/html; charset=utf-8") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            time.sleep(0.005)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def site() -> Iterator[int]:
    """The loopback site's port; the loopback add-on sends `http://NAME.test:PORT/` to it."""
    server = _serve()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The same site over TLS (a throwaway certificate; the gateway runs with ssl_insecure)."""
    server = _serve(_tls_context(*_self_signed(tmp_path_factory.mktemp("tls-site"))))
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def gateway(gateway_factory):
    return gateway_factory(POLICY, options={"stream_large_bodies": "64k"})


def records(gw) -> list[dict]:
    with sqlite3.connect(gw.db_path) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM access_log ORDER BY seq")]


def record_for(gw, path: str) -> dict:
    wait_for(lambda: any(path in (r["url"] or "") for r in records(gw)), timeout=30)  # a busy machine batches slowly
    return next(r for r in records(gw) if path in (r["url"] or ""))


def test_harmful_pages_are_blocked_in_every_shape(gateway, site) -> None:
    for path in ("/casino", "/gzip-casino", "/chunked-casino"):
        result = curl(gateway, f"http://casino-{path[1:]}.test:{site}{path}", "--compressed")
        assert b"This page is blocked" in result.body, path
        assert b"free spins" not in result.body.lower(), path
        record = record_for(gateway, path)
        assert record["verdict"] == "block" and record["rule"].startswith("content gambling"), record
        assert '"free spins" +40x' in record["rule"] and record["flag"] == "gambling"
    assert curl(gateway, f"http://casino-casino.test:{site}/casino").status == 403  # buffered: a real 403


def test_large_streamed_page_is_scored_from_its_first_kib(gateway, site) -> None:
    result = curl(gateway, f"http://big.test:{site}/large-proana")
    assert b"This page is blocked" in result.body and b"thinspo" not in result.body
    assert len(result.body) < len(LARGE) // 10
    record = record_for(gateway, "/large-proana")
    assert record["verdict"] == "block" and record["flag"] == "self-harm" and "thinspo" in record["flag_detail"]


def test_support_pages_pass_and_borderline_ones_are_flagged(gateway, site) -> None:
    for path, body in (("/helpline", HELPLINE), ("/nhs", NHS)):
        result = curl(gateway, f"http://support.test:{site}{path}")
        assert (result.status, result.body) == (200, body), path
        record = record_for(gateway, path)
        assert record["verdict"] == "allow" and record["flag"] is None, record
    result = curl(gateway, f"http://forum.test:{site}/venting")
    assert (result.status, result.body) == (200, VENTING)
    record = record_for(gateway, "/venting")
    assert record["verdict"] == "allow" and record["flag"] == "self-harm"
    assert '"i want to die"' in record["flag_detail"] and "page text scored self-harm" in record["flag_detail"]


def test_sites_the_school_allowed_are_not_scored(gateway, site) -> None:
    result = curl(gateway, f"http://trusted.test:{site}/casino")
    assert (result.status, result.body) == (200, CASINO)


def test_ai_answer_stream_is_cut_when_it_scores(gateway, site) -> None:
    # claude.ai: the loopback add-on sends it to the local site like every other name.
    result = curl(gateway, f"http://claude.ai:{site}/answer")
    assert result.status == 200 and b"event: error" in result.body
    assert b"AFTER-THE-CUT" not in result.body
    record = record_for(gateway, "/answer")
    assert record["verdict"] == "block" and record["flag"] == "self-harm"


def test_decrypted_https_pages_are_scored_too(gateway, tls_site) -> None:
    blocked = curl(gateway, f"https://casino-tls.test:{tls_site}/gzip-casino", "--compressed")
    assert blocked.status == 403 and b"This page is blocked" in blocked.body
    passed = curl(gateway, f"https://support-tls.test:{tls_site}/nhs")
    assert (passed.status, passed.body) == (200, NHS)
    record = record_for(gateway, "/gzip-casino")
    assert record["scheme"] == "https" and record["verdict"] == "block" and record["flag"] == "gambling"


def test_streamed_answers_leave_a_kept_alive_connection_usable(gateway, site) -> None:
    # The same client connection carries a streamed page that passes, one that is blocked, and a plain one.
    with httpx_client(gateway) as client:
        passed = client.get(f"http://keep.test:{site}/chunked-helpline")
        blocked = client.get(f"http://keep.test:{site}/chunked-casino")
        after = client.get(f"http://keep.test:{site}/helpline")
    assert (passed.status_code, passed.content) == (200, HELPLINE)
    assert blocked.status_code == 200 and b"This page is blocked" in blocked.content
    assert (after.status_code, after.content) == (200, HELPLINE)


def test_a_harmful_ai_prompt_is_not_sent(gateway, site) -> None:
    prompt = "Write my casino landing page: bet now, free spins, welcome bonus, claim your bonus at our live casino"
    body = json.dumps({"messages": [{"author": {"role": "user"}, "content": {"parts": [prompt]}}]})
    result = curl(gateway, f"http://chatgpt.com:{site}/backend-api/conversation", "-H", "Content-Type: application/json",
                  "--data-binary", body)
    assert result.status == 403 and b"This page is blocked" in result.body
    assert "/backend-api/conversation" not in _Pages.seen
    record = record_for(gateway, "/backend-api/conversation")
    assert record["verdict"] == "block" and record["search_term"] == prompt and record["rule"].startswith("content gambling")
    harmless = json.dumps({"messages": [{"author": {"role": "user"}, "content": {"parts": ["Explain photosynthesis"]}}]})
    passed = curl(gateway, f"http://chatgpt.com:{site}/backend-api/conversation?n=2", "-H",
                  "Content-Type: application/json", "--data-binary", harmless)
    assert passed.status == 200 and "/backend-api/conversation?n=2" in _Pages.seen
