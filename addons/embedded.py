"""Sites carried inside other sites: web proxies, translators, archives and
caches that fetch a page for the pupil, so that the address bar shows an
allowed host while the page is a blocked one.

`embedded_targets(target)` returns every site a request carries (decoded from
the host name, the path or the query of the services below, nested ones too,
and the address a wildcard-DNS name spells); the request path decides each of
them beside the outer one, and the strictest verdict stands.
`carried(target).is_proxy` says the request is a web proxy by its shape (or a
known one whose carried site cannot be read): it counts as category vpn-proxy.

Plain Python, no mitmproxy: shared by the gateway, `explain` and the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from schoolgate.categories.index import CategoryHit
from schoolgate.urls import InvalidHost, Target, decode_base64, disguised_ip, is_ip, parse_target

# Nested carriers (a translation of an archived copy of a cached page) are
# unwrapped this deep; deeper ones are refused as unknown proxies.
MAX_DEPTH = 4
_ARCHIVE_TODAY = r"archive\.(?:ph|today|is|li|vn|fo|md)"
_GOOGLE = r"(?:www\.)?google\.(?:[a-z]{2,3}|co\.[a-z]{2}|com\.[a-z]{2})"
_SCHEME = re.compile(r"^(https?):/+", re.IGNORECASE)
_ARCHIVE_ID = re.compile(r"^/[a-z0-9]{4,6}/?$")  # archive.today snapshot ids: opaque
_ARCHIVE_DATE = re.compile(r"^\d{4}(?:\.\d{2}){0,2}(?:-\d{6})?$|^\*$|^newest$|^oldest$|^timegate$|^timemap$")
_WAYBACK_STAMP = re.compile(r"^(?:\d{0,14}\*?|\*)(?:[a-z]{2}_)?$")
_ENCODED_LABEL = re.compile(r"^[a-z0-9-]+$")


@dataclass(frozen=True, slots=True)
class Carried:
    service: str  # who carries it, for the reason people read
    targets: tuple[Target, ...]  # the sites carried, outermost first
    is_proxy: bool = False  # a web proxy by shape, or one whose carried site cannot be read: vpn-proxy


def decided_targets(*names: Target) -> tuple[list[Target], tuple[CategoryHit, ...]]:
    """What a request is decided on: each name it carries (Host header, address, TLS
    server name), then every site carried inside any of them; and the categories its
    shape shows (a web proxy: vpn-proxy). Used by the gateway and `explain`."""
    targets = list(names)
    seen: list[CategoryHit] = []
    for name in names:
        found = carried(name)
        if found is not None:
            targets.extend(t for t in found.targets if t not in targets)
            if found.is_proxy:
                seen.append(CategoryHit("vpn-proxy", f"{name.host} ({found.service})"))
    return targets, tuple(seen)


def embedded_targets(target: Target) -> list[Target]:
    """Every site this request carries inside it, nested ones included."""
    found = carried(target)
    return list(found.targets) if found else []


def carries_sites(host: str) -> bool:
    """Whether this host is a known carrier (translator, archive, cache, reader): which
    site it carries is in each request's path or query, so only decrypting shows it."""
    return _ANY_CARRIER.fullmatch(host) is not None


def carried(target: Target) -> Carried | None:
    """What this request carries, or None for an ordinary request."""
    targets: list[Target] = []
    services: list[str] = []
    is_proxy = False
    queue = [target]
    for _ in range(MAX_DEPTH):
        step: list[Target] = []
        for outer in queue:
            if (ip := disguised_ip(outer.host)) is not None:
                step.append(outer._replace(host=ip, is_ip=True))
                services.append("a wildcard-DNS name")
            found = _unwrap(outer)
            if found is not None:
                services.append(found.service)
                step.extend(found.targets)
                is_proxy |= found.is_proxy
        if not step:
            break
        targets.extend(step)
        queue = [t for t in step if not is_ip(t.host)]
    else:
        is_proxy |= bool(queue) and any(_unwrap(t) for t in queue)  # nested past MAX_DEPTH
    if not targets and not is_proxy:
        return None
    return Carried(" via ".join(dict.fromkeys(services)), tuple(dict.fromkeys(targets)), is_proxy)


# --- one function per kind of carrier -------------------------------------------


def _unwrap(target: Target) -> Carried | None:
    host = target.host
    if _ANY_CARRIER.fullmatch(host):
        for pattern, unwrap in _CARRIERS:
            if pattern.fullmatch(host):
                return unwrap(target)
    return _generic_proxy(target)


def _label_host(label: str) -> str:
    """Google's encoding of a host in one DNS label: `-` for `.`, `--` for `-`."""
    return label.replace("--", "\0").replace("-", ".").replace("\0", "-")


def _translate_goog(target: Target) -> Carried | None:
    label = target.host.removesuffix(".translate.goog")
    if not _ENCODED_LABEL.fullmatch(label):
        return None
    query = "&".join(p for p in target.query.split("&") if p and not p.startswith("_x_tr_"))
    inner = _url(f"{target.scheme}://{_label_host(label)}{target.path}", query)
    return _one("Google Translate", inner)


