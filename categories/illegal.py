"""The locked illegal-content tier: the IWF child sexual abuse URL list and the
Home Office (CTIRU) list of unlawful terrorist content.

UK schools must block both, and no one, not even an administrator, may open
them. So this tier is checked before anything else in a decision (exceptions,
local allows and the policy's category actions never reach it), and where it
lives is not a policy setting: it is a directory given to the gateway when it
starts (`--set schoolgate_illegal_dir=...`, default `illegal-content/` in the
gateway's state directory, see default_dir), which a policy edit cannot point elsewhere.

Layout: one sub-directory per list, its name saying whose list it is

    illegal-content/iwf/<any name>.<format>     child sexual abuse (Internet Watch Foundation)
    illegal-content/ctiru/<any name>.<format>   unlawful terrorist content (CTIRU / Home Office)

and the file suffix saying the format:

    .txt .urls .list   one URL or domain a line (`#` comments): a domain blocks
                       it and its subdomains, a URL blocks that address and
                       everything below it
    .sha256 .sha1 .md5 one hex digest a line of an entry in canonical form:
                       lower case, no scheme, port, leading `www.` or trailing
                       slash, e.g. sha256("example.com/some/page.html") or
                       sha256("example.com") for a whole site

A hashed list is compared with the digests of the request's host, each parent
domain, and the URL cut at each `/` (and whole, with its query). Plain Python:
no I/O library, so `explain` and the tests use it as the gateway does.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from schoolgate.urls import InvalidHost, normalise_entry, parent_domains, url_entry_matches, url_host_start

DEFAULT_DIR = Path("illegal-content")
DIR_VARIABLE = "SCHOOLGATE_ILLEGAL_DIR"  # the CLI's default, so `check` and `explain` read what the gateway reads
# The IWF updates its list twice a day; a copy two days old is no longer being refreshed.
MAX_AGE_HOURS = 48

PROVIDERS = {
    "iwf": ("child sexual abuse content (Internet Watch Foundation list)", "the IWF list"),
    "ctiru": ("unlawful terrorist content (Home Office CTIRU list)", "the CTIRU list"),
}
_PLAIN_SUFFIXES = frozenset({".txt", ".urls", ".list"})
_HASH_SUFFIXES = {".sha256": "sha256", ".sha1": "sha1", ".md5": "md5"}
_HASHERS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1, "md5": hashlib.md5}  # direct: hashlib.new is slower


def default_dir() -> Path:
    """$SCHOOLGATE_ILLEGAL_DIR, else illegal-content/ in $SCHOOLGATE_STATE_DIR (set by the
    systemd units), else in the working directory."""
    if explicit := os.environ.get(DIR_VARIABLE):
        return Path(explicit)
    return Path(os.environ.get("SCHOOLGATE_STATE_DIR") or ".") / DEFAULT_DIR


@dataclass(frozen=True, slots=True)
class IllegalHit:
    provider: str  # iwf, ctiru
    source: str  # file:line of the entry (never the entry itself: hashed lists have none to show)

    @property
    def description(self) -> str:
        return PROVIDERS[self.provider][0]


@dataclass(frozen=True)
class TierList:
    provider: str
    path: Path
    format: str  # plain, sha256, sha1, md5
    entries: int
    malformed: int
    modified: float  # epoch seconds


@dataclass
class IllegalTier:
    """The loaded lists; `problems` says what a DSL and IT must hear (a missing
    provider, an unreadable or stale file). An empty tier blocks nothing and says so."""

    directory: Path | None
    lists: list[TierList] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _domains: dict[str, IllegalHit] = field(default_factory=dict)
    _urls: dict[str, list[tuple[str, IllegalHit]]] = field(default_factory=dict)
    _hashes: dict[str, dict[bytes, IllegalHit]] = field(default_factory=dict)
    stamps: tuple[tuple[str, float, int], ...] = ()  # what a reload compares

    @property
    def entry_count(self) -> int:
        return sum(t.entries for t in self.lists)

    def entries_by_provider(self) -> dict[str, int]:
        counts = dict.fromkeys(PROVIDERS, 0)
        for t in self.lists:
            counts[t.provider] += t.entries
        return counts

    def oldest(self) -> float | None:
        return min((t.modified for t in self.lists), default=None)

    def lookup(self, host: str, match_path: str) -> IllegalHit | None:
        """The tier's entry for this canonical host and path+query, if any."""
        bare = host[url_host_start(host) :]  # as the category index compares URL entries
        parents = parent_domains(host)
        for domain in parents:
            hit = self._domains.get(domain)
            if hit is not None:
                return hit
        for prefix, hit in self._urls.get(bare, ()):
            if url_entry_matches(match_path, prefix):
                return hit
        if self._hashes:
            for candidate in _hash_candidates(parents, host, bare, match_path):
                raw = candidate.encode()
                for algorithm, digests in self._hashes.items():
                    hit = digests.get(_HASHERS[algorithm](raw).digest())
                    if hit is not None:
                        return hit
        return None

    def has_url_entries(self, host: str) -> bool:
        """Whether a request's path on this host could be listed. A hashed list hides
        which hosts its URLs are on, so with one loaded every host could be."""
        return bool(self._hashes) or host[url_host_start(host):] in self._urls

    def changed_on_disk(self) -> bool:
        return _stamps(self.directory) != self.stamps


