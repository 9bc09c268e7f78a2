"""Search terms typed into search engines, video and social sites, and prompts
sent to AI chat services, read from the request so they can be kept with the
access record and matched against the risk lexicon.

Hosts are recognised across country domains (google.co.uk, uk.search.yahoo.com,
m.youtube.com, fr.wikipedia.org). Paths are compared in the lower-cased form
`Target.path` holds; the query value is decoded from `Target.query`, which
keeps the case the pupil typed. Terms arrive in the URL, in form posts
(urlencoded or multipart, as DuckDuckGo and Startpage send them), in JSON
in-page APIs (YouTube, Pinterest), and in AI chat requests: a prompt is a
search term too, whatever JSON shape the service wraps it in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs

from schoolgate.mediatypes import media_type
from schoolgate.urls import Target

MAX_QUERY_LENGTH = 500
# JSON search requests are a few kB; anything much larger is not one.
MAX_BODY_BYTES = 64 * 1024
# AI chat requests carry the conversation so far, and pasted text with it.
MAX_PROMPT_BODY_BYTES = 1024 * 1024
_MAX_JSON_DEPTH = 12

_COUNTRY_TLD = r"(?:[a-z]{2,3}|co\.[a-z]{2}|com\.[a-z]{2})"
ENGINE_HOSTS: dict[str, re.Pattern[str]] = {
    "google": re.compile(rf"^(?:www\.|suggestqueries\.|images\.|news\.|books\.|scholar\.)?google\.{_COUNTRY_TLD}$"),
    "bing": re.compile(r"^(?:www\.|cn\.|global\.)?bing\.com$"),
    "duckduckgo": re.compile(r"^(?:(?:www|html|lite|safe|links)\.)?duckduckgo\.com$"),
    "yahoo": re.compile(r"^(?:[a-z]{2}\.)?(?:images\.|video\.)?search\.yahoo\.com$"),
    "ecosia": re.compile(r"^(?:www\.|ac\.)?ecosia\.org$"),
    "brave": re.compile(r"^search\.brave\.com$"),
    "startpage": re.compile(r"^(?:www\.|eu\.|us\.)?startpage\.(?:com|nl)$"),
    "yandex": re.compile(r"^(?:www\.|suggest\.)?(?:yandex\.(?:com|ru|by|kz|ua|eu|com\.tr)|ya\.ru)$"),
    "ask": re.compile(r"^(?:www\.|uk\.)?ask\.com$"),
    "aol": re.compile(r"^search\.aol\.(?:com|co\.uk)$"),
    "qwant": re.compile(r"^(?:www\.|api\.|lite\.)?qwant\.com$"),
    "mojeek": re.compile(r"^(?:www\.)?mojeek\.(?:com|co\.uk)$"),
    "kagi": re.compile(r"^kagi\.com$"),
    "baidu": re.compile(r"^(?:www\.|m\.)?baidu\.com$"),
    "pinterest": re.compile(rf"^(?:[a-z]{{2}}\.|www\.)?pinterest\.(?:com|{_COUNTRY_TLD})$"),
    "tiktok": re.compile(r"^(?:www\.|m\.)?tiktok\.com$"),
    "reddit": re.compile(r"^(?:www\.|old\.|new\.)?reddit\.com$"),
    "x": re.compile(r"^(?:www\.|mobile\.)?(?:x|twitter)\.com$"),
    "youtube": re.compile(
        r"^(?:(?:www\.|m\.|music\.|suggestqueries-clients6\.)?youtube\.com|youtubei?\.googleapis\.com|www\.youtube-nocookie\.com)$"
    ),
    "wikipedia": re.compile(r"^(?:[a-z0-9-]+\.)?(?:m\.)?wikipedia\.org$"),
    # AI chat: every prompt the pupil sends is read as a search term.
    "chatgpt": re.compile(r"^(?:chatgpt\.com|chat\.openai\.com|api\.openai\.com)$"),
    "gemini": re.compile(r"^(?:gemini\.google\.com|bard\.google\.com|generativelanguage\.googleapis\.com)$"),
    "copilot": re.compile(r"^(?:copilot\.microsoft\.com|copilot\.cloud\.microsoft|sydney\.bing\.com)$"),
    "claude": re.compile(r"^(?:claude\.ai|api\.anthropic\.com)$"),
    "character.ai": re.compile(r"^(?:(?:beta|plus|neo|www)\.)?character\.ai$"),
    "perplexity": re.compile(r"^(?:www\.)?perplexity\.ai$"),
    "deepseek": re.compile(r"^(?:chat|api)\.deepseek\.com$"),
    "grok": re.compile(r"^(?:grok\.com|grok\.x\.ai)$"),
    "mistral": re.compile(r"^(?:chat\.mistral\.ai|api\.mistral\.ai)$"),
    "meta-ai": re.compile(r"^(?:www\.)?meta\.ai$"),
    "poe": re.compile(r"^poe\.com$"),
}
AI_CHAT = frozenset({"chatgpt", "gemini", "copilot", "claude", "character.ai", "perplexity", "deepseek", "grok", "mistral",
                     "meta-ai", "poe"})
_ENGINE_ANY = re.compile("|".join(f"(?:{p.pattern})" for p in ENGINE_HOSTS.values()))
# Keys under which AI chat services put the user's words, most telling first.
_PROMPT_KEYS = ("prompt", "query_str", "query", "message", "text", "input", "raw_content", "parts", "content", "q")


@dataclass(frozen=True, slots=True)
class SearchTerm:
    engine: str
    query: str


@dataclass(frozen=True, slots=True)
class _Rule:
    engine: str
    paths: frozenset[str]  # lower-case, no trailing slash
    params: tuple[str, ...]  # query (or form) parameters holding the term, first found wins
    joined: tuple[str, ...] = ()  # else these, all that are present, joined (advanced-search forms)


def _rule(engine: str, paths: tuple[str, ...], *params: str, joined: tuple[str, ...] = ()) -> _Rule:
    return _Rule(engine, frozenset(paths), params, joined)


_QUERY_RULES: tuple[_Rule, ...] = (
    _rule("google", ("/search", "/complete/search", "/webhp", "/images", "/imghp", "/books", "/scholar", "/s"), "q",
          joined=("as_q", "as_epq", "as_oq")),
    _rule("bing", ("/search", "/images/search", "/videos/search", "/news/search", "/shop", "/as/suggestions",
                   "/images/async", "/videos/asyncv2", "/osjson.aspx"), "q", "qry", "query"),
    _rule("duckduckgo", ("", "/html", "/lite", "/ac", "/d.js", "/i.js", "/v.js", "/news.js"), "q"),
    _rule("yahoo", ("/search", "/search/images", "/search/video", "/search/news"), "p"),
    _rule("ecosia", ("/search", "/images", "/videos", "/news", "/autocomplete"), "q"),
    _rule("brave", ("/search", "/images", "/videos", "/news", "/api/suggest", "/goggles", "/ask"), "q"),
    _rule("startpage", ("/sp/search", "/do/search", "/do/dsearch", "/do/asearch", "/search", "/suggestions",
                        "/sp/suggestions"), "query", "q"),
    _rule("yandex", ("/search", "/images/search", "/video/search", "/news/search", "/suggest/suggest-ya.cgi",
                     "/suggest-ya.cgi"), "text", "part"),
    _rule("ask", ("/web", "/search", "/youranswer"), "q"),
    _rule("aol", ("/aol/search", "/aol/image", "/aol/video", "/search"), "q", "query"),
    _rule("qwant", ("", "/v3/search/web", "/v3/search/images", "/v3/search/videos", "/v3/search/news", "/v3/suggest",
                    "/search"), "q"),
    _rule("mojeek", ("/search",), "q"),
    _rule("kagi", ("/search", "/images", "/videos", "/news", "/api/autosuggest"), "q"),
    _rule("baidu", ("/s", "/sugrec"), "wd", "word", "prefix"),
    _rule("pinterest", ("/search/pins", "/search/boards", "/search/users", "/search/videos", "/search"), "q"),
    _rule("tiktok", ("/search", "/search/video", "/search/user", "/api/search/general/full", "/api/search/item/full",
                     "/api/search/general/preview"), "q", "keyword"),
    _rule("reddit", ("/search", "/search.json", "/svc/shreddit/search-typeahead"), "q", "query"),
    _rule("x", ("/search", "/i/api/2/search/adaptive.json"), "q"),
    _rule("youtube", ("/results", "/complete/search"), "search_query", "q"),
    _rule(
        "wikipedia",
        ("/w/index.php", "/w/api.php", "/wiki/special:search", "/w/rest.php/v1/search/title", "/w/rest.php/v1/search/page"),
        "search",
        "srsearch",
        "q",
    ),
    # AI chat pages that take a prompt in the address (shared links, browser search shortcuts).
    _rule("chatgpt", ("", "/new"), "q", "prompt"),
    _rule("claude", ("/new", ""), "q"),
    _rule("perplexity", ("/search", "", "/search/new"), "q"),
    _rule("copilot", ("",), "q"),
    _rule("gemini", ("/app",), "q"),
)
# In-page APIs that POST the term as JSON: (engine, path, field).
_JSON_RULES: tuple[tuple[str, str, str], ...] = (
    ("youtube", "/youtubei/v1/search", "query"),
    ("youtube", "/youtubei/v1/music/get_search_suggestions", "input"),
)


def engine_for_host(host: str) -> str | None:
    """Which search, video, social or AI chat site a canonical host belongs to, if any."""
    if not _ENGINE_ANY.match(host):
        return None
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
            if joined := _clean(" ".join(params[name][0] for name in rule.joined if params.get(name))):
                return SearchTerm(engine, joined)
    return None


def _parse(encoded: str) -> dict[str, list[str]]:
    return parse_qs(encoded, errors="replace", max_num_fields=200)


def extract_search(target: Target) -> SearchTerm | None:
    """The search term in a GET request's URL, or None if it is not a search."""
    engine = engine_for_host(target.host)
    if engine is None or not target.query:
        return None
    route = _route(target.path)
    params = _parse(target.query)
    if engine == "pinterest" and route.startswith("/resource/") and params.get("data"):
        # Pinterest's in-page search: data={"options": {"query": ...}} in the URL.
        data = _json(params["data"][0])
        options = data.get("options") if isinstance(data, dict) else None
        if isinstance(options, dict) and isinstance(query := options.get("query"), str) and (query := _clean(query)):
            return SearchTerm(engine, query)
        return None
    return _from_params(engine, route, params)