def _amp_cache(target: Target) -> Carried | None:
    # /c/s/HOST/PATH (s: https), /v/, /i/ for viewer and images; the label spells the host too.
    parts = target.path.split("/", 4)
    if len(parts) >= 4 and parts[1] in ("c", "v", "i", "r", "wp"):
        secure = parts[2] == "s"
        rest = "/".join(parts[3 if secure else 2 :])
        inner = _url(("https://" if secure else "http://") + rest, target.query)
        if inner is not None:
            return _one("the AMP cache", inner)
    label = target.host.removesuffix(".cdn.ampproject.org")
    return _one("the AMP cache", _url(f"https://{_label_host(label)}/", ""))


def _google(target: Target) -> Carried | None:
    if target.path.startswith("/amp/"):
        rest = target.path[len("/amp/") :]
        inner = _url("https://" + rest[2:] if rest.startswith("s/") else rest, target.query)
        return _one("Google AMP", inner)
    if target.path == "/url":
        return _one("Google's redirect", *_params(target, "q", "url"))
    return None


def _translate_google(target: Target) -> Carried | None:
    return _one("Google Translate", *_params(target, "u"))


def _webcache(target: Target) -> Carried | None:
    values = _query(target).get("q", [])
    urls = [_url(re.sub(r"^cache:(?:[\w-]+:)?", "", v), None) for v in values if v.startswith("cache:")]
    return _one("Google's cache", *urls) or _opaque("Google's cache")


def _wayback(target: Target) -> Carried | None:
    path = target.path
    if path.startswith("/web/"):
        rest = path[len("/web/") :]
        first, _, after = rest.partition("/")
        if _WAYBACK_STAMP.fullmatch(first):
            rest = after
        if not rest:
            return None  # the Wayback Machine's own pages
        return _one("the Wayback Machine", _url(rest, target.query)) or _opaque("the Wayback Machine")
    if path.startswith("/save/"):
        return _one("the Wayback Machine", _url(path[len("/save/") :], target.query))
    if path.startswith("/wayback/available"):
        return _one("the Wayback Machine", *_params(target, "url"))
    return None


def _archive_today(target: Target) -> Carried | None:
    path = target.path
    if params := _params(target, "url", "q"):
        return _one("archive.today", *params)
    if _ARCHIVE_ID.fullmatch(path) and path.strip("/") not in ("submit", "faq", "search"):
        return _opaque("archive.today")
    segments = path.lstrip("/").split("/", 1)
    if len(segments) == 2 and _ARCHIVE_DATE.fullmatch(segments[0]):
        path = "/" + segments[1]
    return _one("archive.today", _url(path.lstrip("/"), target.query)) if path != "/" else None


def _path_carrier(service: str, *param_names: str):
    """Readers and paywall removers that take the URL as their path (`/https://...`) or a parameter."""

    def unwrap(target: Target) -> Carried | None:
        if params := _params(target, *param_names):
            return _one(service, *params)
        rest = target.path.lstrip("/")
        for prefix in ("proxy/", "api/proxy/"):
            rest = rest.removeprefix(prefix)
        return _one(service, _url(rest, target.query)) if rest else None

    return unwrap


def _param_carrier(service: str, *param_names: str):
    def unwrap(target: Target) -> Carried | None:
        return _one(service, *_params(target, *param_names))

    return unwrap


def _turbopages(target: Target) -> Carried | None:
    # /proxy_u/en-ru.ru.HASH/https/www.example.com/path
    parts = target.path.split("/", 5)
    if len(parts) >= 5 and parts[1] == "proxy_u" and parts[3] in ("http", "https"):
        return _one("Yandex Translate", _url(f"{parts[3]}://{'/'.join(parts[4:])}", target.query))
    return _opaque("Yandex Translate") if target.path.startswith("/proxy_u") else None


_CARRIERS = tuple(
    (re.compile(pattern), unwrap)
    for pattern, unwrap in (
        (r"[a-z0-9-]+\.translate\.goog", _translate_goog),
        (r"[a-z0-9-]+\.cdn\.ampproject\.org", _amp_cache),
        (r"translate\.google\.(?:[a-z]{2,3}|co\.[a-z]{2}|com\.[a-z]{2})|translate\.googleusercontent\.com", _translate_google),
        (_GOOGLE, _google),
        (r"webcache\.googleusercontent\.com", _webcache),
        (r"(?:web\.|wayback\.)?archive\.org", _wayback),
        (rf"(?:www\.)?{_ARCHIVE_TODAY}", _archive_today),
        (r"(?:www\.)?(?:12ft\.io|1ft\.io)", _path_carrier("a paywall remover", "q", "url")),
        (r"r\.jina\.ai", _path_carrier("a page reader", "url")),
        (r"(?:www\.)?(?:removepaywall\.com|removepaywalls\.com|smry\.ai|freedium\.cfd|txtify\.it)",
         _path_carrier("a paywall remover", "url", "q")),
        (r"(?:www\.)?ghostarchive\.org", _param_carrier("Ghostarchive", "term")),
        (r"translate\.yandex\.(?:com|ru|net)", _param_carrier("Yandex Translate", "url")),
        (r"translated\.turbopages\.org", _turbopages),
        (r"(?:www\.)?printfriendly\.com", _param_carrier("PrintFriendly", "url")),
        (r"(?:www\.)?translatetheweb\.com", _param_carrier("Bing Translator", "a")),
    )
)

