"""Search terms typed into the major search and video sites, read from the
request so they can be kept with the access record and matched against the
risk lexicon.

Hosts are recognised across country domains (google.co.uk, uk.search.yahoo.com,
m.youtube.com, fr.wikipedia.org). Paths are compared in the lower-cased form
`Target.path` holds; the query value is decoded from `Target.query`, which
keeps the case the pupil typed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from schoolgate.urls import Target

MAX_QUERY_LENGTH = 500
# JSON search requests are a few kB; anything much larger is not one.
MAX_BODY_BYTES = 64 * 1024

_COUNTRY_TLD = r"(?:[a-z]{2,3}|co\.[a-z]{2}|com\.[a-z]{2})"
ENGINE_HOSTS: dict[str, re.Pattern[str]] = {
    "google": re.compile(rf"^(?:www\.|suggestqueries\.)?google\.{_COUNTRY_TLD}$"),
    "bing": re.compile(r"^(?:www\.|cn\.)?bing\.com$"),
    "duckduckgo": re.compile(r"^(?:(?:www|html|lite|safe|links)\.)?duckduckgo\.com$"),
    "yahoo": re.compile(r"^(?:[a-z]{2}\.)?(?:images\.|video\.)?search\.yahoo\.com$"),
    "ecosia": re.compile(r"^(?:www\.|ac\.)?ecosia\.org$"),
    "youtube": re.compile(
        r"^(?:(?:www\.|m\.|music\.|suggestqueries-clients6\.)?youtube\.com|youtubei?\.googleapis\.com|www\.youtube-nocookie\.com)$"
    ),
    "wikipedia": re.compile(r"^(?:[a-z0-9-]+\.)?(?:m\.)?wikipedia\.org$"),
}


@dataclass(frozen=True, slots=True)
class SearchTerm:
    engine: str
    query: str


@dataclass(frozen=True, slots=True)
class _Rule:
    engine: str
    paths: frozenset[str]  # lower-case, no trailing slash
    params: tuple[str, ...]  # query (or form) parameters holding the term, first found wins


def _rule(engine: str, paths: tuple[str, ...], *params: str) -> _Rule:
    return _Rule(engine, frozenset(paths), params)


_QUERY_RULES: tuple[_Rule, ...] = (
    _rule("google", ("/search", "/complete/search", "/webhp"), "q"),
    _rule("bing", ("/search", "/images/search", "/videos/search", "/news/search", "/as/suggestions"), "q", "qry"),
    _rule("duckduckgo", ("", "/html", "/lite", "/ac", "/d.js"), "q"),
    _rule("yahoo", ("/search", "/search/images", "/search/video"), "p"),
    _rule("ecosia", ("/search", "/images", "/videos", "/autocomplete"), "q"),
    _rule("youtube", ("/results", "/complete/search"), "search_query", "q"),
    _rule(
        "wikipedia",
        ("/w/index.php", "/w/api.php", "/wiki/special:search", "/w/rest.php/v1/search/title", "/w/rest.php/v1/search/page"),
        "search",
        "srsearch",
        "q",
    ),
)
# In-page APIs that POST the term as JSON: (engine, path, field).
_JSON_RULES: tuple[tuple[str, str, str], ...] = (
    ("youtube", "/youtubei/v1/search", "query"),
    ("youtube", "/youtubei/v1/music/get_search_suggestions", "input"),
)


def engine_for_host(host: str) -> str | None:
    """Which search or video site a canonical host belongs to, if any."""
    return next((engine for engine, pattern in ENGINE_HOSTS.items() if pattern.match(host)), None)


def _route(path: str) -> str:
    """Path as the rules list it: Yahoo's `;_ylt=` matrix part and any trailing slash dropped."""
    return path.split(";", 1)[0].rstrip("/")


def is_search_path(engine: str, path: str) -> bool:
    """Whether a (lower-cased) path on an engine's host is one of its search endpoints."""
    route = _route(path)
    return any(rule.engine == engine and route in rule.paths for rule in _QUERY_RULES)


def _clean(value: str) -> str | None:
    value = " ".join(value.split())[:MAX_QUERY_LENGTH]
    return value or None


def _from_params(engine: str, path: str, params: Mapping[str, list[str]]) -> SearchTerm | None:
    for rule in _QUERY_RULES:
        if rule.engine == engine and path in rule.paths:
            for name in rule.params:
                if params.get(name) and (query := _clean(params[name][0])):
                    return SearchTerm(engine, query)
    return None


def _parse(encoded: str) -> dict[str, list[str]]:
    return parse_qs(encoded, errors="replace", max_num_fields=200)


def extract_search(target: Target) -> SearchTerm | None:
    """The search term in a GET request's URL, or None if it is not a search."""
    engine = engine_for_host(target.host)
    if engine is None or not target.query:
        return None
    return _from_params(engine, _route(target.path), _parse(target.query))


def extract_search_from_body(target: Target, content_type: str | None, body: bytes) -> SearchTerm | None:
    """The search term in a POST body: JSON in-page APIs (YouTube's
    `youtubei/v1/search`) and form posts (DuckDuckGo's HTML and lite pages)."""
    engine = engine_for_host(target.host)
    if engine is None or not body or len(body) > MAX_BODY_BYTES:
        return None
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    path = _route(target.path)
    text = body.decode("utf-8", errors="replace")
    if mime == "application/x-www-form-urlencoded":
        return _from_params(engine, path, _parse(text))
    if mime == "application/json" or mime.endswith("+json"):
        fields = [field for rule_engine, rule_path, field in _JSON_RULES if rule_engine == engine and rule_path == path]
        if not fields:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if isinstance(data, dict) and isinstance(value := data.get(fields[0]), str) and (query := _clean(value)):
            return SearchTerm(engine, query)
    return None