def extract_search_from_request(target: Target, method: str, content_type: str | None, body: bytes) -> SearchTerm | None:
    """The search term (or AI prompt) a request carries: in its URL, else in a POST's body."""
    search = extract_search(target)
    if search is None and method == "POST":
        search = extract_search_from_body(target, content_type, body)
    return search


def extract_search_from_body(target: Target, content_type: str | None, body: bytes) -> SearchTerm | None:
    """The search term in a POST body: JSON in-page APIs (YouTube's
    `youtubei/v1/search`), form posts (DuckDuckGo's HTML and lite pages, Startpage),
    multipart forms, and the prompt of an AI chat request."""
    engine = engine_for_host(target.host)
    limit = MAX_PROMPT_BODY_BYTES if engine in AI_CHAT else MAX_BODY_BYTES
    if engine is None or not body or len(body) > limit:
        return None
    mime = media_type(content_type)
    path = _route(target.path)
    if mime == "multipart/form-data":
        return _from_params(engine, path, _multipart_fields(content_type or "", body))
    text = body.decode("utf-8", errors="replace")
    if engine in AI_CHAT:
        return _prompt_term(engine, mime, text)
    if mime == "application/x-www-form-urlencoded":
        return _from_params(engine, path, _parse(text))
    if mime == "application/json" or mime.endswith("+json"):
        fields = [field for rule_engine, rule_path, field in _JSON_RULES if rule_engine == engine and rule_path == path]
        if not fields:
            return None
        data = _json(text)
        if isinstance(data, dict) and isinstance(value := data.get(fields[0]), str) and (query := _clean(value)):
            return SearchTerm(engine, query)
    return None


