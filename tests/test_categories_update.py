"""`lists update` over HTTP: the real UT1 archive layout served from loopback, downloads
cut short or replaced by an error page, and the per-category fallback. No traffic
leaves the machine."""

from __future__ import annotations

import functools
import http.server
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from schoolgate.categories.index import CategoryIndex, IndexShrank, compile_index
from schoolgate.categories.sources import SourceUnusable, plain_source
from schoolgate.categories.update import UpdatePlan, update

FIXTURES = Path(__file__).parent / "fixtures"


def make_archive(ut1: Path, dest: Path, only: str | None = None) -> Path:
    """A tar.gz laid out as UT1 publishes it: blacklists/<category>/{domains,urls},
    or one category at the top, as its per-category archives are."""
    with tarfile.open(dest, "w:gz") as archive:
        for directory in sorted(p for p in ut1.iterdir() if p.is_dir() and not p.is_symlink()):
            if only and directory.name != only:
                continue
            for name in ("domains", "urls"):
                if (directory / name).is_file():
                    prefix = directory.name if only else f"blacklists/{directory.name}"
                    archive.add(directory / name, arcname=f"{prefix}/{name}")
    return dest


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/cut/"):  # announces the whole file, sends half, hangs up
            data = (Path(self.directory) / self.path.removeprefix("/cut/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        if self.path.startswith("/portal/"):  # a captive portal or a proxy's error page
            body = b"<html><body>Please sign in to the guest Wi-Fi</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def plan(tmp_path: Path, *locations: str, **settings: object) -> UpdatePlan:
    return UpdatePlan(locations=locations, extras=[], output=tmp_path / "lists.idx", **settings)  # type: ignore[arg-type]


@pytest.mark.data
def test_the_real_ut1_archive_is_fetched_and_compiled(shared_data: Path, served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    make_archive(shared_data / "ut1", root / "blacklists.tar.gz")
    report = update(plan(tmp_path, f"{base}/blacklists.tar.gz"))
    assert report.entry_count > 500_000
    with CategoryIndex.open(tmp_path / "lists.idx") as index:
        sizes = index.sizes()
        assert sizes["pornography"] > 5_000 and sizes["gambling"] > 1_000 and sizes["vpn-proxy"] > 1_000
        assert {h.category for h in index.lookup("equilibriumsystems.com", "/")} == set()  # its `/#...` URL entry only


def test_a_download_cut_short_is_refused_and_the_good_index_stays(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    make_archive(FIXTURES / "ut1", root / "blacklists.tar.gz")
    update(plan(tmp_path, f"{base}/blacklists.tar.gz"))
    good = (tmp_path / "lists.idx").read_bytes()
    with pytest.raises(SourceUnusable, match="stopped at"):
        update(plan(tmp_path, f"{base}/cut/blacklists.tar.gz", category_url=None))
    assert (tmp_path / "lists.idx").read_bytes() == good


def test_an_archive_cut_short_at_the_source_is_refused(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    whole = make_archive(FIXTURES / "ut1", tmp_path / "whole.tar.gz").read_bytes()
    (root / "blacklists.tar.gz").write_bytes(whole[: len(whole) * 2 // 3])  # the server says the right length
    with pytest.raises(SourceUnusable, match="not a complete tar archive"):
        update(plan(tmp_path, f"{base}/blacklists.tar.gz", category_url=None))
    assert not (tmp_path / "lists.idx").exists()


def test_an_error_page_instead_of_the_archive_is_refused(served: tuple[Path, str], tmp_path: Path) -> None:
    _, base = served
    with pytest.raises(SourceUnusable, match="did not send a .tar.gz"):
        update(plan(tmp_path, f"{base}/portal/blacklists.tar.gz", category_url=None))


def test_an_unusable_archive_falls_back_to_the_per_category_files(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    for category in ("adult", "gambling", "drogue"):
        make_archive(FIXTURES / "ut1", root / f"{category}.tar.gz", only=category)
    settings = {"category_url": f"{base}/{{name}}.tar.gz"}
    current = plan(tmp_path, f"{base}/cut/missing.tar.gz", **settings)
    report = update(current)
    assert report.categories["pornography"] > 0 and report.categories["gambling"] > 0 and report.categories["drugs"] > 0
    assert any("fetched category by category" in note for note in current.notes)
    assert any("not fetched" in note and "malware" in note for note in current.notes)


def test_a_much_smaller_download_does_not_replace_a_big_index(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    big = tmp_path / "big.txt"
    big.write_text("".join(f"site{i}.example\n" for i in range(2000)))
    compile_index([plain_source(big, "games")], tmp_path / "lists.idx", show_progress=False)
    make_archive(FIXTURES / "ut1", root / "blacklists.tar.gz")
    with pytest.raises(IndexShrank):
        update(plan(tmp_path, f"{base}/blacklists.tar.gz", builtin=False))
    with CategoryIndex.open(tmp_path / "lists.idx") as index:
        assert index.entry_count == 2000


def test_builtin_entries_can_be_left_out_or_the_list_turned_off(tmp_path: Path) -> None:
    report = update(plan(tmp_path, builtin_skip=frozenset({"pornhub.com"}), allow_shrink=True))
    with CategoryIndex.open(tmp_path / "lists.idx") as index:
        assert index.lookup("www.pornhub.com", "/") == []
        assert index.lookup("www.xvideos.com", "/") != []
    assert report.entry_count > 50
    extra = tmp_path / "ours.txt"
    extra.write_text("ours.example\n")
    report = update(UpdatePlan(locations=[], extras=[plain_source(extra, "games")], output=tmp_path / "lists.idx",
                               builtin=False, allow_shrink=True))
    assert report.entry_count == 1


def test_the_policy_turns_the_builtin_list_off_or_skips_entries(tmp_path: Path) -> None:
    from schoolgate.cli import main

    extra = tmp_path / "ours.txt"
    extra.write_text("ours.example\n")
    policy = tmp_path / "policy.toml"
    base = (f'[lists]\nindex = "{tmp_path}/lists.idx"\nBUILTIN\n[lists.extra]\ngames = ["{extra}"]\n'
            '[groups.p]\nnetworks = ["10.0.0.0/8"]\n')
    policy.write_text(base.replace("BUILTIN", 'builtin_skip = ["https://PornHub.com/"]'))
    assert main(["lists", "update", "--policy", str(policy), "--allow-shrink"]) == 0
    with CategoryIndex.open(tmp_path / "lists.idx") as index:
        assert index.lookup("pornhub.com", "/") == [] and index.lookup("xvideos.com", "/") != []
    policy.write_text(base.replace("BUILTIN", "builtin = false"))
    assert main(["lists", "update", "--policy", str(policy), "--allow-shrink"]) == 0
    with CategoryIndex.open(tmp_path / "lists.idx") as index:
        assert index.entry_count == 1 and index.lookup("xvideos.com", "/") == []


def test_list_settings_are_checked(tmp_path: Path) -> None:
    from schoolgate.policy import PolicyInvalid, load_policy

    policy = tmp_path / "policy.toml"
    policy.write_text('[lists]\nmax_age_days = -1\ncategory_url = "https://mirror.example/ut1.tar.gz"\nbuiltin_skip = ["bad..host"]\n'
                      '[groups.p]\nnetworks = ["10.0.0.0/8"]\n')
    with pytest.raises(PolicyInvalid) as refused:
        load_policy(policy)
    text = str(refused.value)
    assert "max_age_days -1 is negative" in text and "has no {name}" in text and "bad..host" in text


@pytest.mark.data
def test_the_default_policy_compiles_the_local_ut1_copy_and_says_what_is_still_empty(
        shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from schoolgate.categories import status
    from schoolgate.cli import main
    from schoolgate.engine import Engine
    from schoolgate.urls import parse_target

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "policy.toml").read_text()
    text = re.sub(r'(?m)^index = .*$', f'index = "{tmp_path / "categories.idx"}"', text, count=1)
    text = re.sub(r'(?m)^sources = .*$', f'sources = ["{shared_data / "ut1"}"]', text, count=1)  # an offline install
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    assert main(["lists", "update", "--policy", str(policy)]) == 0
    engine = Engine.load(policy, illegal_dir=tmp_path / "none")
    assert engine.index_status.ok and engine.index.entry_count > 500_000
    pupils = engine.policy.groups["pupils-secondary"]
    for url in ("https://www.pornhub.com/", "https://bet365.com/", "https://nordvpn.com/"):
        assert engine.decide(parse_target(url), pupils).action.value == "block", url
    problems = status.problems(engine)
    empty = {m.group(1) for line in problems if (m := re.search(r"blocked category '([^']+)' has no entries", line))}
    assert empty == {"self-harm", "violence", "extremism", "illegal"}  # no UT1 list for them: said, not hidden
    capsys.readouterr()
