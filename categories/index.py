"""The compiled category index: millions of list entries in one memory-mapped
file, answering "which categories is this host/URL in" in about a microsecond.

File layout (little-endian, sections 8-byte aligned; see README.md for why):

    magic "SGCATIX\\x02", u64 header length, u64 xxh3-64 of everything after
    these 24 bytes (header and sections), JSON header, then the sections
    keys       u64[n]        xxh3-64 of each listed host, grouped by bucket (hash & mask)
    vals       u32[n]        flags (HAS_LONGER, URL_FLAG) | category-set id or url_hosts number
    buckets    u32[nb + 1]   start of each bucket in keys/vals (nb = power of two >= n)
    url_hosts  u32[3 * u]    (category-set id of the host itself, first URL record, record count)
    url_recs   u32[3 * r]    (offset, length of the path prefix in url_blob, category-set id)
    url_blob   bytes         UTF-8 path prefixes

Host strings are not stored: a hit's entry is rebuilt from the suffix that was
probed. Category sets (most hosts have one category) live in the header.
"""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import accumulate, chain, repeat
from operator import lshift, or_
from pathlib import Path
from typing import BinaryIO

from xxhash import xxh3_64, xxh3_64_intdigest

from schoolgate.categories.sources import ListKind, ListSource, MalformedLine, builtin_tree, parse_line, progress
from schoolgate.urls import is_ip, url_entry_matches, url_host_start

MAGIC = b"SGCATIX\x02"
FORMAT_VERSION = 2
_PREAMBLE = struct.Struct("<8sQQ")  # magic, header length, checksum of the rest
# A key's u32 value: flags, then a category-set id or (with _URL_FLAG) a url_hosts number.
_URL_FLAG = 0x8000_0000
_HAS_LONGER = 0x4000_0000  # longer listed hosts end with this one: keep probing inwards
_NUMBER_MASK = 0x3FFF_FFFF
_SECTIONS = ("keys", "vals", "buckets", "url_hosts", "url_recs", "url_blob")
_SECTION_TYPES = {"keys": "Q", "vals": "I", "buckets": "I", "url_hosts": "I", "url_recs": "I"}
_IP_LAST_CHARS = frozenset("0123456789:")
# Compiling: a record's tag is a category number, or one of these markers.
_TAG_PARENT = 0xFF  # a parent domain of a listed host: lookups probe on past it
_TAG_URL_HOST = 0xFE  # a host with URL entries
_MAX_CATEGORIES = 0xFE
_PART_SHIFT = 58  # records are kept in 2**6 parts by their hash's top bits, sorted one at a time
_PARTS = 1 << (64 - _PART_SHIFT)
_END_RECORD = 1 << 72 | _TAG_PARENT  # after a part's last record: a hash no record has, flushing the last
_MALFORMED_EXAMPLES = 5
_PROGRESS_EVERY_LINES = 65536

if sys.byteorder != "little":  # the file is read in place with native arrays
    raise ImportError("the category index format needs a little-endian machine")


@dataclass(frozen=True, slots=True)
class CategoryHit:
    category: str
    entry: str  # the list entry that matched, e.g. "example.com" or "example.com/some/path"


# A frozen dataclass's __init__ goes through object.__setattr__ per field and
# costs as much as a whole miss lookup; hits are built through the slots directly.
_set_hit_category = CategoryHit.category.__set__  # type: ignore[attr-defined,misc]
_set_hit_entry = CategoryHit.entry.__set__  # type: ignore[attr-defined,misc]


def _new_hit(category: str, entry: str) -> CategoryHit:
    hit = object.__new__(CategoryHit)
    _set_hit_category(hit, category)
    _set_hit_entry(hit, entry)
    return hit


@dataclass
class SourceReport:
    name: str
    category: str
    kind: str
    entries: int = 0
    malformed: int = 0
    examples: list[str] = field(default_factory=list)  # "line N: reason"