def extract_prompt_from_message(target: Target, message: str | bytes) -> SearchTerm | None:
    """The prompt in a WebSocket message a pupil sends to an AI chat service
    (Copilot and character.ai chat over WebSockets). SignalR (Copilot) sends JSON records
    each ended by \x1e, several to a message: the prompts of them all, joined."""
    engine = engine_for_host(target.host)
    if engine not in AI_CHAT:
        return None
    text = message.decode("utf-8", errors="replace") if isinstance(message, bytes) else message
    if len(text) > MAX_PROMPT_BODY_BYTES:
        return None
    terms = [term for record in text.split("\x1e") if record.strip()
             and (term := _prompt_term(engine, "application/json", record))]
    return SearchTerm(engine, _clean(" ".join(term.query for term in terms)) or "") if terms else None


# --- AI chat prompts ----------------------------------------------------------------


def _prompt_term(engine: str, mime: str, text: str) -> SearchTerm | None:
    if mime == "application/x-www-form-urlencoded":
        form = _parse(text)
        if "f.req" in form:  # Gemini: f.req=[null, "<JSON whose [0][0] is the prompt>"]
            prompt = _gemini_prompt(form["f.req"][0])
        else:
            prompt = next((form[k][0] for k in _PROMPT_KEYS if form.get(k)), None)
    else:
        prompt = _prompt(_json(text), 0)
    query = _clean(prompt) if prompt else None
    return SearchTerm(engine, query) if query else None


