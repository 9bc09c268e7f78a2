"""Where category lists come from and how their lines are read.

Three shapes are read:
- UT1 layout: `<category>/domains` and `<category>/urls` under a directory, a
  `.tar.gz` of one, or an http(s) URL to such a tarball (downloaded to a
  temporary file);
- plain lists a school keeps itself: one domain or URL a line, or hosts-file
  lines (`0.0.0.0 ads.example.com`);
- the built-in list shipped in `builtin/` (UT1 layout named by schoolgate id).

A line that cannot be an entry raises MalformedLine; the compiler counts and
reports those instead of failing, because upstream lists always carry a few.
"""

from __future__ import annotations

import ipaddress
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO

from schoolgate.categories.taxonomy import CATEGORIES, UT1_MAPPING, category
from schoolgate.urls import InvalidHost, normalise_entry

BUILTIN_DIR = Path(__file__).parent / "builtin"
# Names a hosts file maps to itself, not blocking entries.
_HOSTS_FILE_SELF_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost", "ip6-loopback", "0.0.0.0"}
)
_DOWNLOAD_TIMEOUT_SECONDS = 60
_PROGRESS_INTERVAL_SECONDS = 0.2


class ListKind(StrEnum):
    DOMAINS = "domains"  # UT1 `domains`: a host a line, matching it and its subdomains
    URLS = "urls"  # UT1 `urls`: host/path-prefix a line
    PLAIN = "plain"  # a school's list or a hosts file: domains, URLs or hosts-file lines


class MalformedLine(ValueError):
    """A list line that is not an entry; the message says why."""


@dataclass(frozen=True)
class ListSource:
    category: str  # schoolgate category id
    kind: ListKind
    path: Path
    name: str  # how reports refer to it, e.g. "ut1:adult/domains"

    def lines(self) -> Iterator[str]:
        # Lists are UTF-8 by convention; a stray byte is reported on its line, not fatal.
        with self.path.open(encoding="utf-8", errors="replace") as f:
            yield from f

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class Ut1Tree:
    """The readable lists of a UT1-layout tree and the directories left out."""

    sources: list[ListSource]
    ignored: list[str] = field(default_factory=list)  # mapped to None on purpose
    unknown: list[str] = field(default_factory=list)  # not in the mapping at all


def parse_line(kind: ListKind, line: str) -> list[tuple[str, str]]:
    """The (host, path-prefix) entries on one list line; [] for blanks and comments.

    Like squidGuard, only the first whitespace-separated token of a UT1 line is
    the entry (anything after it is a redirect target there)."""
    tokens = line.split("#", 1)[0].split() if "#" in line else line.split()
    if not tokens:
        return []
    if kind is ListKind.PLAIN and len(tokens) > 1 and _is_ip(tokens[0]):
        names = [t for t in tokens[1:] if t.lower() not in _HOSTS_FILE_SELF_NAMES]
    else:
        names = tokens[:1]
    entries = []
    for name in names:
        try:
            host, prefix = normalise_entry(name)
        except InvalidHost as e:
            raise MalformedLine(str(e)) from None
        if prefix and kind is ListKind.DOMAINS:
            raise MalformedLine(f"a path in a domains list: {name!r}")
        if not prefix and "." not in host and ":" not in host and not name.startswith((".", "*.")):
            # Big lists carry a few of these (`com` in one adult list): they would
            # block a whole top-level domain. Writing `*.xxx` or `.xxx` says it is meant.
            raise MalformedLine(f"a bare top-level domain, would match every site under it: {name!r}")
        entries.append((host, prefix))
    return entries


def _is_ip(token: str) -> bool:
    try:
        ipaddress.ip_address(token)
    except ValueError:
        return False
    return True