def _hash_candidates(parents: list[str], host: str, bare: str, match_path: str) -> Iterator[str]:
    yield from parents
    if bare != host:
        yield bare
    path = match_path.split("?", 1)[0]
    end = 0
    while (end := path.find("/", end + 1)) != -1:
        yield bare + path[:end]
    if path.rstrip("/"):
        yield bare + path.rstrip("/")
    if match_path != path:
        yield bare + match_path


def _stamps(directory: Path | None) -> tuple[tuple[str, float, int], ...]:
    if directory is None or not directory.is_dir():
        return ()
    found = []
    for provider in PROVIDERS:
        folder = directory / provider
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                try:
                    st = path.stat()
                except OSError:
                    continue
                found.append((str(path), st.st_mtime, st.st_size))
    return tuple(found)


def load(directory: Path | None, now: float | None = None, max_age_hours: float = MAX_AGE_HOURS) -> IllegalTier:
    """Read every list under `directory`; never raises (what cannot be read is a problem)."""
    now = time.time() if now is None else now
    tier = IllegalTier(directory=directory, stamps=_stamps(directory))
    if directory is None or not directory.is_dir():
        tier.problems.append(
            f"no illegal-content lists at {directory.absolute() if directory else None}: the IWF and CTIRU lists are not blocked "
            "(see categories/README.md, 'The illegal-content tier')"
        )
        return tier
    for provider, (description, title) in PROVIDERS.items():
        folder = directory / provider
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        usable = [p for p in files if p.suffix in _PLAIN_SUFFIXES or p.suffix in _HASH_SUFFIXES]
        for path in files:
            if path not in usable and not path.name.startswith("."):
                tier.problems.append(f"{path}: unknown list format {path.suffix!r} (use .txt, .sha256, .sha1 or .md5)")
        if not usable:
            tier.problems.append(f"{title} is missing (no list in {folder}): {description} is not blocked")
            continue
        for path in usable:
            try:
                tier.lists.append(_read(tier, provider, path))
            except OSError as e:
                tier.problems.append(f"{path}: cannot be read ({e.strerror or e}): {title} may be incomplete")
    for t in tier.lists:
        age_hours = (now - t.modified) / 3600
        if age_hours > max_age_hours:
            tier.problems.append(f"{t.path} is {age_hours:.0f} hours old (more than {max_age_hours:.0f}): "
                                 "is the provider's update reaching this gateway?")
        if t.malformed:
            tier.problems.append(f"{t.path}: {t.malformed} lines are not entries")
        if not t.entries:
            tier.problems.append(f"{t.path} holds no entries")
    return tier


def _read(tier: IllegalTier, provider: str, path: Path) -> TierList:
    algorithm = _HASH_SUFFIXES.get(path.suffix)
    entries = malformed = 0
    size = hashlib.new(algorithm).digest_size if algorithm else 0
    with path.open(encoding="utf-8", errors="replace") as f:
        modified = os.fstat(f.fileno()).st_mtime
        for number, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            hit = IllegalHit(provider, f"{path.name}:{number}")
            if algorithm:
                try:
                    digest = bytes.fromhex(text.split()[0])
                except ValueError:
                    digest = b""
                if len(digest) != size:
                    malformed += 1
                    continue
                tier._hashes.setdefault(algorithm, {}).setdefault(digest, hit)
            else:
                try:
                    host, prefix = normalise_entry(text.split()[0])
                except InvalidHost:
                    host, prefix = "", ""
                if "." not in host and ":" not in host:  # unreadable, or a bare label that would block a TLD
                    malformed += 1
                    continue
                if prefix:
                    tier._urls.setdefault(host[url_host_start(host) :], []).append((prefix, hit))
                else:
                    tier._domains.setdefault(host, hit)
            entries += 1
    return TierList(provider, path, algorithm or "plain", entries, malformed, modified)


def canonical_digest(entry: str, algorithm: str = "sha256") -> str:
    """The hex digest a hashed list holds for `entry` (a URL or domain as a provider
    writes it): what a school or provider runs to turn a plain list into a hashed one."""
    host, prefix = normalise_entry(entry)
    if prefix:
        host = host[url_host_start(host) :]
    return hashlib.new(algorithm, (host + prefix.rstrip("/")).encode()).hexdigest()