def _gemini_prompt(freq: str) -> str | None:
    outer = _json(freq)
    if isinstance(outer, list) and len(outer) > 1 and isinstance(outer[1], str):
        inner = _json(outer[1])
        if isinstance(inner, list) and inner and isinstance(inner[0], list) and inner[0] and isinstance(inner[0][0], str):
            return inner[0][0]
    return _prompt(outer, 0)


def _prompt(data: Any, depth: int) -> str | None:
    """The user's words in an AI chat request body, whatever its shape: the last
    message of a `messages` list (the new one), else the first prompt-like field."""
    if depth > _MAX_JSON_DEPTH:
        return None
    if isinstance(data, str):
        return data if data.strip() else None
    if isinstance(data, list):
        words = [item for item in data if isinstance(item, str) and item.strip()]
        if words:
            return " ".join(words)
        return next((found for item in reversed(data) if (found := _prompt(item, depth + 1))), None)
    if not isinstance(data, dict):
        return None
    messages = data.get("messages")
    if isinstance(messages, list) and messages:
        from_user = [m for m in messages if isinstance(m, dict) and _role(m) == "user"]
        if found := _prompt((from_user or messages)[-1], depth + 1):
            return found
    for key in _PROMPT_KEYS:
        if key in data and (found := _prompt(data[key], depth + 1)):
            return found
    # Wrapped one level down (payload, turn, candidates, event data...).
    return next((found for value in data.values() if isinstance(value, (dict, list)) and (found := _prompt(value, depth + 1))),
                None)


def _role(message: dict[str, Any]) -> str | None:
    author = message.get("author")
    role = author.get("role") if isinstance(author, dict) else message.get("role")
    return role if isinstance(role, str) else None


# --- small helpers --------------------------------------------------------------------


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _multipart_fields(content_type: str, body: bytes) -> dict[str, list[str]]:
    """The text fields of a multipart/form-data body (RFC 7578)."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body)
    fields: dict[str, list[str]] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and part.get_filename() is None:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                fields.setdefault(name, []).append(payload.decode(part.get_content_charset() or "utf-8", errors="replace"))
    return fields
