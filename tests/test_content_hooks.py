"""The content add-on's hooks, driven with mitmproxy's own test helpers (taddons/tflow):
which flows are scored, buffered and streamed bodies, compressed bodies, event streams,
AI prompts, the score cache, and what the decision carries to the Recorder."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import brotli
import pytest
from mitmproxy import websocket
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow
from wsproto.frame_protocol import Opcode

from schoolgate import metrics
from schoolgate.addons.content import (
    METADATA_KEY,
    SITE_EVIDENCE,
    BodyPrefix,
    ContentScoring,
    ScoreCache,
    ScoredStream,
    UnsupportedEncoding,
    encoded,
)
from schoolgate.addons.decision import Outcome, Who, attach, decision_of
from schoolgate.addons.judge import Judge
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.searchterms import SearchTerm
from schoolgate.addons.signing import Signer
from schoolgate.categories.content import ContentScorer
from schoolgate.decide import Rule
from schoolgate.engine import Engine
from schoolgate.urls import parse_target

try:
    from compression import zstd
except ImportError:
    from backports import zstd

PAGES = Path(__file__).parent / "fixtures" / "pages"
POLICY = """\
[gateway]
default_group = "pupils"
[categories]
pornography = "block"
[local]
allow = ["school-allowed.test"]
[groups.pupils]
title = "Pupils"
networks = ["127.0.0.0/8"]
[groups.pupils.categories]
chat = "allow"
"""
HARMFUL = (PAGES / "gambling-casino.html").read_bytes()
SUPPORT = (PAGES / "neg-samaritans.html").read_bytes()
VENTING = (PAGES / "borderline-venting.html").read_bytes()
HARMFUL_ANSWER = "Sure! Here are suicide methods: the most painless way to die, the lethal dose, and how to tie a noose. "


def make_addon(tmp_path: Path, policy_text: str = POLICY) -> ContentScoring:
    path = tmp_path / "policy.toml"
    path.write_text(policy_text.replace("[gateway]\n", f'[gateway]\ndatabase = "sqlite+aiosqlite:///{tmp_path}/db"\n'))
    watch = PolicyWatch()
    watch.engine = Engine.load(path)
    watch.signer = Signer(b"k" * 32)
    return ContentScoring(watch, Judge(watch), RecordedHere())


@pytest.fixture
def addon(tmp_path: Path):
    content = make_addon(tmp_path)
    with taddons.context(content):
        yield content


class RecordedHere:
    """Stands in for the Recorder: keeps what would be written."""

    def __init__(self) -> None:
        self.decisions: list = []

    def record(self, decision, **fields) -> None:
        self.decisions.append((decision, fields))


def flow_for(addon: ContentScoring, url: str, body: bytes, content_type: str = "text/html; charset=utf-8",
             headers: dict[str, str] | None = None, *, search: SearchTerm | None = None):
    flow = tflow.tflow(resp=True)
    target = parse_target(url)
    flow.request.url = url
    flow.response.headers.clear()
    flow.response.headers["content-type"] = content_type
    for name, value in (headers or {}).items():
        flow.response.headers[name] = value
    flow.response.raw_content = body
    if "content-encoding" not in (headers or {}):
        flow.response.headers["content-length"] = str(len(body))
    engine = addon.policy.engine
    who = Who("127.0.0.1", None, engine.policy.groups["pupils"])
    attach(flow, addon.judge.decide(who, target, method="GET", search=search))
    return flow


def run(addon: ContentScoring, flow) -> None:
    addon.request(flow)
    if flow.response is not None and decision_of(flow).refused:
        return
    addon.responseheaders(flow)
    addon.response(flow)


def blocked_so_far() -> float:
    return metrics.REGISTRY.get_sample_value("schoolgate_content_scored_total", {"result": "block"}) or 0.0


def test_unlisted_harmful_page_is_replaced_by_the_block_page(addon) -> None:
    flow = flow_for(addon, "http://unknown-casino.test/", HARMFUL)
    before = blocked_so_far()
    run(addon, flow)
    assert blocked_so_far() == before + 1
    decision = decision_of(flow)
    assert flow.response.status_code == 403 and b"This page is blocked" in flow.response.content
    assert decision.outcome is Outcome.BLOCK and decision.verdict.rule is Rule.CONTENT
    assert decision.verdict.category == "gambling" and '"free spins" +40x' in decision.verdict.matched
    assert decision.verdict.flag.risk == "gambling" and "page text scored gambling" in decision.verdict.flag.detail


def test_support_page_passes_untouched(addon) -> None:
    flow = flow_for(addon, "http://helpline.test/", SUPPORT)
    run(addon, flow)
    assert flow.response.status_code == 200 and flow.response.content == SUPPORT
    assert decision_of(flow).outcome is Outcome.ALLOW and decision_of(flow).verdict.flag is None


def test_borderline_page_passes_but_is_flagged_with_its_phrases(addon) -> None:
    flow = flow_for(addon, "http://forum.test/t/1", VENTING)
    run(addon, flow)
    decision = decision_of(flow)
    assert flow.response.content == VENTING and decision.outcome is Outcome.ALLOW
    assert decision.verdict.flag.risk == "self-harm" and '"i want to die"' in decision.verdict.flag.detail
    assert "content flagged" in decision.rule_text


def test_sites_decided_by_a_list_or_not_text_are_not_scored(addon) -> None:
    allowed = flow_for(addon, "http://school-allowed.test/", HARMFUL)
    image = flow_for(addon, "http://unknown.test/a.png", HARMFUL, "image/png")
    for flow in (allowed, image):
        run(addon, flow)
        assert flow.response.content == HARMFUL and METADATA_KEY not in flow.metadata


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_compressed_bodies_are_decoded(addon, coding: str) -> None:
    flow = flow_for(addon, f"http://{coding}.test/", encoded(HARMFUL, coding), headers={"content-encoding": coding})
    flow.response.headers["content-length"] = str(len(flow.response.raw_content))
    run(addon, flow)
    assert flow.response.status_code == 403 and decision_of(flow).verdict.category == "gambling"


def test_undecodable_body_is_not_shown(addon) -> None:
    flow = flow_for(addon, "http://broken.test/", b"not gzip at all" * 10, headers={"content-encoding": "gzip"})
    flow.response.headers["content-length"] = "150"
    run(addon, flow)
    assert flow.response.status_code == 403 and decision_of(flow).refused


def test_decoding_is_bounded_against_compression_bombs() -> None:
    bomb = gzip.compress(b"a" * (50 << 20))  # 50 MiB of "a" in about 50 KiB
    for coding, data in (("gzip", bomb), ("br", brotli.compress(b"a" * (50 << 20))),
                         ("zstd", zstd.compress(b"a" * (50 << 20)))):
        prefix = BodyPrefix(coding, 64 * 1024)
        for i in range(0, len(data), 16 * 1024):
            prefix.feed(data[i:i + 16 * 1024])
        assert len(prefix.data) == 64 * 1024 and not prefix.broken, coding
    raw = zlib.compressobj(wbits=-15)
    prefix = BodyPrefix("deflate", 1024)  # raw deflate, without the zlib header some servers leave out
    prefix.feed(raw.compress(b"hello world") + raw.flush())
    assert bytes(prefix.data) == b"hello world"
    with pytest.raises(UnsupportedEncoding):
        BodyPrefix("compress", 10)


def stream_through(flow, chunks: list[bytes]) -> bytes:
    out = []
    for chunk in [*chunks, b""]:
        result = flow.response.stream(chunk)
        out.extend([result] if isinstance(result, bytes) else result)
    assert b"" not in out  # an empty chunk would end an HTTP/1.1 chunked body early
    return b"".join(out)


def test_streamed_html_is_held_then_replaced_by_the_block_page(addon) -> None:
    flow = flow_for(addon, "http://chunked-casino.test/", b"", headers={"transfer-encoding": "chunked"})
    del flow.response.headers["content-length"]
    addon.request(flow)
    addon.responseheaders(flow)
    assert isinstance(flow.response.stream, ScoredStream)
    assert flow.response.headers["transfer-encoding"] == "chunked"
    chunks = [HARMFUL[i:i + 100] for i in range(0, len(HARMFUL), 100)]
    assert flow.response.stream(chunks[0]) == []  # held until scored
    sent = stream_through(flow, chunks[1:])
    addon.response(flow)
    assert b"This page is blocked" in sent and b"free spins" not in sent
    assert decision_of(flow).refused and decision_of(flow).verdict.category == "gambling"


def test_streamed_harmless_html_is_released_whole(addon) -> None:
    flow = flow_for(addon, "http://big-helpline.test/", b"")
    flow.response.stream = True  # as stream_large_bodies sets it for a large body
    addon.responseheaders(flow)
    sent = stream_through(flow, [SUPPORT[:300], SUPPORT[300:]])
    addon.response(flow)
    assert sent == SUPPORT and not decision_of(flow).refused
    assert "content-length" not in flow.response.headers  # so a block page of another length could replace it


def test_streamed_gzip_block_page_is_gzipped_like_the_headers_say(addon) -> None:
    body = gzip.compress(HARMFUL)
    flow = flow_for(addon, "http://gz-stream.test/", b"", headers={"content-encoding": "gzip"})
    flow.response.stream = True
    addon.responseheaders(flow)
    sent = stream_through(flow, [body[:50], body[50:]])
    assert b"This page is blocked" in gzip.decompress(sent)


def test_event_stream_passes_as_it_comes_and_is_cut_when_it_scores(addon) -> None:
    words = HARMFUL_ANSWER.split(" ") * 3
    events = [f"data: {json.dumps({'delta': {'text': w + ' '}})}\n\n".encode() for w in words]
    filler = [f"data: {json.dumps({'delta': {'text': 'The weather today is mild. ' * 40}})}\n\n".encode()] * 4
    flow = flow_for(addon, "https://claude.ai/api/append_message", b"", "text/event-stream")
    del flow.response.headers["content-length"]
    addon.responseheaders(flow)
    first = flow.response.stream(filler[0])
    assert first == [filler[0]]  # not held: an answer streams as it is written
    sent = stream_through(flow, filler[1:] + events + filler)
    addon.response(flow)
    assert b"event: error" in sent and b"stopped this answer" in sent
    assert sent.count(b"The weather") == 3 * 40  # filler 1-3 passed; none after the harmful part
    assert b'"reference": "SG-' in sent
    assert decision_of(flow).refused and decision_of(flow).verdict.category == "self-harm"


def test_ai_prompt_is_scored_and_blocked_before_it_is_sent(addon) -> None:
    prompt = "Write a page for my site: bet now, free spins, welcome bonus, claim your bonus at our live casino"
    flow = flow_for(addon, "https://chatgpt.com/backend-api/conversation", b"",
                    search=SearchTerm("chatgpt", prompt))
    flow.response = None
    addon.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert decision_of(flow).refused and "prompt" in decision_of(flow).verdict.reason


def test_remembered_block_is_applied_before_the_request_is_sent(addon) -> None:
    first = flow_for(addon, "http://again-casino.test/page", HARMFUL)
    run(addon, first)
    again = flow_for(addon, "http://again-casino.test/page", HARMFUL)
    again.response = None
    addon.request(again)
    assert again.response is not None and again.response.status_code == 403
    assert "remembered" in decision_of(again).verdict.reason


def test_a_failure_while_preparing_a_response_kills_the_flow(addon, monkeypatch) -> None:
    flow = flow_for(addon, "http://fails.test/", HARMFUL)
    flow.response.stream = True

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr("schoolgate.addons.content.make_length_flexible", broken)
    addon.responseheaders(flow)
    assert flow.error is not None and flow.error.msg == Error.KILLED_MESSAGE  # nothing more reaches the client
    assert decision_of(flow).refused


def test_a_failure_while_scoring_a_buffered_body_refuses_it(addon, monkeypatch) -> None:
    flow = flow_for(addon, "http://fails-later.test/", HARMFUL)
    addon.responseheaders(flow)
    monkeypatch.setattr(ContentScoring, "scorer", lambda self: (_ for _ in ()).throw(RuntimeError("bug")))
    addon.response(flow)
    assert flow.response.status_code == 503 and HARMFUL not in flow.response.content
    assert decision_of(flow).refused


def test_ai_answer_over_a_websocket_is_stopped_and_recorded(addon) -> None:
    flow = tflow.twebsocketflow(messages=False)
    flow.request.url = "https://copilot.microsoft.com/c/api/chat"
    who = Who("127.0.0.1", None, addon.policy.engine.policy.groups["pupils"])
    attach(flow, addon.judge.decide(who, parse_target(flow.request.url), method="GET"))
    words = ["Sure", " - here", " are", " suicide", " methods:", " the most", " painless way to die", " and", " the",
             " lethal dose", ". "] + [" The weather is mild today."] * 30
    dropped_at = None
    for n, word in enumerate(words):
        record = json.dumps({"event": "appendText", "text": word}) + "\x1e"
        flow.websocket.messages.append(websocket.WebSocketMessage(Opcode.TEXT, False, record.encode()))
        addon.websocket_message(flow)
        if flow.websocket.messages[-1].dropped:
            dropped_at = n
            break
    assert dropped_at is not None and dropped_at < len(words) - 1
    assert flow.error is not None and flow.error.msg == Error.KILLED_MESSAGE
    decision, fields = addon.recorder.decisions[-1]
    assert decision.method == "WEBSOCKET" and decision.refused and decision.verdict.category == "self-harm"
    assert "painless way to die" in decision.verdict.flag.detail and fields["bytes_out"] > 0


def test_harmless_ai_answer_over_a_websocket_passes_unrecorded(addon) -> None:
    flow = tflow.twebsocketflow(messages=False)
    flow.request.url = "https://copilot.microsoft.com/c/api/chat"
    who = Who("127.0.0.1", None, addon.policy.engine.policy.groups["pupils"])
    attach(flow, addon.judge.decide(who, parse_target(flow.request.url), method="GET"))
    for word in ["Photosynthesis", " turns light", " into sugar."] * 40:
        flow.websocket.messages.append(websocket.WebSocketMessage(
            Opcode.TEXT, False, json.dumps({"event": "appendText", "text": word}).encode()))
        addon.websocket_message(flow)
        assert not flow.websocket.messages[-1].dropped
    assert addon.recorder.decisions == [] and flow.error is None


def test_a_site_with_several_blocked_pages_is_blocked_before_the_next_is_fetched(addon) -> None:
    for n in range(3):
        run(addon, flow_for(addon, f"http://new-casino.test/game/{n}", HARMFUL))
    other_site = flow_for(addon, "http://another.test/game/9", HARMFUL)
    other_site.response = None
    addon.request(other_site)
    assert other_site.response is None  # evidence is per site
    unseen = flow_for(addon, "http://new-casino.test/about", b"")
    unseen.response = None
    addon.request(unseen)
    assert unseen.response is not None and unseen.response.status_code == 403
    assert "3 of its pages blocked" in decision_of(unseen).verdict.reason


@pytest.mark.parametrize(("content", "url", "scored"), [
    ("", "http://discord.com/channels/1", True),  # listed as chat, a category that carries risk
    ("", "http://www.youtube.com/about", False),  # listed as streaming: the list decides
    ('[content]\ncategories = []\n', "http://discord.com/channels/1", False),
    ('[content]\nenabled = false\n', "http://unlisted.test/", False),
    ("[content]\nblock_at = 1000\nflag_at = 999\n", "http://unlisted.test/", False),
    ("content_scoring = false\n", "http://unlisted.test/", False),  # a [groups.pupils] setting
])
def test_what_the_policy_says_is_scored(tmp_path: Path, content: str, url: str, scored: bool) -> None:
    group_line = 'networks = ["127.0.0.0/8"]\n'
    addon = make_addon(tmp_path, POLICY + content if content.startswith("[") or not content
                       else POLICY.replace(group_line, group_line + content))
    with taddons.context(addon):
        flow = flow_for(addon, url, HARMFUL)
        run(addon, flow)
    assert (flow.response.status_code == 403) is scored, decision_of(flow).rule_text


def test_a_group_may_have_its_own_thresholds(tmp_path: Path) -> None:
    addon = make_addon(tmp_path, POLICY.replace('networks = ["127.0.0.0/8"]\n',
                                                'networks = ["127.0.0.0/8"]\ncontent_block_at = 5000\n'))
    with taddons.context(addon):
        flow = flow_for(addon, "http://unlisted.test/", HARMFUL)
        run(addon, flow)
    assert flow.response.content == HARMFUL and decision_of(flow).verdict.flag.risk == "gambling"  # flagged only


def test_streamed_body_that_cannot_be_decoded_is_replaced(addon) -> None:
    flow = flow_for(addon, "http://broken-stream.test/", b"", headers={"content-encoding": "gzip"})
    flow.response.stream = True
    addon.responseheaders(flow)
    sent = stream_through(flow, [b"this is not gzip " * 20, HARMFUL])
    assert b"This page is blocked" in gzip.decompress(sent) and b"free spins" not in sent
    assert decision_of(flow).refused and decision_of(flow).verdict.matched == "undecodable body"


def test_another_add_ons_stream_function_sees_what_is_let_through(addon) -> None:
    seen: list[bytes] = []

    def counting(data: bytes) -> bytes:
        seen.append(data)
        return data

    flow = flow_for(addon, "http://chained.test/", b"")
    flow.response.stream = counting
    addon.responseheaders(flow)
    sent = stream_through(flow, [HARMFUL[:100], HARMFUL[100:]])
    assert b"This page is blocked" in sent and b"".join(seen) == sent and seen[-1] == b""


def test_score_cache_keeps_only_the_strongest_pages_per_site_and_forgets_with_the_lru() -> None:
    scorer = ContentScorer.default()
    casino, mild, harmless = scorer.score("bet now free spins welcome bonus"), scorer.score("roulette"), scorer.score("hello")
    cache = ScoreCache(ttl_seconds=600, size=50)
    for n in range(40):
        cache.put(f"http://site.test/{n}", "site.test", harmless if n % 2 else mild)
    for n in range(3):
        cache.put(f"http://site.test/casino/{n}", "site.test", casino)
    strongest = cache.strongest("site.test")
    assert list(strongest) == ["gambling"] and strongest["gambling"] == [casino] * SITE_EVIDENCE
    for n in range(60):  # push everything of site.test out of the LRU
        cache.put(f"http://other.test/{n}", "other.test", harmless)
    assert cache.strongest("site.test") == {} and cache.get("http://site.test/casino/0") is None
    assert ScoreCache(ttl_seconds=0).get("x") is None


def test_ai_answers_are_scored_every_time_not_remembered_by_address(addon) -> None:
    """An AI chat endpoint answers something new each time: a harmless answer first must not
    let a harmful one through, nor one blocked answer block every later one unread."""
    url = "https://chatgpt.com/backend-api/conversation"
    harmless = flow_for(addon, url, json.dumps({"message": "Fractions are parts of a whole."}).encode(),
                        "application/json")
    harmless.request.method = "POST"
    run(addon, harmless)
    assert not decision_of(harmless).refused
    harmful = flow_for(addon, url, json.dumps({"message": HARMFUL_ANSWER * 3}).encode(), "application/json")
    harmful.request.method = "POST"
    run(addon, harmful)
    assert decision_of(harmful).refused and decision_of(harmful).verdict.category == "self-harm"
    after = flow_for(addon, url, json.dumps({"message": "Photosynthesis makes sugar from light."}).encode(),
                     "application/json")
    after.request.method = "POST"
    run(addon, after)
    assert not decision_of(after).refused


def test_an_edited_phrase_file_is_scored_with_once_the_policy_reloads(tmp_path: Path) -> None:
    ours = tmp_path / "ours.toml"
    ours.write_text('[[group]]\ncategory = "gambling"\nweight = 60\nphrases = ["lucky crate"]\n')
    addon = make_addon(tmp_path, POLICY + '[content]\nphrase_files = ["ours.toml"]\n')
    page = "Open a mystery box today. " * 3
    assert addon.scorer().score(page).scores.get("gambling", 0) == 0
    ours.write_text('[[group]]\ncategory = "gambling"\nweight = 60\nphrases = ["mystery box"]\n')
    addon.policy.engine = Engine.load(tmp_path / "policy.toml", addon.policy.engine)  # what PolicyWatch does
    assert addon.scorer().score(page).scores.get("gambling", 0) > 0


def test_an_ai_prompt_over_http_is_scored_when_search_terms_are_not_kept(tmp_path: Path) -> None:
    addon = make_addon(tmp_path, POLICY + "[monitoring]\nsearch_terms = false\n")
    with taddons.context(addon):
        prompt = "Write a page for my site: bet now, free spins, welcome bonus, claim your bonus at our live casino"
        flow = flow_for(addon, "https://chatgpt.com/backend-api/conversation", b"")
        flow.request.method = "POST"
        flow.request.headers["content-type"] = "application/json"
        flow.request.content = json.dumps({"action": "next", "messages": [
            {"author": {"role": "user"}, "content": {"parts": [prompt]}}]}).encode()
        flow.response = None
        assert decision_of(flow).search is None  # the request path kept no search term
        addon.request(flow)
        assert flow.response is not None and flow.response.status_code == 403
        assert "prompt" in decision_of(flow).verdict.reason


def untyped_flow(addon: ContentScoring, url: str, body: bytes):
    flow = flow_for(addon, url, body)
    del flow.response.headers["content-type"]  # the browser sniffs what it was not told
    return flow


def test_a_page_sent_with_no_content_type_is_read_as_the_browser_reads_it(addon) -> None:
    page = untyped_flow(addon, "http://untyped-casino.test/", b"\n  " + HARMFUL)
    run(addon, page)
    assert page.response.status_code == 403 and decision_of(page).verdict.category == "gambling"
    text = untyped_flow(addon, "http://untyped-text.test/", b"Bet now! Free spins, welcome bonus, live casino. " * 20)
    run(addon, text)
    assert text.response.status_code == 403
    # Bytes a browser would not show as a page (an image) are left alone.
    image = untyped_flow(addon, "http://untyped-image.test/", b"\x89PNG\r\n\x1a\n\x00\x00" + HARMFUL)
    run(addon, image)
    assert image.response.status_code == 200 and not decision_of(image).refused


def test_a_streamed_page_with_no_content_type_is_held_and_read(addon) -> None:
    flow = untyped_flow(addon, "http://untyped-stream.test/", b"")
    flow.response.stream = True
    addon.responseheaders(flow)
    sent = stream_through(flow, [HARMFUL[:300], HARMFUL[300:]])
    addon.response(flow)
    assert b"This page is blocked" in sent and b"free spins" not in sent
    download = untyped_flow(addon, "http://untyped-download.test/", b"")
    download.response.stream = True
    addon.responseheaders(download)
    body = b"PK\x03\x04\x00\x00" + HARMFUL
    assert stream_through(download, [body[:300], body[300:]]) == body