@dataclass
class CompileReport:
    sources: list[SourceReport]
    categories: dict[str, int]  # distinct entries per category
    entry_count: int  # distinct hosts and URL entries, whatever their categories
    output: Path | None
    size_bytes: int
    seconds: float

    @property
    def malformed(self) -> int:
        return sum(s.malformed for s in self.sources)

    def summary(self) -> str:
        where = self.output or "memory"
        lines = [
            f"compiled {self.entry_count:,} entries in {len(self.categories)} categories "
            f"to {where} ({self.size_bytes / 1e6:.1f} MB, {self.seconds:.1f} s); "
            f"{self.malformed:,} malformed lines skipped"
        ]
        for source in self.sources:
            if source.malformed:
                lines.append(f"  {source.name}: {source.malformed:,} malformed, e.g. " + "; ".join(source.examples))
        return "\n".join(lines)


class IndexInvalid(ValueError):
    """A file that must not be used as the category index; `problem` is a short,
    fixed word for metrics and logs (missing, unreadable, not-an-index,
    old-format, truncated, corrupt)."""

    def __init__(self, problem: str, message: str):
        super().__init__(message)
        self.problem = problem


class CategoryIndex:
    """A compiled index, checked against its checksum and read in place from
    private memory (never a shared mapping of the file: a file truncated or
    rewritten under a running gateway must not be able to crash it)."""

    def __init__(self, image: bytes, path: Path | None = None):
        self.path = path
        self._image = image
        self._view = memoryview(image)
        header = _verified_header(self._view, path or "image")
        self.header = header
        sections = {}
        for name in _SECTIONS:
            start, length = header["sections"][name]
            view = self._view[start : start + length]
            sections[name] = view.cast(_SECTION_TYPES[name]) if name in _SECTION_TYPES else view  # type: ignore[call-overload]
        self._sections = sections
        self._keys = sections["keys"]
        self._vals = sections["vals"]
        self._buckets = sections["buckets"]
        self._url_hosts = sections["url_hosts"]
        self._url_recs = sections["url_recs"]
        self._url_blob = sections["url_blob"]
        self._mask = header["bucket_count"] - 1
        categories = header["categories"]
        self._set_categories: list[tuple[str, ...]] = [tuple(categories[i] for i in s) for s in header["sets"]]
        self._single_labels = frozenset(header["single_labels"])

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CategoryIndex:
        """Read and verify the index at `path`; raises IndexInvalid. The whole file
        is read (a copy per process, see README.md for the cost)."""
        path = Path(path)
        try:
            image = path.read_bytes()
        except FileNotFoundError:
            raise IndexInvalid("missing", f"{path} does not exist") from None
        except OSError as e:
            raise IndexInvalid("unreadable", f"cannot read {path}: {e.strerror or e}") from None
        return cls(image, path)

    def close(self) -> None:
        for view in self._sections.values():
            view.release()
        self._view.release()

    def __enter__(self) -> CategoryIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def entry_count(self) -> int:
        return self.header["entry_count"]

    def sizes(self) -> dict[str, int]:
        return dict(self.header["counts"])

    def lookup(self, host: str, match_path: str) -> list[CategoryHit]:
        """Categories of `host` (canonical, see urls.normalise_host) and the URL
        path+query `match_path`: domain entries for the host and each parent
        domain, URL entries for the host less a leading www. label.

        Suffixes are probed from the registrable end inwards, and only while the
        probed key says longer entries exist below it: most lookups stop after
        one probe. One hit per category, the most specific entry."""
        raw = host.encode()
        found: dict[str, CategoryHit] = {}
        if host[-1] in _IP_LAST_CHARS and is_ip(host):
            value = self._value(raw)  # IP literals have no parent domains
            if value >= 0:
                self._collect(value, host, 0, match_path, found)
            return list(found.values())
        tld = host.rfind(".") + 1
        if host[tld:] in self._single_labels:  # a listed TLD: rare, compile refuses them unless asked
            self._collect(self._value(raw[tld:]), host, tld, match_path, found)
        if tld:
            start = host.rfind(".", 0, tld - 1) + 1
            while (value := self._value(raw[start:])) >= 0:
                if value & ~_HAS_LONGER:  # not just a parent of longer entries
                    self._collect(value, host, start, match_path, found)
                if not value & _HAS_LONGER or not start:
                    break
                start = host.rfind(".", 0, start - 1) + 1
        return list(found.values()) if found else []

    def has_url_entries(self, host: str) -> bool:
        """Whether any URL entry (a path on this host) is listed: then a request's
        categories depend on its path, not only its host."""
        value = self._value(host[url_host_start(host):].encode())
        return value >= 0 and bool(value & _URL_FLAG)

    def _value(self, suffix: bytes) -> int:
        """The value stored for this host, or -1."""
        h = xxh3_64_intdigest(suffix)
        bucket = h & self._mask
        keys = self._keys
        i = self._buckets[bucket]
        end = self._buckets[bucket + 1]
        while i < end:
            if keys[i] == h:
                return self._vals[i]
            i += 1
        return -1

    def _collect(self, value: int, host: str, start: int, match_path: str, found: dict[str, CategoryHit]) -> None:
        """Add the hits of the key for host[start:]; a longer (later) entry wins per category."""
        number = value & _NUMBER_MASK
        entry = host[start:]
        url_host = None
        if value & _URL_FLAG:
            url_host = self._url_hosts[number * 3 : number * 3 + 3]
            number = url_host[0]
        for category in self._set_categories[number]:
            found[category] = _new_hit(category, entry)
        if url_host and start == url_host_start(host):
            self._collect_urls(entry, url_host[1], url_host[2], match_path, found)

    def _collect_urls(self, host: str, first: int, count: int, match_path: str, found: dict[str, CategoryHit]) -> None:
        recs = self._url_recs
        for r in range(first * 3, (first + count) * 3, 3):
            offset, length, set_id = recs[r : r + 3]
            prefix = bytes(self._url_blob[offset : offset + length]).decode()
            if url_entry_matches(match_path, prefix):
                for category in self._set_categories[set_id]:
                    found[category] = _new_hit(category, host + prefix)


