"""Search terms are read from the search and video sites' URLs and in-page APIs."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from schoolgate.addons.searchterms import (
    MAX_QUERY_LENGTH,
    SearchTerm,
    engine_for_host,
    extract_prompt_from_message,
    extract_search,
    extract_search_from_body,
)
from schoolgate.urls import parse_target


@pytest.mark.parametrize(
    ("url", "engine", "query"),
    [
        ("https://www.google.com/search?q=How+To+Revise&oq=how", "google", "How To Revise"),
        ("https://www.google.co.uk/search?client=firefox&q=caf%C3%A9+near+me", "google", "café near me"),
        ("https://google.fr/search?q=r%C3%A9vision", "google", "révision"),
        ("https://www.google.com.au/search?q=koala", "google", "koala"),
        ("https://www.google.com/complete/search?q=how+to+k&client=gws-wiz", "google", "how to k"),
        ("https://suggestqueries.google.com/complete/search?client=firefox&q=maths", "google", "maths"),
        ("https://www.bing.com/search?q=Year+9+Maths&form=QBLH", "bing", "Year 9 Maths"),
        ("https://www.bing.com/AS/Suggestions?pt=page.home&qry=revis&cvid=1", "bing", "revis"),
        ("https://www.bing.com/images/search?q=cats", "bing", "cats"),
        ("https://duckduckgo.com/?q=privacy+tips&t=h_", "duckduckgo", "privacy tips"),
        ("https://html.duckduckgo.com/html/?q=history+homework", "duckduckgo", "history homework"),
        ("https://duckduckgo.com/ac/?q=hist&kl=wt-wt", "duckduckgo", "hist"),
        ("https://search.yahoo.com/search?p=weather+leeds&fr=yfp", "yahoo", "weather leeds"),
        ("https://uk.search.yahoo.com/search;_ylt=AwrE?p=bus+times", "yahoo", "bus times"),
        ("https://www.ecosia.org/search?method=index&q=trees", "ecosia", "trees"),
        ("https://www.youtube.com/results?search_query=minecraft+tutorial", "youtube", "minecraft tutorial"),
        ("https://m.youtube.com/results?search_query=lofi", "youtube", "lofi"),
        ("https://en.wikipedia.org/w/index.php?search=Photosynthesis&title=Special%3ASearch", "wikipedia", "Photosynthesis"),
        ("https://pl.wikipedia.org/w/api.php?action=opensearch&format=json&search=Krak%C3%B3w", "wikipedia", "Kraków"),
        ("https://en.wikipedia.org/w/api.php?action=query&list=search&srsearch=tudors", "wikipedia", "tudors"),
        ("https://en.m.wikipedia.org/w/rest.php/v1/search/title?q=Volcano&limit=10", "wikipedia", "Volcano"),
        ("https://www.google.com/search?q=%20%20spaced%20%20out%20", "google", "spaced out"),
        # engines and forms that escaped monitoring before
        ("https://images.google.com/search?q=rope&tbm=isch", "google", "rope"),
        ("https://images.google.co.uk/images?q=rope", "google", "rope"),
        ("https://news.google.com/search?q=knife+crime&hl=en-GB", "google", "knife crime"),
        ("https://www.google.com/search?as_q=how+to&as_epq=end+it+all&as_oq=", "google", "how to end it all"),
        ("https://global.bing.com/search?q=overdose&mkt=en-gb", "bing", "overdose"),
        ("https://search.brave.com/search?q=how+many+pills&source=web", "brave", "how many pills"),
        ("https://search.brave.com/api/suggest?q=how+to+k", "brave", "how to k"),
        ("https://www.startpage.com/sp/search?query=hanging&cat=web", "startpage", "hanging"),
        ("https://yandex.com/search/?text=buy+knife&lr=1", "yandex", "buy knife"),
        ("https://ya.ru/search/?text=hello", "yandex", "hello"),
        ("https://www.ask.com/web?q=self+harm&qo=homepage", "ask", "self harm"),
        ("https://search.aol.com/aol/search?q=weather", "aol", "weather"),
        ("https://www.qwant.com/?q=revision&t=web", "qwant", "revision"),
        ("https://www.mojeek.com/search?q=volcano", "mojeek", "volcano"),
        ("https://kagi.com/search?q=volcano", "kagi", "volcano"),
        ("https://www.baidu.com/s?wd=volcano", "baidu", "volcano"),
        ("https://www.pinterest.co.uk/search/pins/?q=thinspo&rs=typed", "pinterest", "thinspo"),
        ("https://uk.pinterest.com/search/pins/?q=thinspo", "pinterest", "thinspo"),
        ("https://www.tiktok.com/search?q=blackout+challenge", "tiktok", "blackout challenge"),
        ("https://www.reddit.com/search/?q=vape", "reddit", "vape"),
        ("https://x.com/search?q=fight&src=typed_query", "x", "fight"),
        ("https://chatgpt.com/?q=help+me+revise", "chatgpt", "help me revise"),
        ("https://www.perplexity.ai/search?q=capital+of+peru", "perplexity", "capital of peru"),
    ],
)
def test_search_urls(url: str, engine: str, query: str) -> None:
    assert extract_search(parse_target(url)) == SearchTerm(engine, query)


@pytest.mark.parametrize(
    "url",
    [
        "https://www.google.com/maps?q=london",  # not a search endpoint
        "https://www.pinterest.com/pin/12345/?q=x",
        "https://chatgpt.com/c/abc?model=gpt-4o",
        "https://www.google.com/search?tbm=isch",  # no term
        "https://www.google.com/search?q=",
        "https://mail.google.com/search?q=secret",  # not a search host
        "https://notgoogle.com/search?q=x",
        "https://www.google.evil.com/search?q=x",
        "https://example.com/search?q=x",
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        "https://en.wikipedia.org/wiki/Photosynthesis",
    ],
)
def test_not_searches(url: str) -> None:
    assert extract_search(parse_target(url)) is None


def test_query_is_capped() -> None:
    term = extract_search(parse_target("https://www.bing.com/search?q=" + "a" * 5000))
    assert term is not None and len(term.query) == MAX_QUERY_LENGTH


def test_youtube_in_page_search_api() -> None:
    target = parse_target("https://www.youtube.com/youtubei/v1/search?prettyPrint=false")
    body = json.dumps({"context": {"client": {"clientName": "WEB"}}, "query": "Science Revision"}).encode()
    assert extract_search_from_body(target, "application/json", body) == SearchTerm("youtube", "Science Revision")
    assert extract_search_from_body(target, "application/json; charset=utf-8", b"not json") is None
    assert extract_search_from_body(target, "application/json", b'{"browseId": "x"}') is None
    other = parse_target("https://www.youtube.com/youtubei/v1/next")
    assert extract_search_from_body(other, "application/json", body) is None


def test_form_post_search() -> None:
    target = parse_target("https://html.duckduckgo.com/html/")
    body = b"q=caf%C3%A9+opening+times&b="
    assert extract_search_from_body(target, "application/x-www-form-urlencoded", body) == SearchTerm(
        "duckduckgo", "café opening times"
    )
    assert extract_search_from_body(parse_target("https://example.com/html/"), "application/x-www-form-urlencoded", body) is None


def test_engine_for_host() -> None:
    assert engine_for_host("www.google.de") == "google"
    assert engine_for_host("youtubei.googleapis.com") == "youtube"
    assert engine_for_host("docs.google.com") is None


def test_pinterest_in_page_search_api() -> None:
    data = json.dumps({"options": {"query": "pro ana tips", "scope": "pins"}, "context": {}})
    target = parse_target("https://www.pinterest.com/resource/BaseSearchResource/get/?source_url=%2Fsearch&data=" + quote(data))
    assert extract_search(target) == SearchTerm("pinterest", "pro ana tips")


def test_multipart_form_post_search() -> None:
    boundary = "----sg1234"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nhow to kill myself\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"kl\"\r\n\r\nuk-en\r\n--{boundary}--\r\n").encode()
    target = parse_target("https://html.duckduckgo.com/html/")
    assert extract_search_from_body(target, f"multipart/form-data; boundary={boundary}", body) == SearchTerm(
        "duckduckgo", "how to kill myself")
    assert extract_search_from_body(target, "multipart/form-data; boundary=other", body) is None


def test_startpage_form_post() -> None:
    target = parse_target("https://www.startpage.com/sp/search")
    assert extract_search_from_body(target, "application/x-www-form-urlencoded", b"query=hanging+knots&cat=web") == SearchTerm(
        "startpage", "hanging knots")


CHATGPT = {"action": "next", "messages": [{"id": "1", "author": {"role": "user"},
                                            "content": {"content_type": "text", "parts": ["how many paracetamol would kill me"]}}],
           "parent_message_id": "0", "model": "auto"}
OPENAI_API = {"model": "gpt-4o", "messages": [{"role": "system", "content": "You help."}, {"role": "user", "content": "earlier"},
                                               {"role": "assistant", "content": "reply"},
                                               {"role": "user", "content": [{"type": "text", "text": "the new question"}]}]}


@pytest.mark.parametrize(
    ("url", "body", "engine", "prompt"),
    [
        ("https://chatgpt.com/backend-api/conversation", CHATGPT, "chatgpt", "how many paracetamol would kill me"),
        ("https://chatgpt.com/backend-anon/f/conversation", CHATGPT, "chatgpt", "how many paracetamol would kill me"),
        ("https://api.openai.com/v1/chat/completions", OPENAI_API, "chatgpt", "the new question"),
        ("https://claude.ai/api/organizations/o/chat_conversations/c/completion",
         {"prompt": "write my essay", "timezone": "Europe/London", "attachments": []}, "claude", "write my essay"),
        ("https://plus.character.ai/chat/streaming/", {"history_external_id": "h", "text": "i feel alone"}, "character.ai",
         "i feel alone"),
        ("https://www.perplexity.ai/rest/sse/perplexity_ask", {"query_str": "best vape", "params": {"mode": "auto"}},
         "perplexity", "best vape"),
        ("https://chat.deepseek.com/api/v0/chat/completion", {"chat_session_id": "s", "prompt": "hello"}, "deepseek", "hello"),
        ("https://grok.com/rest/app-chat/conversations/new", {"temporary": False, "message": "hi grok"}, "grok", "hi grok"),
    ],
)
def test_ai_chat_prompts_are_search_terms(url, body, engine, prompt) -> None:
    got = extract_search_from_body(parse_target(url), "application/json", json.dumps(body).encode())
    assert got == SearchTerm(engine, prompt)


def test_gemini_prompt_in_its_form_post() -> None:
    inner = json.dumps([["how to make a bomb", 0, None, None, None, None, 0], ["en"], ["c", "r", "rc"]])
    body = "f.req=" + quote(json.dumps([None, inner])) + "&at=token"
    target = parse_target("https://gemini.google.com/_/BardChatUi/data/assistant.lamda.BardFrontendService/StreamGenerate?bl=x")
    assert extract_search_from_body(target, "application/x-www-form-urlencoded;charset=UTF-8", body.encode()) == SearchTerm(
        "gemini", "how to make a bomb")


def test_ai_chat_prompts_over_websockets() -> None:
    copilot = json.dumps({"event": "send", "conversationId": "c", "content": [{"type": "text", "text": "i want to die"}],
                          "mode": "chat"})
    assert extract_prompt_from_message(parse_target("https://copilot.microsoft.com/c/api/chat?api-version=2"), copilot) == \
        SearchTerm("copilot", "i want to die")
    character = json.dumps({"command": "create_and_generate_turn", "payload": {
        "turn": {"turn_key": {"chat_id": "c"}, "author": {"author_id": "1", "is_human": True, "name": "Sam"},
                 "candidates": [{"candidate_id": "x", "raw_content": "nobody likes me"}]}}})
    assert extract_prompt_from_message(parse_target("https://neo.character.ai/ws/"), character.encode()) == \
        SearchTerm("character.ai", "nobody likes me")
    assert extract_prompt_from_message(parse_target("https://example.com/ws"), copilot) is None


def test_ai_chat_bodies_without_a_prompt() -> None:
    target = parse_target("https://chatgpt.com/backend-api/conversation")
    assert extract_search_from_body(target, "application/json", b'{"action": "next", "messages": []}') is None
    assert extract_search_from_body(target, "application/json", b"not json") is None
