"""The request hook decides what a request carries inside it (sites behind
translators, archives and web proxies; DNS over HTTPS by body or by answer),
pinned with mitmproxy's own taddons/tflow and a recorder that keeps records in a list."""

from __future__ import annotations

import json
import struct

import pytest
from mitmproxy import http, websocket
from wsproto.frame_protocol import Opcode

from schoolgate.addons.decision import decision_of

from support.hooks import hook_stack, request_flow, run

POLICY = """\
[gateway]
database = "sqlite+aiosqlite:///{dir}/hooks.db"
metrics_port = 0
default_group = "pupils"
secret_file = "{dir}/gateway.secret"

[categories]
pornography = "block"
vpn-proxy = "block"
doh = "block"

[groups.pupils]
networks = ["10.0.0.0/8"]
block_ip_literals = true
"""


@pytest.fixture
def hooks(tmp_path):
    with hook_stack(tmp_path, POLICY) as stack:
        yield stack


@pytest.fixture(params=[True, False], ids=["search-terms", "no-search-terms"])
def either_hooks(tmp_path, request):
    with hook_stack(tmp_path, POLICY + f"\n[monitoring]\nsearch_terms = {str(request.param).lower()}\n") as stack:
        yield stack


def test_a_blocked_site_behind_google_translate_is_blocked_and_recorded_as_asked(hooks):
    flow = request_flow("https://www-pornhub-com.translate.goog/?_x_tr_sl=auto")
    run(hooks.gate.request(flow))
    assert flow.response is not None and flow.response.status_code == 403
    decision = decision_of(flow)
    assert decision.refused and decision.verdict.category == "pornography" and decision.target.host == "www.pornhub.com"
    hooks.recorder.response(flow)
    (record,) = hooks.records
    assert record.verdict == "block" and "translate.goog" in record.url


def test_an_allowed_site_behind_an_archive_passes(hooks):
    flow = request_flow("https://web.archive.org/web/2020/https://www.bbc.co.uk/news")
    run(hooks.gate.request(flow))
    assert flow.response is None


def test_an_unknown_web_proxy_counts_as_vpn_proxy(hooks):
    flow = request_flow("http://homework-help.example/browse.php?u=https%3A%2F%2Fwww.bbc.co.uk%2F&b=4")
    run(hooks.gate.request(flow))
    assert flow.response is not None and flow.response.status_code == 403
    assert decision_of(flow).verdict.category == "vpn-proxy"


def test_a_name_that_spells_an_ip_is_an_ip_literal(hooks):
    flow = request_flow("http://203-0-113-9.example-wildcard.sslip.io/")
    run(hooks.gate.request(flow))
    assert flow.response is not None and flow.response.status_code == 403


def test_a_post_whose_body_is_a_dns_query_is_doh(hooks):
    query = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0) + b"\x07pornhub\x03com\x00" + struct.pack(">HH", 1, 1)
    flow = request_flow("https://resolver.example/upload", "POST", query, **{"content-type": "application/octet-stream"})
    run(hooks.gate.request(flow))
    assert flow.response is not None and flow.response.status_code == 403
    assert "doh" in decision_of(flow).verdict.categories


def test_dns_answers_from_a_server_the_request_did_not_give_away_are_refused(hooks):
    flow = request_flow("https://innocent-looking.example/api/lookup?x=1")
    run(hooks.gate.request(flow))
    assert flow.response is None
    flow.response = http.Response.make(200, b"\x00\x00\x81\x80", {"content-type": "application/dns-message"})
    hooks.gate.response(flow)
    assert flow.response.status_code == 403
    assert decision_of(flow).refused and "doh" in decision_of(flow).verdict.categories
    hooks.recorder.response(flow)
    assert hooks.records[-1].verdict == "block"


def test_ordinary_answers_are_untouched(hooks):
    flow = request_flow("https://www.bbc.co.uk/")
    run(hooks.gate.request(flow))
    flow.response = http.Response.make(200, b"<html>", {"content-type": "text/html"})
    hooks.gate.response(flow)
    assert flow.response.status_code == 200


def chat_message(flow: http.HTTPFlow, text: str, from_client: bool = True) -> None:
    if flow.websocket is None:
        flow.websocket = websocket.WebSocketData()
    flow.websocket.messages.append(websocket.WebSocketMessage(Opcode.TEXT, from_client, text.encode()))


def test_prompts_over_websockets_are_recorded_and_a_severe_one_closes_the_chat(hooks):
    flow = request_flow("https://copilot.microsoft.com/c/api/chat?api-version=2")
    run(hooks.gate.request(flow))
    assert flow.response is None
    flow.response = http.Response.make(101)
    hooks.recorder.response(flow)  # the upgrade itself
    chat_message(flow, json.dumps({"event": "send", "content": [{"type": "text", "text": "help me revise fractions"}]}))
    hooks.chat.websocket_message(flow)
    assert not flow.websocket.messages[-1].dropped
    chat_message(flow, json.dumps({"event": "appendText", "text": "how to kill myself"}), from_client=False)
    hooks.chat.websocket_message(flow)  # the service's answers are not the pupil's prompts
    chat_message(flow, json.dumps({"event": "send", "content": [{"type": "text", "text": "how to k\u0456ll myself"}]}))
    hooks.chat.websocket_message(flow)
    assert flow.websocket.messages[-1].dropped
    upgrade, revise, severe = hooks.records
    assert revise.search_term == "help me revise fractions" and revise.verdict == "allow" and revise.search_engine == "copilot"
    assert severe.verdict == "block" and severe.flag == "self-harm" and severe.method == "WEBSOCKET"


def test_a_fault_while_deciding_a_websocket_message_drops_it_and_closes_the_chat(hooks, monkeypatch):
    flow = request_flow("https://copilot.microsoft.com/c/api/chat?api-version=2")
    run(hooks.gate.request(flow))
    flow.response = http.Response.make(101)
    hooks.recorder.response(flow)

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(hooks.chat.judge, "decide", broken)
    chat_message(flow, json.dumps({"event": "send", "content": [{"type": "text", "text": "anything"}]}))
    hooks.chat.websocket_message(flow)
    assert flow.websocket.messages[-1].dropped
    assert flow.error is not None  # killed: nothing more crosses the chat


def test_a_prompt_over_a_websocket_is_scored_by_the_phrase_lists_signalr_framed_whatever_search_terms_says(either_hooks):
    hooks = either_hooks
    flow = request_flow("https://copilot.microsoft.com/c/api/chat?api-version=2")
    run(hooks.gate.request(flow))
    flow.response = http.Response.make(101)
    hooks.recorder.response(flow)
    # SignalR: JSON records each ended by \x1e, a handshake and the invocation in one message.
    words = "Write a page for my site: bet now, free spins, welcome bonus, claim your bonus at our live casino"
    invocation = {"type": 1, "target": "chat", "arguments": [{"message": {"text": words}}]}
    chat_message(flow, json.dumps({"protocol": "json", "version": 1}) + "\x1e" + json.dumps(invocation) + "\x1e")
    hooks.chat.websocket_message(flow)
    assert flow.websocket.messages[-1].dropped and flow.error is not None
    prompt = hooks.records[-1]
    assert prompt.verdict == "block" and prompt.rule.startswith("content gambling") and prompt.method == "WEBSOCKET"
