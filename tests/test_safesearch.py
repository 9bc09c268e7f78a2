"""SafeSearch: each service's documented parameter or header, which the pupil cannot override."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from schoolgate.addons.safesearch import SafeSearchChange, apply_query, enforce
from schoolgate.urls import parse_target


@pytest.mark.parametrize(
    ("url", "parameter", "value"),
    [
        ("https://www.google.co.uk/search?q=cats&safe=off", "safe", "active"),
        ("https://www.google.com/complete/search?q=ca&client=gws-wiz", "safe", "active"),
        ("https://www.bing.com/search?q=cats&adlt=off", "adlt", "strict"),
        ("https://www.bing.com/images/search?q=cats", "adlt", "strict"),
        ("https://duckduckgo.com/?q=cats&kp=-2", "kp", "1"),
        ("https://html.duckduckgo.com/html/?q=cats", "kp", "1"),
        ("https://global.bing.com/search?q=cats&adlt=off", "adlt", "strict"),
        ("https://images.google.com/search?q=cats&tbm=isch&safe=off", "safe", "active"),
        ("https://images.google.co.uk/images?q=cats", "safe", "active"),
        ("https://www.google.com/search?as_q=cats&safe=images", "safe", "active"),
        ("https://search.yahoo.com/search?p=cats&vm=p", "vm", "r"),
        ("https://search.brave.com/search?q=cats&safesearch=off", "safesearch", "strict"),
        ("https://www.startpage.com/sp/search?query=cats&qadf=none", "qadf", "heavy"),
        ("https://yandex.com/search/?text=cats&family=no", "family", "yes"),
    ],
)
def test_search_engines_get_their_parameter_and_it_wins(url: str, parameter: str, value: str) -> None:
    target = parse_target(url)
    change = enforce(target)
    assert change is not None and change.set_query == {parameter: value} and not change.set_headers
    rewritten = parse_qs(apply_query(target.query, change.set_query))
    assert rewritten[parameter] == [value]
    assert next(v for k, v in rewritten.items() if k in ("q", "p", "query", "text", "as_q"))[0].startswith("ca")


@pytest.mark.parametrize(
    "url",
    ["https://www.youtube.com/watch?v=x", "https://m.youtube.com/", "https://youtubei.googleapis.com/youtubei/v1/search"],
)
def test_youtube_gets_the_restrict_header(url: str) -> None:
    assert enforce(parse_target(url)) == SafeSearchChange(
        set_headers={"YouTube-Restrict": "Strict"}, reason="YouTube restricted mode (strict)"
    )
    moderate = enforce(parse_target(url), youtube_mode="Moderate")
    assert moderate is not None and moderate.set_headers == {"YouTube-Restrict": "Moderate"}


def test_enforcing_hosts_on_request() -> None:
    google = enforce(parse_target("https://www.google.com/search?q=x"), use_enforcing_host=True)
    assert google is not None and google.redirect_host == "forcesafesearch.google.com"
    youtube = enforce(parse_target("https://www.youtube.com/"), youtube_mode="Moderate", use_enforcing_host=True)
    assert youtube is not None and youtube.redirect_host == "restrictmoderate.youtube.com"


@pytest.mark.parametrize(
    "url",
    [
        "https://www.google.com/maps/place/x",
        "https://www.google.com/recaptcha/api.js",
        "https://docs.google.com/document/d/1",
        "https://www.wikipedia.org/",
        "https://example.com/search?q=x",
    ],
)
def test_other_requests_are_left_alone(url: str) -> None:
    assert enforce(parse_target(url)) is None


def test_apply_query_replaces_every_copy_in_any_spelling() -> None:
    query = "q=a%26b+c&safe=off&SAFE=images&s%61fe=off&hl=en"
    assert apply_query(query, {"safe": "active"}) == "q=a%26b+c&hl=en&safe=active"


def test_apply_query_on_empty_and_without_changes() -> None:
    assert apply_query("", {"kp": "1"}) == "kp=1"
    assert apply_query("q=x&&y", {}) == "q=x&&y"
