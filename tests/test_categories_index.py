"""The compiled category index: matching semantics, compile reports, atomic replacement."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from schoolgate.categories.index import (
    CategoryHit,
    CategoryIndex,
    IndexInvalid,
    IndexShrank,
    build_image,
    builtin_index,
    compile_index,
)
from schoolgate.categories.sources import ListKind, ListSource, MalformedLine, open_ut1, parse_line, plain_source
from schoolgate.urls import parent_domains, parse_target

FIXTURES = Path(__file__).parent / "fixtures"
UT1 = FIXTURES / "ut1"


def fixture_sources() -> list[ListSource]:
    with open_ut1(str(UT1)) as tree:
        return tree.sources + [plain_source(FIXTURES / "hosts.txt", "advertising")]


@pytest.fixture(scope="module")
def index() -> CategoryIndex:
    image, _ = build_image(fixture_sources(), show_progress=False)
    return CategoryIndex(image)


def classify(index: CategoryIndex, url: str) -> dict[str, str]:
    target = parse_target(url)
    return {hit.category: hit.entry for hit in index.lookup(target.host, target.match_path)}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://porn.example/", {"pornography": "porn.example"}),
        ("https://WWW.Porn.Example./a", {"pornography": "porn.example"}),
        ("http://a.b.sub.adult-site.test/", {"pornography": "sub.adult-site.test"}),
        ("http://adult-site.test/", {}),  # a parent of an entry is not listed
        ("http://notporn.example/", {}),  # suffix match only at a label boundary
        ("http://porn.example.evil.org/", {}),
        ("http://deep.test/", {}),
        ("http://z.deep.test/", {}),
        ("http://w.x.y.z.deep.test/", {"pornography": "x.y.z.deep.test"}),
        ("http://any.wildcard.test/", {"pornography": "wildcard.test"}),
        ("http://shared.test/", {"pornography": "shared.test", "gambling": "shared.test"}),
        ("http://192.0.2.1/x", {"malware": "192.0.2.1"}),
        ("http://ads2.tracker.test/", {"advertising": "ads2.tracker.test"}),
        ("http://tracker.test/", {}),
        ("http://anything.tk/", {"advertising": "tk"}),  # `.tk` written explicitly in the list
        ("http://anything.net/", {}),  # a bare `net` line is refused
        ("http://localhost/", {}),
        ("http://white.test/", {}),  # liste_blanche is not imported
        ("http://unknown.test/", {}),  # nor an unknown UT1 directory
    ],
)
def test_domain_entries_match_the_host_and_its_subdomains(index: CategoryIndex, url: str, expected: dict[str, str]) -> None:
    assert classify(index, url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://mixed-site.test/adult", {"pornography": "mixed-site.test/adult"}),
        ("http://mixed-site.test/adult/page?x=1", {"pornography": "mixed-site.test/adult"}),
        ("http://mixed-site.test/Adult", {"pornography": "mixed-site.test/adult"}),  # paths compare lower-cased
        ("http://mixed-site.test/adultery", {"pornography": "mixed-site.test/adult"}),  # squidGuard: plain prefix
        ("http://mixed-site.test/", {}),
        ("http://mixed-site.test/other/adult", {}),
        ("http://www.mixed-site.test/adult", {"pornography": "mixed-site.test/adult"}),
        ("http://www2.mixed-site.test/adult", {"pornography": "mixed-site.test/adult"}),
        ("http://ftp.mixed-site.test/adult", {"pornography": "mixed-site.test/adult"}),
        ("http://sub.mixed-site.test/adult", {}),  # URL entries name one host, as in squidGuard
        ("http://video.test/explicit", {"pornography": "video.test/explicit"}),  # www. stripped from the entry too
        ("http://ports.test/secret", {"pornography": "ports.test/secret"}),
        ("http://forum.test/drugs/hard/x", {"drugs": "forum.test/drugs/hard"}),  # the longest prefix is reported
        ("http://forum.test/drugs/soft", {"drugs": "forum.test/drugs"}),
        ("http://cult.test/join?ref=1", {"cults": "cult.test/join"}),
        ("http://banner.test/ads/1.gif", {"advertising": "banner.test/ads/"}),
        ("http://banner.test/ads", {}),
    ],
)
def test_url_entries_match_as_squidguard_does(index: CategoryIndex, url: str, expected: dict[str, str]) -> None:
    assert classify(index, url) == expected


def test_hits_are_category_hits(index: CategoryIndex) -> None:
    assert index.lookup("porn.example", "/") == [CategoryHit("pornography", "porn.example")]


def test_lookup_agrees_with_a_naive_reading_of_the_lists(tmp_path: Path) -> None:
    """Random hosts under listed and unlisted domains against a dict-of-sets reference."""
    rng = random.Random(7)
    domains: dict[str, set[str]] = {}
    lines: dict[str, list[str]] = {}
    for _ in range(3000):
        labels = [f"l{rng.randrange(40)}" for _ in range(rng.randint(1, 4))]
        host = ".".join(labels + [rng.choice(["test", "example"])])
        category = rng.choice(["pornography", "gambling", "games", "malware"])
        domains.setdefault(host, set()).add(category)
        lines.setdefault(category, []).append(host)
    sources = []
    for category, hosts in lines.items():
        path = tmp_path / category
        path.write_text("\n".join(hosts) + "\n")
        sources.append(ListSource(category=category, kind=ListKind.DOMAINS, path=path, name=category))
    index = CategoryIndex(build_image(sources, show_progress=False)[0])
    for _ in range(5000):
        labels = [f"l{rng.randrange(40)}" for _ in range(rng.randint(1, 6))]
        host = ".".join(labels + [rng.choice(["test", "example", "org"])])
        expected = set().union(*(domains.get(parent, set()) for parent in parent_domains(host)))
        assert {hit.category for hit in index.lookup(host, "/")} == expected, host


def test_compile_report_counts_entries_and_malformed_lines(tmp_path: Path) -> None:
    report = compile_index(fixture_sources(), tmp_path / "lists.idx", show_progress=False)
    by_name = {source.name: source for source in report.sources}
    adult = by_name["ut1:adult/domains"]
    assert (adult.entries, adult.malformed) == (5, 4)
    assert any("a path in a domains list" in example for example in adult.examples)
    assert any("bare top-level domain" in example and "line 7" in example for example in adult.examples)
    hosts = by_name[str(FIXTURES / "hosts.txt")]
    assert (hosts.entries, hosts.malformed) == (6, 2)
    assert report.malformed == 6
    assert report.categories["pornography"] == 8  # 5 domains + 3 URL entries
    assert report.categories["gambling"] == 3
    assert "6 malformed lines skipped" in report.summary()
    with CategoryIndex.open(tmp_path / "lists.idx") as index:
        assert index.sizes() == report.categories
        assert index.entry_count == report.entry_count
        assert index.path == tmp_path / "lists.idx"
    with pytest.raises(ValueError):  # closed: the mapping is gone
        index.lookup("porn.example", "/")


def test_recompiling_replaces_the_file_atomically_while_the_old_index_serves(tmp_path: Path) -> None:
    path = tmp_path / "lists.idx"
    first = tmp_path / "first"
    first.write_text("first.test\n")
    second = tmp_path / "second"
    second.write_text("second.test\n")
    compile_index([plain_source(first, "games")], path, show_progress=False)
    serving = CategoryIndex.open(path)
    compile_index([plain_source(second, "games")], path, show_progress=False)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert serving.lookup("first.test", "/") == [CategoryHit("games", "first.test")]
    assert serving.lookup("second.test", "/") == []
    reopened = CategoryIndex.open(path)
    assert reopened.lookup("second.test", "/") == [CategoryHit("games", "second.test")]
    assert reopened.lookup("first.test", "/") == []
    serving.close()
    reopened.close()


def test_open_refuses_a_file_that_is_not_an_index(tmp_path: Path) -> None:
    path = tmp_path / "not.idx"
    for content in (b"\0" * 64, b"SGC"):
        path.write_bytes(content)
        with pytest.raises(ValueError, match="not a schoolgate category index"):
            CategoryIndex.open(path)


def test_open_refuses_a_truncated_index(tmp_path: Path) -> None:
    path = tmp_path / "lists.idx"
    compile_index(fixture_sources(), path, show_progress=False)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        CategoryIndex.open(path)


def test_an_empty_index_answers_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    index = CategoryIndex(build_image([plain_source(empty, "games")], show_progress=False)[0])
    assert index.entry_count == 0
    assert index.lookup("example.com", "/") == []


@pytest.mark.parametrize(
    ("url", "category"),
    [
        ("https://adult.test/", "pornography"),
        ("https://www.casino.test/", "gambling"),
        ("https://games.test/play", "games"),
        ("https://m.social.test/", "social-media"),
        ("https://bank.test/login", "banking"),
        ("https://mixed.test/adult-section/x", "pornography"),
        ("https://dns.google/dns-query", "doh"),
        ("https://mozilla.cloudflare-dns.com/dns-query", "doh"),
    ],
)
def test_builtin_list_has_the_documented_test_domains(url: str, category: str) -> None:
    assert category in classify(builtin_index(), url)


def test_builtin_list_leaves_the_rest_alone() -> None:
    assert classify(builtin_index(), "https://mixed.test/maths") == {}
    assert classify(builtin_index(), "https://www.gov.uk/") == {}


def test_parse_line_reads_first_token_of_ut1_lines() -> None:
    assert parse_line(ListKind.DOMAINS, "Example.COM  http://redirect.example/\n") == [("example.com", "")]
    assert parse_line(ListKind.DOMAINS, "   \n") == []
    assert parse_line(ListKind.URLS, "# comment\n") == []


def _compiled(tmp_path: Path) -> Path:
    path = tmp_path / "lists.idx"
    compile_index(fixture_sources(), path, show_progress=False)
    return path


@pytest.mark.parametrize("where", ["header", "keys", "url_blob", "last byte"])
def test_a_corrupt_byte_anywhere_is_refused(tmp_path: Path, where: str) -> None:
    path = _compiled(tmp_path)
    data = bytearray(path.read_bytes())
    with CategoryIndex.open(path) as index:
        sections = index.header["sections"]
    offset = {"header": 30, "last byte": len(data) - 1}.get(where) or sections[where][0]
    data[offset] ^= 0x20  # same size, one bit: what a bad disk or a stray edit leaves
    path.write_bytes(bytes(data))
    with pytest.raises(IndexInvalid, match="corrupt|not a schoolgate") as refused:
        CategoryIndex.open(path)
    assert refused.value.problem in ("corrupt", "not-an-index")


@pytest.mark.parametrize("keep", [0, 20, 200, -1])
def test_a_half_written_index_is_refused_as_such(tmp_path: Path, keep: int) -> None:
    path = _compiled(tmp_path)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(IndexInvalid) as refused:
        CategoryIndex.open(path)
    assert refused.value.problem in ({"truncated", "corrupt"} if keep > 24 or keep < 0 else {"not-an-index", "corrupt"})


def test_an_old_format_index_asks_for_a_recompile(tmp_path: Path) -> None:
    path = tmp_path / "old.idx"
    path.write_bytes(b"SGCATIX\x01" + bytes(64))
    with pytest.raises(IndexInvalid, match="lists update") as refused:
        CategoryIndex.open(path)
    assert refused.value.problem == "old-format"


def test_a_missing_index_says_so(tmp_path: Path) -> None:
    with pytest.raises(IndexInvalid) as refused:
        CategoryIndex.open(tmp_path / "nowhere.idx")
    assert refused.value.problem == "missing"


_TRUNCATE_UNDER_A_READER = """
import os, sys
from schoolgate.categories.index import CategoryIndex
index = CategoryIndex.open(sys.argv[1])
before = index.lookup("porn.example", "/")
os.truncate(sys.argv[1], 0)                        # an admin's `> lists.idx`, or a copy over it
with open(sys.argv[1], "r+b") as f:
    f.write(b"garbage" * 1000)