def _verified_header(view: memoryview, where: object) -> dict:
    """The JSON header of an index image whose checksum and section bounds hold."""
    if len(view) < _PREAMBLE.size or bytes(view[:7]) != MAGIC[:7]:
        raise IndexInvalid("not-an-index", f"{where} is not a schoolgate category index")
    magic, header_length, checksum = _PREAMBLE.unpack_from(view)
    if magic != MAGIC:
        raise IndexInvalid(
            "old-format", f"{where}: index format {magic[7]}, this schoolgate reads {FORMAT_VERSION}: run `schoolgate lists update`"
        )
    if _PREAMBLE.size + header_length > len(view):
        raise IndexInvalid("truncated", f"{where} is truncated: {len(view):,} bytes, its header alone is longer")
    try:
        header = json.loads(bytes(view[_PREAMBLE.size : _PREAMBLE.size + header_length]))
        size = header["size"]
    except (ValueError, KeyError, TypeError):
        header, size = None, None
    if isinstance(size, int) and size > len(view):
        raise IndexInvalid("truncated", f"{where} is truncated: {len(view):,} of {size:,} bytes")
    if xxh3_64_intdigest(view[_PREAMBLE.size :]) != checksum or size != len(view) or not isinstance(header, dict):
        raise IndexInvalid("corrupt", f"{where} is corrupt: its checksum does not match its content")
    return header


