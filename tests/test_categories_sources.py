"""Reading lists: UT1 directories, tarballs and URLs; hosts files; a school's extra lists."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from schoolgate.categories.sources import (
    TEST_LISTS_VARIABLE,
    ListKind,
    ListSource,
    MalformedLine,
    MalformedSource,
    builtin_tree,
    open_ut1,
    parse_extra,
    parse_line,
    plain_source,
    progress,
)

FIXTURES = Path(__file__).parent / "fixtures"
UT1 = FIXTURES / "ut1"


def names(location: str) -> list[tuple[str, str]]:
    with open_ut1(location) as tree:
        return [(s.name, s.category) for s in tree.sources]


EXPECTED_SOURCES = [
    ("ut1:adult/domains", "pornography"),
    ("ut1:adult/urls", "pornography"),
    ("ut1:agressif/domains", "hate"),
    ("ut1:drogue/domains", "drugs"),
    ("ut1:drogue/urls", "drugs"),
    ("ut1:gambling/domains", "gambling"),
    ("ut1:malware/domains", "malware"),
    ("ut1:sect/urls", "cults"),
]


def test_ut1_directory_maps_categories_and_reports_what_it_leaves_out() -> None:
    assert names(str(UT1)) == EXPECTED_SOURCES
    with open_ut1(str(UT1)) as tree:
        assert tree.ignored == ["liste_blanche"]
        assert tree.unknown == ["not_a_ut1_category"]


def test_symlinked_alias_directories_are_not_read_twice(tmp_path: Path) -> None:
    (tmp_path / "drogue").mkdir()
    (tmp_path / "drogue" / "domains").write_text("drugs.test\n")
    (tmp_path / "drugs").symlink_to(tmp_path / "drogue")
    assert names(str(tmp_path)) == [("ut1:drogue/domains", "drugs")]


@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    """The fixture packed as upstream ships it: everything under blacklists/."""
    path = tmp_path / "blacklists.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(UT1, arcname="blacklists")
    return path


def test_tarball_reads_like_the_directory(tarball: Path) -> None:
    assert names(str(tarball)) == EXPECTED_SOURCES


def test_tarball_is_unpacked_only_for_the_with_block(tarball: Path) -> None:
    with open_ut1(str(tarball)) as tree:
        path = tree.sources[0].path
        assert path.read_text().startswith("porn.example")
    assert not path.exists()


@pytest.fixture
def served(tarball: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tarball.parent))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{tarball.name}"
    server.shutdown()
    server.server_close()


def test_url_is_downloaded_then_read_as_a_tarball(served: str) -> None:
    assert names(served) == EXPECTED_SOURCES


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), open_ut1(str(tmp_path / "nowhere.tar.gz")):
        pass


@pytest.mark.parametrize(
    ("line", "entries"),
    [
        ("0.0.0.0 ads.example.com tracker.example.com\n", [("ads.example.com", ""), ("tracker.example.com", "")]),
        ("127.0.0.1 localhost\n", []),
        (":: ip6-localhost\n", []),
        ("ads.example.com # from a vendor\n", [("ads.example.com", "")]),
        ("https://Example.com/Path?Q=1\n", [("example.com", "/path?q=1")]),
        ("*.example.org\n", [("example.org", "")]),
        (".xxx\n", [("xxx", "")]),
        ("\n", []),
        ("# only a comment\n", []),
    ],
)
def test_plain_lines(line: str, entries: list[tuple[str, str]]) -> None:
    assert parse_line(ListKind.PLAIN, line) == entries


@pytest.mark.parametrize(
    ("kind", "line", "reason"),
    [
        (ListKind.PLAIN, "0.0.0.0 bad..host\n", "not a valid host name"),
        (ListKind.PLAIN, "org\n", "bare top-level domain"),
        (ListKind.DOMAINS, "example.com/path\n", "a path in a domains list"),
        (ListKind.URLS, "exa mple.com/path\n", "bare top-level domain"),  # first token only: "exa"
    ],
)
def test_malformed_lines_say_why(kind: ListKind, line: str, reason: str) -> None:
    with pytest.raises(MalformedLine, match=reason):
        parse_line(kind, line)


def test_extra_spec(tmp_path: Path) -> None:
    source = parse_extra(f"{tmp_path}/school-blocks.txt:games")
    assert (source.category, source.kind, source.path) == ("games", ListKind.PLAIN, tmp_path / "school-blocks.txt")
    with pytest.raises(ValueError, match="FILE:CATEGORY"):
        parse_extra("no-category-given")
    with pytest.raises(KeyError, match="did you mean games"):
        parse_extra("list.txt:gamez")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_shown_on_a_terminal_only() -> None:
    terminal = Terminal()
    with progress(2_000_000, "compiling lists", terminal) as advance:
        advance(1_000_000)
    assert "compiling lists:  50% of 2.0 MB" in terminal.getvalue()
    log = io.StringIO()
    with progress(2_000_000, "compiling lists", log) as advance:
        advance(1_000_000)
    assert log.getvalue() == ""


@pytest.mark.parametrize(
    ("line", "entries"),
    [
        # UT1 URL entries carry fragments; the `#` is part of the entry, never a
        # comment that would leave the bare host (a whole-site block).
        ("equilibriumsystems.com/#platform-porting\n", [("equilibriumsystems.com", "/#platform-porting")]),
        ("planhomo.com/#\n", [("planhomo.com", "/#")]),
        ("7wyh.wugrcgr.es/NkP72vYO/#\n", [("7wyh.wugrcgr.es", "/nkp72vyo/#")]),
        ("#commented.example/path\n", []),
        ("example.com/path # a note\n", [("example.com", "/path")]),
    ],
)
def test_a_hash_inside_a_url_entry_is_part_of_it(line: str, entries: list[tuple[str, str]]) -> None:
    assert parse_line(ListKind.URLS, line) == entries


def test_a_fragment_entry_does_not_block_the_whole_site(tmp_path: Path) -> None:
    from schoolgate.categories.index import CategoryIndex, build_image

    urls = tmp_path / "urls"
    urls.write_text("equilibriumsystems.com/#platform-porting\n")
    source = ListSource(category="games", kind=ListKind.URLS, path=urls, name="ut1:games/urls")
    index = CategoryIndex(build_image([source], show_progress=False)[0])
    assert index.lookup("equilibriumsystems.com", "/") == []
    assert index.lookup("www.equilibriumsystems.com", "/products") == []


def test_a_gzipped_plain_list_is_read_through_gzip(tmp_path: Path) -> None:
    path = tmp_path / "games.txt.gz"
    path.write_bytes(gzip.compress(b"games.example\n# note\nmore.example\n"))
    assert list(plain_source(path, "games").lines()) == ["games.example\n", "# note\n", "more.example\n"]


@pytest.mark.parametrize("packing", ["tar.gz", "binary"])
def test_an_archive_or_binary_file_given_as_a_plain_list_is_refused(packing: str, tarball: Path, tmp_path: Path) -> None:
    path = tarball if packing == "tar.gz" else tmp_path / "image.png"
    if packing == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(100))
    with pytest.raises(MalformedSource, match="tar archive" if packing == "tar.gz" else "binary file"):
        list(plain_source(path, "games").lines())


def test_the_builtin_list_holds_no_test_domains_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_LISTS_VARIABLE)
    for source in builtin_tree().sources:
        for line in source.lines():
            for host, _ in parse_line(source.kind, line):
                assert not host.endswith(".test"), (source.name, host)
    monkeypatch.setenv(TEST_LISTS_VARIABLE, str(FIXTURES / "test-lists"))
    assert any(s.name == "test:pornography/domains" for s in builtin_tree().sources)