assert index.lookup("porn.example", "/") == before and before, (before,)
assert index.lookup("www.porn.example", "/x") == before
print("still serving")
"""


def test_changing_the_file_under_an_open_index_cannot_crash_the_reader(tmp_path: Path) -> None:
    # In a child process: a shared mapping of the file dies of SIGBUS here, and would take pytest with it.
    path = _compiled(tmp_path)
    child = subprocess.run(
        [sys.executable, "-c", _TRUNCATE_UNDER_A_READER, str(path)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert "still serving" in child.stdout


def test_a_much_smaller_index_does_not_replace_a_good_one(tmp_path: Path) -> None:
    path = _compiled(tmp_path)
    good = path.read_bytes()
    tiny = tmp_path / "tiny"
    tiny.write_text("only.example\n")
    with pytest.raises(IndexShrank, match="truncated download"):
        compile_index([plain_source(tiny, "games")], path, show_progress=False)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    compile_index([plain_source(tiny, "games")], path, show_progress=False, allow_shrink=True)
    with CategoryIndex.open(path) as index:
        assert index.entry_count == 1


def _sections(index: CategoryIndex) -> dict[str, bytes]:
    return {name: bytes(index._sections[name].cast("B")) for name in index._sections}


def test_entries_repeated_across_lists_and_parts_compile_to_one_index(tmp_path: Path) -> None:
    """The compiler keeps entries as records split by tag and hash, and drops duplicates
    when it sorts them: lists full of repeats, in any order, give exactly the index of
    the distinct entries (sections byte for byte), and each entry is counted once."""
    rng = random.Random(15)
    hosts = [".".join([f"l{rng.randrange(30)}" for _ in range(rng.randint(1, 3))] + ["test"]) for _ in range(4000)]
    categories = ["pornography", "gambling", "malware"]
    entries = [(rng.choice(categories), rng.choice(hosts)) for _ in range(12000)]  # repeats within and across lists
    urls = [(rng.choice(categories), f"{rng.choice(hosts)}/p{rng.randrange(5)}") for _ in range(600)]

    def write(name: str, lines: list[str]) -> Path:
        path = tmp_path / name
        path.write_text("".join(f"{line}\n" for line in lines))
        return path

    repeated = []
    for n in range(12):  # each category in several lists, shuffled
        chunk = entries[n * 1000 : (n + 1) * 1000] + entries[rng.randrange(11000) :][:300]
        repeated += [ListSource(category, ListKind.DOMAINS, write(f"d{n}-{category}", [h for c, h in chunk if c == category]),
                                f"d{n}-{category}") for category in categories]
    for n, category in enumerate(categories):
        repeated.append(ListSource(category, ListKind.URLS, write(f"u{n}", [u for c, u in urls if c == category] * 2), f"u{n}"))
    rng.shuffle(repeated)
    distinct = [ListSource(c, ListKind.DOMAINS, write(f"distinct-{c}", sorted({h for cc, h in entries if cc == c})), c)
                for c in categories]
    distinct += [ListSource(c, ListKind.URLS, write(f"distinct-u-{c}", sorted({u for cc, u in urls if cc == c})), c)
                 for c in categories]
    # The categories in the same order as the other compile (the order numbers them).
    distinct.sort(key=lambda s: [r.category for r in repeated].index(s.category))

    with (CategoryIndex(build_image(repeated, show_progress=False)[0]) as first,
          CategoryIndex(build_image(distinct, show_progress=False)[0]) as second):
        assert _sections(first) == _sections(second)
        ignored = {"created", "sources", "sections", "size"}  # the list names differ, and so where sections start
        assert {k: v for k, v in first.header.items() if k not in ignored} == \
               {k: v for k, v in second.header.items() if k not in ignored}
        expected_counts = {c: len({h for cc, h in entries if cc == c}) + len({u for cc, u in urls if cc == c})
                           for c in categories}
        assert first.sizes() == expected_counts
        assert first.entry_count == len({h for _, h in entries}) + len({u for _, u in urls})
        for host in hosts[:500]:
            listed = {c for c, h in entries if any(p == h for p in parent_domains(host))}
            assert {hit.category for hit in first.lookup(host, "/x")} == listed, host


# VmHWM, not getrusage's ru_maxrss: a child spawned by a large process (pytest) inherits
# its parent's peak in ru_maxrss, not in VmHWM.
_COMPILE_MEMORY = """
import sys
from pathlib import Path
from schoolgate.categories.index import compile_index
from schoolgate.categories.sources import plain_source

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

