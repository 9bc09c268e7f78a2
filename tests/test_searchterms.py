"""Search terms are read from the search and video sites' URLs and in-page APIs."""

from __future__ import annotations

import json

import pytest

from schoolgate.addons.searchterms import (
    MAX_QUERY_LENGTH,
    SearchTerm,
    engine_for_host,
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
    ],
)
def test_search_urls(url: str, engine: str, query: str) -> None:
    assert extract_search(parse_target(url)) == SearchTerm(engine, query)


@pytest.mark.parametrize(
    "url",
    [
        "https://www.google.com/maps?q=london",  # not a search endpoint
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
