"""`schoolgate lists update|show` and `schoolgate classify`, through their registered parsers."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pytest

from schoolgate.categories import cli
from schoolgate.categories.index import CategoryIndex, builtin_index
from schoolgate.policy import GatewaySettings, ListsSettings

FIXTURES = Path(__file__).parent / "fixtures"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="schoolgate")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def update(directory: Path) -> Path:
    path = directory / "var" / "lists.idx"
    code = run(["lists", "update", "--source", str(FIXTURES / "ut1"),
                "--extra", f"{FIXTURES / 'hosts.txt'}:advertising", "--output", str(path)])
    assert code == 0
    return path


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no ./policy.toml to pick up
    return update(tmp_path)


def test_update_reports_counts_and_malformed_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    index = update(tmp_path)
    out, err = capsys.readouterr()
    assert "not imported by design: liste_blanche" in out
    assert "unknown categories not imported: not_a_ut1_category" in err
    assert "6 malformed lines skipped" in out
    assert "ut1:adult/domains: 4 malformed, e.g. line 6: not a valid host name" in out
    assert index.is_file()


def test_update_needs_an_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["lists", "update", "--source", str(FIXTURES / "ut1")]) == 2
    assert "no --output" in capsys.readouterr().err


def test_update_refuses_an_unknown_extra_category(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code = run(["lists", "update", "--extra", f"{FIXTURES / 'hosts.txt'}:adverts", "--output", "x.idx"])
    assert code == 2
    assert "unknown category 'adverts'" in capsys.readouterr().err


def test_update_reports_a_missing_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code = run(["lists", "update", "--extra", "missing.txt:games", "--output", "x.idx"])
    assert code == 1
    assert "missing.txt" in capsys.readouterr().err
    assert not (tmp_path / "x.idx").exists()


def test_update_reads_the_policy_lists_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Policy:
        gateway = GatewaySettings()
        lists = ListsSettings(index=tmp_path / "from-policy.idx", sources=(str(FIXTURES / "ut1"),),
                              extra=((FIXTURES / "hosts.txt", "advertising"),))

    (tmp_path / "policy.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("schoolgate.policy.load_policy", lambda path: Policy)
    assert run(["lists", "update"]) == 0
    assert run(["lists", "show"]) == 0
    with CategoryIndex.open(Policy.lists.index) as index:
        assert index.entry_count == 23 + builtin_index().entry_count  # the built-in list is always compiled in


def test_show_lists_counts_per_category(index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(["lists", "show", "--index", str(index)]) == 0
    out = capsys.readouterr().out
    assert f"entries:  {23 + builtin_index().entry_count}" in out
    assert "8  pornography          Pornography" in out


URLS = "https://WWW.porn.example/x\nhttp://shared.test/\n\nhttps://[broken/\nhttps://clean.test/\n"


def test_classify_text(index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(URLS)
    capsys.readouterr()
    assert run(["classify", str(urls), "--index", str(index)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "https://WWW.porn.example/x\tpornography (porn.example)",
        "http://shared.test/\tpornography (shared.test), gambling (shared.test)",
    ]
    assert lines[2].startswith("https://[broken/\tinvalid: ")
    assert lines[3:] == ["https://clean.test/\t-"]


def test_classify_tsv_from_stdin(index: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(URLS))
    capsys.readouterr()
    assert run(["classify", "--index", str(index), "--format", "tsv"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert rows[1] == ["http://shared.test/", "pornography,gambling", "shared.test,shared.test", ""]
    assert rows[3] == ["https://clean.test/", "", "", ""]


def test_classify_json(index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(URLS)
    capsys.readouterr()
    assert run(["classify", str(urls), "--index", str(index), "--format", "json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0] == {"url": "https://WWW.porn.example/x", "categories": ["pornography"], "entries": ["porn.example"]}
    assert "error" in records[2]


def test_classify_without_an_index_uses_the_builtin_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("https://casino.test/\n"))
    assert run(["classify", "--format", "tsv"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "https://casino.test/\tgambling\tcasino.test\t\n"
    assert "built-in list" in captured.err


def test_classify_on_the_builtin_list_leaves_out_what_the_policy_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # As the gateway serves it: an entry the school took out of the built-in list is not classified.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policy.toml").write_text('[lists]\nbuiltin_skip = ["discord.com"]\n\n[groups.pupils]\nnetworks = ["10.0.0.0/8"]\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("https://discord.com/\nhttps://discord.gg/\n"))
    assert run(["classify", "--format", "tsv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[1] == "" and lines[1].split("\t")[1] == "chat", lines
