"""Where category lists come from and how their lines are read.

Three shapes are read:
- UT1 layout: `<category>/domains` and `<category>/urls` under a directory, a
  `.tar.gz` of one, or an http(s) URL to such a tarball (downloaded to a
  temporary file);
- plain lists a school keeps itself: one domain or URL a line, or hosts-file
  lines (`0.0.0.0 ads.example.com`);
- the built-in list shipped in `builtin/` (UT1 layout named by schoolgate id),
  plus, for the test suite only, the tree named by $SCHOOLGATE_TEST_LISTS (the
  reserved `.test` domains the tests browse to never ship in a production index).

A line that cannot be an entry raises MalformedLine; the compiler counts and
reports those instead of failing, because upstream lists always carry a few.
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO

from schoolgate.categories.taxonomy import CATEGORIES, UT1_MAPPING, category
from schoolgate.urls import CANONICAL_HOST, InvalidHost, normalise_entry

BUILTIN_DIR = Path(__file__).parent / "builtin"
# Names a hosts file maps to itself, not blocking entries.
_HOSTS_FILE_SELF_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost", "ip6-loopback", "0.0.0.0"}
)
log = logging.getLogger("schoolgate.lists")
_DOWNLOAD_TIMEOUT_SECONDS = 60
TEST_LISTS_VARIABLE = "SCHOOLGATE_TEST_LISTS"
_GZIP_MAGIC = b"\x1f\x8b"
_TAR_MAGIC_OFFSET = 257  # "ustar" in a tar header block
_PROGRESS_INTERVAL_SECONDS = 0.2
_LOGGED_TENTHS_FROM_BYTES = 4 << 20  # smaller jobs log only their start and end


class ListKind(StrEnum):
    DOMAINS = "domains"  # UT1 `domains`: a host a line, matching it and its subdomains
    URLS = "urls"  # UT1 `urls`: host/path-prefix a line
    PLAIN = "plain"  # a school's list or a hosts file: domains, URLs or hosts-file lines


class MalformedLine(ValueError):
    """A list line that is not an entry; the message says why."""


class MalformedSource(ValueError):
    """A whole list file that cannot be read as a list (an archive, a binary file)."""


class SourceUnusable(ValueError):
    """A download or archive that is not a whole UT1 distribution (cut short, an
    error page, a different format); nothing from it may reach an index."""


def _binary_problem(start: bytes) -> str | None:
    if len(start) > _TAR_MAGIC_OFFSET + 5 and start[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "a tar archive (give UT1 archives as a source)"
    if start.startswith(_GZIP_MAGIC):
        return "gzip inside gzip"
    if b"\0" in start:
        return "a binary file"
    return None


@dataclass(frozen=True)
class ListSource:
    category: str  # schoolgate category id
    kind: ListKind
    path: Path
    name: str  # how reports refer to it, e.g. "ut1:adult/domains"
    skip: frozenset[str] = frozenset()  # entries ("host" or "host/path") left out: a school's overrides

    def lines(self) -> Iterator[str]:
        """The list's lines; a gzip'd list is read through gzip, an archive or other
        binary file is refused (read as text, it would be thousands of junk lines).

        Lists are UTF-8 by convention; a stray byte is reported on its line, not fatal."""
        with self.path.open("rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
        opener = gzip.open if compressed else open
        with opener(self.path, "rb") as f:
            start = f.read(8192)
        problem = _binary_problem(start)
        if problem:
            raise MalformedSource(f"{self.path}: {problem}, not a list of entries")
        with opener(self.path, "rt", encoding="utf-8", errors="replace") as f:
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
    stripped = line.strip()
    if CANONICAL_HOST.fullmatch(stripped):  # nearly every line of big lists: no need to tokenise and normalise
        return [(stripped, "")]
    tokens = line.split()
    # A comment starts a line or follows a space: `host/#frag` is one URL entry.
    for i, token in enumerate(tokens):
        if token.startswith("#"):
            tokens = tokens[:i]
            break
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
    """The small curated list shipped with schoolgate (directories named by schoolgate id),
    with the test suite's `.test` entries when $SCHOOLGATE_TEST_LISTS names their tree."""
    by_id = {id: id for id in CATEGORIES}
    tree = ut1_tree(BUILTIN_DIR, by_id, label="builtin")
    test_lists = os.environ.get(TEST_LISTS_VARIABLE)
    if test_lists:
        tree.sources.extend(ut1_tree(Path(test_lists), by_id, label="test").sources)
    return tree


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
    `with` block, so the compiler can read them as plain files. A download cut
    short, or an archive that is not a whole readable tar.gz of UT1 lists, raises
    SourceUnusable."""
    if location.startswith(("http://", "https://")):
        with tempfile.TemporaryDirectory(prefix="schoolgate-ut1-") as tmp:
            archive = Path(tmp) / "lists.tar.gz"
            download(location, archive)
            with open_ut1(str(archive)) as tree:
                yield tree
        return
    path = Path(location)
    if path.is_dir():
        tree = ut1_tree(_ut1_root(path))
        if not tree.sources:
            raise SourceUnusable(f"{location} holds no UT1 category this schoolgate imports")
        yield tree
        return
    if not path.is_file():
        raise FileNotFoundError(f"no UT1 list at {location}")
    import tarfile  # here: only an archive needs it, and `classify` starts faster without

    with tempfile.TemporaryDirectory(prefix="schoolgate-ut1-") as tmp:
        try:
            with tarfile.open(path, "r:*") as tar:
                tar.extractall(tmp, filter="data")  # the data filter refuses paths escaping tmp
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise SourceUnusable(f"{location} is not a complete tar archive ({e})") from None
        try:
            root = _ut1_root(Path(tmp))
        except FileNotFoundError as e:
            raise SourceUnusable(f"{location}: {e}") from None
        tree = ut1_tree(root)
        if not tree.sources:
            raise SourceUnusable(f"{location} holds no UT1 category this schoolgate imports")
        yield tree


def _ut1_root(path: Path) -> Path:
    """The directory holding the category directories: upstream tarballs wrap
    them in `blacklists/`, a checkout has them at the top."""
    for depth in range(3):
        pattern = "/".join(["*"] * (depth + 1)) + "/domains"
        first = next(iter(sorted(path.glob(pattern))), None)
        if first is not None:
            return first.parent.parent
    raise FileNotFoundError(f"no <category>/domains file under {path}")


def download(url: str, dest: Path) -> None:
    """Fetch `url` to `dest`; raises SourceUnusable unless all the bytes the server
    announced arrived and they are a gzip stream (UT1 publishes .tar.gz only)."""
    import http.client  # here: only a download needs the HTTP client, and `classify` starts faster without
    import urllib.request

    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_SECONDS) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        received = 0
        with progress(total, f"download {url}") as advance:
            try:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            except http.client.IncompleteRead as e:
                received += len(e.partial)
    if total and received != total:
        raise SourceUnusable(f"{url}: the download stopped at {received:,} of {total:,} bytes")
    with dest.open("rb") as f:
        if f.read(2) != _GZIP_MAGIC:
            raise SourceUnusable(f"{url} did not send a .tar.gz (an error page or a captive portal?)")


@contextmanager
def progress(total: int, description: str, stream: IO[str] | None = None) -> Iterator[Callable[[int], None]]:
    """Byte-count progress, yielding `advance(n_bytes)`: a line on stderr when it is
    a terminal, else an INFO log line every tenth (the gateway's first-start
    download shows in its log; cron jobs get the final report only)."""
    stream = stream or sys.stderr
    if not stream.isatty():
        with _logged_progress(total, description) as log_advance:
            yield log_advance
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


@contextmanager
def _logged_progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    done = 0
    next_tenth = 1

    def advance(n: int) -> None:
        nonlocal done, next_tenth
        done += n
        while total >= _LOGGED_TENTHS_FROM_BYTES and next_tenth <= 9 and done * 10 >= total * next_tenth:
            log.info("%s: %d%% of %.1f MB", description, next_tenth * 10, total / 1e6)
            next_tenth += 1

    log.info("%s: started (%.1f MB)", description, total / 1e6)
    yield advance
    log.info("%s: done (%.1f MB)", description, done / 1e6)