_ANY_CARRIER = re.compile("|".join(f"(?:{pattern.pattern})" for pattern, _ in _CARRIERS))

# Well-known scripts that run a web proxy on any host (Glype, PHProxy, CGIProxy,
# CroxyProxy, generic /proxy/URL): the shape gives them away wherever they are. The
# generic script names (proxy.php, surf.php: also image and feed proxies of ordinary
# sites) count only when they carry a site.
_PROXY_SCRIPTS = re.compile(r"(?:^|/)(?:browse\.php|nph-proxy\.cgi|nph-proxy\.pl|proxy\.php|surf\.php|glype\.php)(?:/|$)")
_GENERIC_SCRIPTS = ("proxy.php", "surf.php")
_PROXY_PATH = re.compile(r"^/(?:proxy|go|browse|surf|p)/https?:/")  # with a scheme: /go/x.y/ is an ordinary link


def _generic_proxy(target: Target) -> Carried | None:
    path, query = target.path, target.query
    script = _PROXY_SCRIPTS.search(path)
    if not (script or "__cpo=" in query or "hl=" in query or path[:3] in ("/pr", "/go", "/br", "/su", "/p/")):
        return None  # the common case, cheaply
    params = _query(target) if query else {}
    if "__cpo" in params:  # CroxyProxy: the origin, base64
        return Carried("a web proxy", tuple(t for t in _decoded(params["__cpo"]) if t), is_proxy=True)
    if script:
        inner: list[Target | None] = [*_params(target, "u", "q", "url"), *_decoded(params.get("u", []) + params.get("q", []))]
        rest = path[script.end() :].lstrip("/")
        rest = re.sub(r"^(?:[a-z]{2}/)?(?:[0-9a-z]{2,8}/)?(https?)/", r"\1://", rest)  # CGIProxy: /[lang/]flags/scheme/host
        inner.append(_url(rest, target.query) if rest else None)
        found = tuple(t for t in inner if t)
        if not found and script.group(0).strip("/") in _GENERIC_SCRIPTS:
            return None
        return Carried("a web proxy", found, is_proxy=True)
    if _PROXY_PATH.match(path):
        rest = path.split("/", 2)[2]
        return Carried("a web proxy", tuple(t for t in (_url(rest, target.query),) if t), is_proxy=True)
    if (path == "/" or path.endswith("/index.php")) and params.keys() & {"q", "u"} and "hl" in params:
        # PHProxy: index.php?q=URL-or-base64&hl=flags
        named = [*_params(target, "q", "u", absolute=True), *_decoded(params.get("q", []) + params.get("u", []))]
        if any(named):
            return Carried("a web proxy", tuple(t for t in named if t), is_proxy=True)
    return None


# --- small helpers ------------------------------------------------------------------


def _query(target: Target) -> dict[str, list[str]]:
    return parse_qs(target.query, max_num_fields=100)


def _params(target: Target, *names: str, absolute: bool = False) -> list[Target | None]:
    """URLs given in these query parameters: absolute ones, or also a bare `host/path`
    where the service takes one (never for a shape that ordinary sites share)."""
    if not target.query:
        return []
    params = _query(target)
    return [_url(value, None) for name in names for value in params.get(name, [])
            if not absolute or _SCHEME.match(value)]


def _decoded(values: list[str]) -> list[Target | None]:
    """URLs hidden as base64 (Glype's and CroxyProxy's option)."""
    found: list[Target | None] = []
    for value in values:
        try:
            url = (decode_base64(value) or b"").decode("ascii")
        except UnicodeDecodeError:
            continue
        if _SCHEME.match(url):
            found.append(_url(url, None))
    return found


def _url(text: str, query: str | None) -> Target | None:
    """The Target a carried URL names: `https://host/path`, `https:/host` (our paths fold
    double slashes), percent-encoded, or a bare `host.tld/path`; `query` (the outer
    request's) belongs to a URL carried in a path. None when it names no host."""
    text = unquote(text.strip())
    if not text:
        return None
    if _SCHEME.match(text):
        text = _SCHEME.sub(lambda m: m.group(1).lower() + "://", text)
    else:
        host = re.split(r"[/?#]", text, maxsplit=1)[0]
        if "." not in host.strip(".") and ":" not in host:
            return None  # a word, not a site
        text = "http://" + text
    if query:
        text += ("&" if "?" in text else "?") + query
    try:
        return parse_target(text)
    except (InvalidHost, ValueError):
        return None


def _one(service: str, *targets: Target | None) -> Carried | None:
    found = tuple(t for t in targets if t is not None)
    return Carried(service, found) if found else None


def _opaque(service: str) -> Carried:
    """A carrier whose carried site cannot be read here: refused as a proxy would be."""
    return Carried(service, (), is_proxy=True)
