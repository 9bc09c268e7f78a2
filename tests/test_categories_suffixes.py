"""Public suffixes: no allow, block or exception entry may cover every site under
`co.uk`, `sch.uk` or `github.io`; reports group hosts by registrable domain.
tldextract's bundled list only: no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from schoolgate.categories.suffixes import public_suffix_problem, registrable_domain
from schoolgate.grants import GrantRefused, parse_target


@pytest.mark.parametrize("host", ["co.uk", "sch.uk", "github.io", "uk", "com", "gov.uk", "blogspot.com", "kent.sch.uk"])
def test_public_suffixes_are_too_wide(host: str) -> None:
    assert public_suffix_problem(host)


@pytest.mark.parametrize("host", ["bbc.co.uk", "amy.github.io", "school.kent.sch.uk", "www.gov.uk", "10.1.2.3",
                                  "2001:db8::1", "localhost", "example.com"])
def test_sites_are_not(host: str) -> None:
    assert public_suffix_problem(host) is None


@pytest.mark.parametrize(
    ("host", "domain"),
    [("news.bbc.co.uk", "bbc.co.uk"), ("amy.github.io", "amy.github.io"), ("a.b.example.com", "example.com"),
     ("www.school.kent.sch.uk", "school.kent.sch.uk"), ("10.1.2.3", "10.1.2.3"), ("co.uk", "co.uk")],
)
def test_registrable_domain(host: str, domain: str) -> None:
    assert registrable_domain(host) == domain


@pytest.mark.parametrize("entry", ["co.uk", "*.sch.uk", "https://github.io/"])
def test_an_exception_on_a_public_suffix_is_refused(entry: str) -> None:
    with pytest.raises(GrantRefused, match="public suffix"):
        parse_target(entry)
    assert parse_target("bbc.co.uk")[1] == "bbc.co.uk"
    assert parse_target("co.uk/some/page")[0] == "url"  # one address on that host: not a whole-suffix entry


def test_a_managed_list_entry_on_a_public_suffix_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from schoolgate.cli import main

    policy = tmp_path / "policy.toml"
    policy.write_text(f'[gateway]\ndatabase = "sqlite+aiosqlite:///{tmp_path}/sg.db"\ndefault_group = "p"\n'
                      '[groups.p]\ntitle = "P"\nnetworks = ["10.0.0.0/8"]\n')
    base = ["--policy", str(policy), "--by", "it.admin", "--role", "it_admin"]
    assert main(["allow", "add", "co.uk", "--reason", "x", *base]) != 0
    assert "co.uk is a public suffix" in capsys.readouterr().err
    assert main(["allow", "add", "bbc.co.uk", "--reason", "x", *base]) == 0


def test_reports_count_blocked_sites_by_registrable_domain() -> None:
    from schoolgate.reports.report import _by_site

    per_host = [("www.pornhub.com", 3), ("pornhub.com", 1), ("cdn.pornhub.com", 2), ("bbc.co.uk", 1),
                ("news.bbc.co.uk", 1), ("itv.co.uk", 5), ("amy.github.io", 1), ("bob.github.io", 1)]
    assert _by_site(per_host) == [("pornhub.com", 6), ("itv.co.uk", 5), ("bbc.co.uk", 2), ("amy.github.io", 1),
                                  ("bob.github.io", 1)]


def test_a_policy_list_entry_on_a_public_suffix_is_a_policy_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from schoolgate.cli import main

    policy = tmp_path / "policy.toml"
    policy.write_text('[gateway]\ndefault_group = "p"\n[local]\nallow = ["bbc.co.uk", "co.uk"]\nblock = ["github.io"]\n'
                      '[groups.p]\ntitle = "P"\nnetworks = ["10.0.0.0/8"]\n')
    assert main(["check", str(policy)]) == 1
    out = capsys.readouterr().out
    assert "policy.toml:4: allow list entry 'co.uk': co.uk is a public suffix" in out
    assert "policy.toml:5: block list entry 'github.io': github.io is a public suffix" in out
    assert "bbc.co.uk'" not in out
