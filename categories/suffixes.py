"""Public suffixes (`co.uk`, `sch.uk`, `github.io`): an allow, block or exception
entry on one would cover every school, company or user site under it, so it is
refused; and reports group hosts by their registrable domain.

Uses tldextract's bundled copy of the Public Suffix List, ICANN and private
sections, and never fetches it over the network: the gateway and the CLI
decide the same way on a machine with no way out. Checking an entry reads the
list's rules directly (milliseconds); tldextract itself (a third of a second to
import and index, with `requests`) loads only for registrable domains (reports).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any


@functools.cache
def _extract() -> Any:
    """Made on first use: tldextract brings `requests` with it, which the CLI's start-up need not pay for."""
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)


@functools.lru_cache(maxsize=65536)
def registrable_domain(host: str) -> str:
    """`news.bbc.co.uk` -> `bbc.co.uk`, `amy.github.io` -> `amy.github.io`; an IP
    literal, a single label or a public suffix is its own."""
    parts = _extract()(host)
    if not parts.suffix or not parts.domain:
        return host
    return f"{parts.domain}.{parts.suffix}"


@functools.cache
def _rules() -> frozenset[str]:
    """The list's rules (`co.uk`, `*.sch.uk`, `!city.kawasaki.jp`), IDN ones also in punycode."""
    spec = importlib.util.find_spec("tldextract")  # its data file, without importing the package
    assert spec is not None and spec.submodule_search_locations
    text = (Path(spec.submodule_search_locations[0]) / ".tld_set_snapshot").read_text(encoding="utf-8")
    rules = set()
    for line in text.splitlines():
        rule = line.strip()
        if not rule or rule.startswith("//"):
            continue
        rules.add(rule)
        try:
            rules.add(rule.encode("idna").decode("ascii"))
        except UnicodeError:
            pass
    return frozenset(rules)


def _is_suffix(name: str) -> bool:
    rules = _rules()
    parent = name.partition(".")[2]
    return name in rules or (bool(parent) and f"*.{parent}" in rules and f"!{name}" not in rules)


def public_suffix_problem(host: str) -> str | None:
    """Why an entry on `host` (canonical, no path) would be far too wide, or None.

    Refused: a public suffix itself (`co.uk`, `github.io`), and a name whose every
    child is one (`sch.uk`: the list says `*.sch.uk`, so each county's
    `X.sch.uk` is a suffix and schools sit below them)."""
    if not host or ":" in host or host.replace(".", "").isdigit():
        return None  # IP literals have no suffix
    if _is_suffix(host):
        return f"{host} is a public suffix: an entry on it would cover every site registered under it"
    if "." in host and f"*.{host}" in _rules():
        return f"every name under {host} is a public suffix: an entry on it would cover every site below them"
    return None