class _Builder:
    """Collects domain entries as hashes in flat arrays, 8 bytes each, one array
    per tag (category or marker) and part (the hash's top bits). Duplicates go
    when each part is sorted on its own: dicts and sets of millions of Python
    ints cost ten times as much (a compile of 2.84 M entries peaked at 843 MB
    with them). URL entries, a few tens of thousands, stay in dicts."""

    def __init__(self) -> None:
        self.categories: list[str] = []
        self.url_counts: dict[str, int] = {}  # distinct URL entries per category
        self.urls: dict[str, dict[str, int]] = {}  # URL host -> path prefix -> category bits
        self.single_labels: set[str] = set()  # listed hosts without a dot (lookups skip TLDs otherwise)
        self._records: dict[int, list[array]] = {_TAG_PARENT: _parts()}  # tag -> part -> hashes

    def tag(self, category: str) -> int:
        """The category's number, which is also its bit in a category set."""
        if category not in self.url_counts:
            if len(self.categories) == _MAX_CATEGORIES:
                raise ValueError(f"more than {_MAX_CATEGORIES} categories in one index")
            self.categories.append(category)
            self.url_counts[category] = 0
            self._records[len(self.categories) - 1] = _parts()
        return self.categories.index(category)

    def _note_host(self, host: str) -> None:
        """Record what lookups need to find `host`: its parents are flagged so the
        inward walk goes on past them, and a dotless host is probed explicitly."""
        if "." not in host:
            self.single_labels.add(host)
        elif not (host[-1] in _IP_LAST_CHARS and is_ip(host)):
            parents = self._records[_TAG_PARENT]
            dot, last = host.find("."), host.rfind(".")
            while dot < last:  # every parent but the TLD
                h = xxh3_64_intdigest(host[dot + 1 :].encode())
                parents[h >> _PART_SHIFT].append(h)
                dot = host.find(".", dot + 1)

    def add_domain(self, tag: int, host: str) -> None:
        self._note_host(host)
        h = xxh3_64_intdigest(host.encode())
        self._records[tag][h >> _PART_SHIFT].append(h)

    def add_url(self, tag: int, host: str, prefix: str) -> None:
        host = host[url_host_start(host) :]
        self._note_host(host)
        prefixes = self.urls.setdefault(host, {})
        bits = prefixes.get(prefix, 0)
        if not bits >> tag & 1:
            prefixes[prefix] = bits | 1 << tag
            self.url_counts[self.categories[tag]] += 1

    def _part(self, part: int) -> list[int]:
        """The distinct records of one part, in order, as ints: hash then tag (8 bits);
        the part's arrays are emptied."""
        records: set[int] = set()
        for tag, parts in self._records.items():
            records.update(map(or_, map(lshift, parts[part], repeat(8)), repeat(tag)))
            parts[part] = array("Q")
        return sorted(records)

    def layout(self, sources: list[str]) -> tuple[dict, dict[str, array | bytes]]:
        """The header and sections of the index; the records are consumed."""
        url_numbers = {xxh3_64_intdigest(host.encode()): n for n, host in enumerate(sorted(self.urls))}
        self._records[_TAG_URL_HOST] = url_hosts_by_part = _parts()
        for h in url_numbers:
            url_hosts_by_part[h >> _PART_SHIFT].append(h)
        set_ids: dict[int, int] = {0: 0}  # category bits -> set id; set 0 is the empty set
        url_host_sets = array("I", [0]) * len(url_numbers)  # each URL host's own domain set
        domain_counts = [0] * len(self.categories)
        domains = 0  # distinct listed hosts, whatever their categories
        keys, vals = array("Q"), array("I")
        for part in range(_PARTS):
            current, bits, flags = -1, 0, 0
            for record in chain(self._part(part), (_END_RECORD,)):
                h, tag = record >> 8, record & 0xFF
                if h != current:
                    if current >= 0:
                        domains += bits != 0
                        set_id = set_ids.setdefault(bits, len(set_ids))
                        if flags & _URL_FLAG:
                            number = url_numbers[current]
                            url_host_sets[number] = set_id
                            set_id = number
                        keys.append(current)
                        vals.append(flags | set_id)
                    current, bits, flags = h, 0, 0
                if tag == _TAG_PARENT:
                    flags |= _HAS_LONGER
                elif tag == _TAG_URL_HOST:
                    flags |= _URL_FLAG
                else:
                    bits |= 1 << tag
                    domain_counts[tag] += 1
        url_hosts, url_recs, blob = array("I"), array("I"), bytearray()
        for number, host in enumerate(sorted(self.urls)):
            prefixes = self.urls[host]
            url_hosts.extend((url_host_sets[number], len(url_recs) // 3, len(prefixes)))
            for prefix, bits in sorted(prefixes.items()):
                encoded = prefix.encode()
                url_recs.extend((len(blob), len(encoded), set_ids.setdefault(bits, len(set_ids))))
                blob += encoded
        bucket_count, keys, vals, starts = _bucketed(keys, vals)
        counts = {c: domain_counts[i] + self.url_counts[c] for i, c in enumerate(self.categories)}
        header: dict = {
            "version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "categories": self.categories,
            "sets": [[i for i in range(len(self.categories)) if bits >> i & 1] for bits in set_ids],
            "counts": counts,
            "entry_count": domains + sum(map(len, self.urls.values())),
            "bucket_count": bucket_count,
            "single_labels": sorted(self.single_labels),
            "sources": sources,
            "sections": {},
        }
        sections: dict[str, array | bytes] = {"keys": keys, "vals": vals, "buckets": starts, "url_hosts": url_hosts,
                                              "url_recs": url_recs, "url_blob": bytes(blob)}
        return header, sections


def _parts() -> list[array]:
    return [array("Q") for _ in range(_PARTS)]


def _bucketed(keys: array, vals: array) -> tuple[int, array, array, array]:
    """Keys and values (in ascending key order) laid out by bucket, a counting
    sort: (bucket count, keys, values, start of each bucket and the end)."""
    bucket_count = 1 << max(len(keys) - 1, 0).bit_length()
    mask = bucket_count - 1
    sizes = array("I", [0]) * bucket_count
    for h in keys:
        sizes[h & mask] += 1
    ends = array("I", accumulate(sizes, initial=0))  # ends[b + 1]: where bucket b ends
    del sizes
    bucketed_keys, bucketed_vals = array("Q", [0]) * len(keys), array("I", [0]) * len(keys)
    for h, value in zip(reversed(keys), reversed(vals), strict=True):  # each bucket filled from its end
        bucket = h & mask
        slot = ends[bucket + 1] - 1
        ends[bucket + 1] = slot
        bucketed_keys[slot] = h
        bucketed_vals[slot] = value
    # ends[b + 1] is now where bucket b starts: shifted down one place, that is the buckets section.
    ends.pop(0)
    ends.append(len(keys))
    return bucket_count, bucketed_keys, bucketed_vals, ends


def _layout(header: dict, sections: dict[str, array | bytes]) -> bytes:
    """The header, encoded: it records where each 8-byte aligned section starts,
    so its own length is found by iterating to a fixed point."""
    header_length = 0
    while True:
        offset = _align(_PREAMBLE.size + header_length)
        for name in _SECTIONS:
            size = _nbytes(sections[name])
            header["sections"][name] = [offset, size]
            header["size"] = offset + size  # the last section ends the file
            offset = _align(offset + size)
        encoded = json.dumps(header, separators=(",", ":")).encode()
        if len(encoded) == header_length:
            return encoded
        header_length = len(encoded)


def _write_image(out: BinaryIO, header: dict, sections: dict[str, array | bytes]) -> int:
    """Write the index to `out` (at its start), section by section, without
    building it in memory first; returns its size."""
    encoded = _layout(header, sections)
    checksum = xxh3_64()
    out.write(_PREAMBLE.pack(MAGIC, len(encoded), 0))
    position = _PREAMBLE.size
    for chunk_name, chunk in (("", encoded), *((name, sections[name]) for name in _SECTIONS)):
        if chunk_name:
            padding = bytes(header["sections"][chunk_name][0] - position)
            checksum.update(padding)
            position += out.write(padding)
        checksum.update(chunk)
        position += out.write(chunk)
    out.seek(0)
    out.write(_PREAMBLE.pack(MAGIC, len(encoded), checksum.intdigest()))
    return position


def _nbytes(section: array | bytes) -> int:
    return len(section) * section.itemsize if isinstance(section, array) else len(section)


def _align(n: int) -> int:
    return (n + 7) & ~7


def _read_sources(sources: list[ListSource], show_progress: bool) -> tuple[_Builder, list[SourceReport]]:
    builder = _Builder()
    reports = []
    total = sum(s.size for s in sources)
    reporter = progress(total, "compiling lists") if show_progress else nullcontext(_ignore_progress)
    with reporter as advance:
        for source in sources:
            reports.append(_read_source(source, builder, advance))
    return builder, reports


def build_image(sources: Iterable[ListSource], show_progress: bool = True) -> tuple[bytes, CompileReport]:
    """Read every source and lay out an index image in memory (not written anywhere)."""
    started = time.monotonic()
    builder, reports = _read_sources(list(sources), show_progress)
    header, sections = builder.layout([s.name for s in reports])
    out = io.BytesIO()
    size = _write_image(out, header, sections)
    return out.getvalue(), _report(reports, header, size, started)


def _report(reports: list[SourceReport], header: dict, size: int, started: float) -> CompileReport:
    return CompileReport(sources=reports, categories=dict(header["counts"]), entry_count=header["entry_count"],
                         output=None, size_bytes=size, seconds=time.monotonic() - started)


def _ignore_progress(_n_bytes: int) -> None:
    pass


def _read_source(source: ListSource, builder: _Builder, advance: Callable[[int], None]) -> SourceReport:
    report = SourceReport(name=source.name, category=source.category, kind=source.kind.value)
    tag = builder.tag(source.category)
    url_list = source.kind is ListKind.URLS
    add_domain, add_url = builder.add_domain, builder.add_url
    pending = 0
    for number, line in enumerate(source.lines(), 1):
        pending += len(line)
        if number % _PROGRESS_EVERY_LINES == 0:
            advance(pending)
            pending = 0
        try:
            entries = parse_line(source.kind, line)
        except MalformedLine as e:
            report.malformed += 1
            if len(report.examples) < _MALFORMED_EXAMPLES:
                report.examples.append(f"line {number}: {e}")
            continue
        for host, prefix in entries:
            if source.skip and host + prefix in source.skip:
                continue
            if url_list or prefix:
                add_url(tag, host, prefix)
            else:
                add_domain(tag, host)
            report.entries += 1
    advance(pending)
    return report


class IndexShrank(ValueError):
    """The new index would hold far fewer entries than the one it replaces."""


# A nightly update whose lists lost more than this share of the entries (an upstream
# archive cut short, a mirror serving an error page as a list) is refused.
SHRINK_LIMIT = 0.5


def compile_index(
    sources: Iterable[ListSource],
    out_path: str | os.PathLike[str],
    show_progress: bool = True,
    allow_shrink: bool = False,
) -> CompileReport:
    """Compile `sources` into `out_path`, replacing it atomically: a gateway
    serving the old index keeps it until the new file is complete and verified.

    The index is written section by section, never whole in memory; the written
    file is read back and verified before it replaces the old one, and a good
    index is not replaced by one with less than SHRINK_LIMIT of its entries
    unless `allow_shrink` (raises IndexShrank)."""
    started = time.monotonic()
    out_path = Path(out_path)
    builder, reports = _read_sources(list(sources), show_progress)
    header, sections = builder.layout([s.name for s in reports])
    del builder
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            size = _write_image(f, header, sections)
            f.flush()
            os.fsync(f.fileno())
        del sections  # before the two indexes below are read whole
        CategoryIndex.open(tmp).close()  # what a gateway will read, byte for byte (a full disk shows here)
        if not allow_shrink:
            _refuse_shrinking(out_path, header["entry_count"])
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        os.unlink(tmp)
        raise
    report = _report(reports, header, size, started)
    report.output = out_path
    return report


def _refuse_shrinking(out_path: Path, new_entries: int) -> None:
    try:
        with CategoryIndex.open(out_path) as current:
            old_entries = current.entry_count
    except IndexInvalid:
        return  # nothing good to protect
    if new_entries < old_entries * SHRINK_LIMIT:
        raise IndexShrank(
            f"the new lists hold {new_entries:,} entries, the index in place {old_entries:,}: "
            f"refusing to replace it (a truncated download?); run `lists update --allow-shrink` if this is meant"
        )


def builtin_index(skip: frozenset[str] = frozenset()) -> CategoryIndex:
    """The small curated list shipped in categories/builtin/, compiled in memory once,
    less the entries ("host" or "host/path") in `skip`."""
    return _builtin_index(frozenset(skip))


@functools.cache
def _builtin_index(skip: frozenset[str]) -> CategoryIndex:
    sources = [ListSource(s.category, s.kind, s.path, s.name, skip=skip) for s in builtin_tree().sources]
    image, _ = build_image(sources, show_progress=False)
    return CategoryIndex(image)