def ut1_tree(root: Path, mapping: Mapping[str, str | None] = UT1_MAPPING, label: str = "ut1") -> Ut1Tree:
    """The lists of a UT1-layout directory, their categories translated by `mapping`.

    Symlinked category directories are upstream aliases of real ones and are
    skipped so that no list is read twice."""
    sources: list[ListSource] = []
    ignored: list[str] = []
    unknown: list[str] = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        files = [(kind, directory / kind.value) for kind in (ListKind.DOMAINS, ListKind.URLS)]
        files = [(kind, path) for kind, path in files if path.is_file()]
        if not files:
            continue
        if directory.name not in mapping:
            unknown.append(directory.name)
            continue
        target = mapping[directory.name]
        if target is None:
            ignored.append(directory.name)
            continue
        sources += [
            ListSource(category=target, kind=kind, path=path, name=f"{label}:{directory.name}/{kind.value}")
            for kind, path in files
        ]
    return Ut1Tree(sources=sources, ignored=ignored, unknown=unknown)


def builtin_tree() -> Ut1Tree:
    """The small curated list shipped with schoolgate (directories named by schoolgate id)."""
    return ut1_tree(BUILTIN_DIR, {id: id for id in CATEGORIES}, label="builtin")


def plain_source(path: Path, category_id: str) -> ListSource:
    """A school's own list (domains, URLs or hosts-file lines) filed under one category."""
    category(category_id)  # fail early, with suggestions, on a mistyped id
    return ListSource(category=category_id, kind=ListKind.PLAIN, path=path, name=str(path))


def parse_extra(spec: str) -> ListSource:
    """`FILE:CATEGORY` from the command line."""
    path, sep, category_id = spec.rpartition(":")
    if not sep or not path or not category_id:
        raise ValueError(f"expected FILE:CATEGORY, got {spec!r}")
    return plain_source(Path(path), category_id)


@contextmanager
def open_ut1(location: str) -> Iterator[Ut1Tree]:
    """A UT1 source given as a directory, a tarball, or an http(s) URL of a tarball.

    Tarballs are unpacked into a temporary directory that lives as long as the
    `with` block, so the compiler can read them as plain files."""
    if location.startswith(("http://", "https://")):
        with tempfile.TemporaryDirectory(prefix="schoolgate-ut1-") as tmp:
            archive = Path(tmp) / "lists.tar.gz"
            _download(location, archive)
            with open_ut1(str(archive)) as tree:
                yield tree
        return
    path = Path(location)
    if path.is_dir():
        yield ut1_tree(_ut1_root(path))
        return
    if not path.is_file():
        raise FileNotFoundError(f"no UT1 list at {location}")
    with tempfile.TemporaryDirectory(prefix="schoolgate-ut1-") as tmp:
        with tarfile.open(path, "r:*") as archive:
            archive.extractall(tmp, filter="data")  # the data filter refuses paths escaping tmp
        yield ut1_tree(_ut1_root(Path(tmp)))


def _ut1_root(path: Path) -> Path:
    """The directory holding the category directories: upstream tarballs wrap
    them in `blacklists/`, a checkout has them at the top."""
    for depth in range(3):
        pattern = "/".join(["*"] * (depth + 1)) + "/domains"
        first = next(iter(sorted(path.glob(pattern))), None)
        if first is not None:
            return first.parent.parent
    raise FileNotFoundError(f"no <category>/domains file under {path}")


def _download(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_SECONDS) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        with progress(total, f"download {url}") as advance:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                advance(len(chunk))


@contextmanager
def progress(total: int, description: str, stream: IO[str] | None = None) -> Iterator[Callable[[int], None]]:
    """A byte-count progress line on stderr, silent when stderr is not a terminal
    (cron jobs and logs get the final report only). Yields `advance(n_bytes)`."""
    stream = stream or sys.stderr
    if not stream.isatty():
        yield lambda _n: None
        return
    done = 0
    shown = 0.0

    def advance(n: int) -> None:
        nonlocal done, shown
        done += n
        now = time.monotonic()
        if now - shown >= _PROGRESS_INTERVAL_SECONDS:
            shown = now
            share = f"{100 * done / total:3.0f}% of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
            stream.write(f"\r{description}: {share}")
            stream.flush()

    try:
        yield advance
    finally:
        stream.write("\r\033[K")  # clear the line for the report that follows
        stream.flush()