before = kib("VmRSS")
report = compile_index([plain_source(Path(sys.argv[1]), "pornography")], sys.argv[2], show_progress=False)
print(report.entry_count, (kib("VmHWM") - before) * 1024)
"""


def test_compiling_costs_bytes_per_entry_not_python_objects(tmp_path: Path) -> None:
    """Peak memory of a compile, in a fresh process: the compiler that kept dicts and
    sets of Python ints grew by about 290 bytes an entry (843 MB for 2.84 M entries);
    flat arrays of records need well under 100."""
    domains = tmp_path / "domains.txt"
    with domains.open("w") as f:
        for n in range(300_000):
            f.write(f"site{n}.host{n % 5000}.example\n")
    child = subprocess.run([sys.executable, "-c", _COMPILE_MEMORY, str(domains), str(tmp_path / "lists.idx")],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    entries, grown = map(int, child.stdout.split())
    assert entries == 300_000
    assert grown / entries < 100, f"{grown / entries:.0f} bytes an entry"


@pytest.mark.parametrize(
    "line",
    ["porn.example", "Porn.Example", "porn.example.", " porn.example \n", "1.2.3.4", "10.0.0.1.example", "a.0x7f",
     "a.b.0x1F", "0x7f.1", "-lead.example", "a.-b.example", "a..example", "a_b.example", "a.b_c", "a.1com", "com",
     "xn--bcher-kva.de", "bücher.de", "*.wild.example", ".dot.example", "porn.example/path", "porn.example:8080",
     "user@porn.example", "a%2eexample.com", "x" * 250 + ".com", "x" * 249 + ".com", "a*b.example"],
)
@pytest.mark.parametrize("kind", list(ListKind))
def test_lines_taken_as_they_are_read_as_the_general_path_reads_them(kind: ListKind, line: str) -> None:
    """parse_line takes a canonical host line as it is; a trailing comment forces the
    general path (tokens, normalise_entry), which must give the same entries or refusal."""

    def parsed(text: str) -> list[tuple[str, str]] | str:
        try:
            return parse_line(kind, text)
        except MalformedLine as e:
            return f"malformed: {e}"

    assert parsed(line) == parsed(line.strip() + " # general path")
