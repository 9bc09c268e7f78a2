"""SafeSearch and YouTube restricted mode, enforced on the request the way each
service documents for networks and proxies:

- Google: `safe=active` on search requests (Google also offers the
  forcesafesearch.google.com address for DNS-level enforcement).
- Bing: `adlt=strict` (or the strict.bing.com address).
- DuckDuckGo: `kp=1`, its "strict" URL parameter (or safe.duckduckgo.com).
- Yahoo: `vm=r` (restricted); Brave Search: `safesearch=strict`; Startpage:
  `qadf=heavy` (its family filter); Yandex: `family=yes` (family search).
  Each is the setting's own URL parameter, as the result pages write it.
- YouTube: the `YouTube-Restrict: Strict|Moderate` request header on its
  hosts (or the restrict.youtube.com / restrictmoderate.youtube.com addresses).

The caller rewrites the request as told; `apply_query` replaces a parameter
the pupil set rather than adding a second one, so `safe=off` cannot win.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote_plus, unquote_plus

from schoolgate.addons.searchterms import engine_for_host, is_search_path
from schoolgate.urls import Target

YouTubeMode = Literal["Strict", "Moderate"]

_SEARCH_PARAMETERS: dict[str, dict[str, str]] = {
    "google": {"safe": "active"},
    "bing": {"adlt": "strict"},
    "duckduckgo": {"kp": "1"},
    "yahoo": {"vm": "r"},
    "brave": {"safesearch": "strict"},
    "startpage": {"qadf": "heavy"},
    "yandex": {"family": "yes"},
}
# The addresses each service documents for DNS-level enforcement: the upstream
# connection goes there while Host and SNI stay as the pupil sent them.
_ENFORCING_HOSTS: dict[str, str] = {
    "google": "forcesafesearch.google.com",
    "bing": "strict.bing.com",
    "duckduckgo": "safe.duckduckgo.com",
}
_YOUTUBE_HOSTS: dict[YouTubeMode, str] = {"Strict": "restrict.youtube.com", "Moderate": "restrictmoderate.youtube.com"}


@dataclass(frozen=True, slots=True)
class SafeSearchChange:
    set_query: dict[str, str] = field(default_factory=dict)
    set_headers: dict[str, str] = field(default_factory=dict)
    redirect_host: str | None = None  # connect upstream here instead, keeping Host/SNI
    reason: str = ""


def enforce(target: Target, *, youtube_mode: YouTubeMode = "Strict", use_enforcing_host: bool = False) -> SafeSearchChange | None:
    """What to change on this request so the service filters explicit results;
    None when the request is not one SafeSearch applies to."""
    engine = engine_for_host(target.host)
    if engine == "youtube":
        return SafeSearchChange(
            set_headers={"YouTube-Restrict": youtube_mode},
            redirect_host=_YOUTUBE_HOSTS[youtube_mode] if use_enforcing_host else None,
            reason=f"YouTube restricted mode ({youtube_mode.lower()})",
        )
    parameters = _SEARCH_PARAMETERS.get(engine or "")
    if engine is None or parameters is None or not (target.path == "/" or is_search_path(engine, target.path)):
        return None
    return SafeSearchChange(
        set_query=dict(parameters),
        redirect_host=_ENFORCING_HOSTS.get(engine) if use_enforcing_host else None,
        reason=f"{engine} SafeSearch ({', '.join(f'{k}={v}' for k, v in parameters.items())})",
    )


def apply_query(query: str, set_query: dict[str, str]) -> str:
    """`query` with each parameter of `set_query` set to its value: every copy the
    client sent (in any case or encoding) is removed, the others are kept as sent."""
    if not set_query:
        return query
    forced = {name.lower() for name in set_query}
    kept = [pair for pair in query.split("&") if pair and unquote_plus(pair.split("=", 1)[0]).lower() not in forced]
    kept += [f"{quote_plus(name)}={quote_plus(value)}" for name, value in set_query.items()]
    return "&".join(kept)
