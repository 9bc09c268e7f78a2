"""The locked illegal-content tier: its list formats (fixtures written here in the
IWF/CTIRU shapes: the real lists are licensed to members), its place before every
other rule, and a missing or stale list said out loud."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schoolgate.categories import illegal
from schoolgate.categories.index import builtin_index
from schoolgate.decide import Decider, Rule
from schoolgate.grants import Grant, ScopeKind
from schoolgate.policy import Action, load_policy
from schoolgate.urls import parse_target

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)

POLICY = """\
[gateway]
default_group = "pupils"

[local]
allow = ["abuse.example", "terror.example/videos"]

[categories]
illegal = "allow"
pornography = "block"

[groups.pupils]
title = "Pupils"
networks = ["10.20.0.0/16"]
"""


def write_tier(root: Path) -> Path:
    (root / "iwf").mkdir(parents=True)
    (root / "ctiru").mkdir()
    (root / "iwf" / "urls.txt").write_text(
        "# IWF URL list, fixture\n"
        "abuse.example/gallery/\n"
        "http://www.Images.Example/x/y.jpg\n"
        "whole-site.example\n"
        "query.example/view.php?id=5\n"
        "not a url at all\n"
    )
    lines = [hashlib.sha256(b"terror.example/videos/17").hexdigest(), hashlib.sha256(b"hashed-site.example").hexdigest()]
    (root / "ctiru" / "list.sha256").write_text("\n".join(lines) + "\n")
    (root / "ctiru" / "older.md5").write_text(hashlib.md5(b"md5.example/p").hexdigest() + "\n")
    return root


@pytest.fixture
def tier(tmp_path: Path) -> illegal.IllegalTier:
    return illegal.load(write_tier(tmp_path / "illegal-content"))


def hit(tier: illegal.IllegalTier, url: str) -> str | None:
    target = parse_target(url)
    found = tier.lookup(target.host, target.match_path)
    return found.provider if found else None


@pytest.mark.parametrize(
    ("url", "provider"),
    [
        ("http://abuse.example/gallery/1.jpg", "iwf"),
        ("https://www.abuse.example/gallery/", "iwf"),
        ("http://abuse.example/Gallery/2.jpg", "iwf"),  # paths are compared in canonical (lower) case
        ("http://abuse.example/about", None),
        ("http://images.example/x/y.jpg", "iwf"),
        ("http://images.example/x/z.jpg", None),
        ("http://whole-site.example/", "iwf"),
        ("http://cdn.whole-site.example/a", "iwf"),
        ("http://terror.example/videos/17", "ctiru"),  # sha256 of the canonical URL
        ("http://www.terror.example/videos/17/", "ctiru"),
        ("http://terror.example/videos/17?autoplay=1", "ctiru"),
        ("http://terror.example/videos/18", None),
        ("http://hashed-site.example/anything", "ctiru"),  # a hashed whole site
        ("http://sub.hashed-site.example/", "ctiru"),
        ("http://md5.example/p/q", "ctiru"),
        ("http://www2.abuse.example/gallery/1.jpg", "iwf"),  # a numbered www label, as the index strips it
        ("http://www2.terror.example/videos/17", "ctiru"),
        ("http://query.example/view.php?id=5", "iwf"),
        ("http://query.example/view.php?a=1&id=5", "iwf"),  # the listed parameter among others, in any order
        ("http://query.example/view.php;x?id=5", "iwf"),
        ("http://query.example/view.php?id=6", None),
        ("http://unlisted.example/", None),
    ],
)
def test_each_format_matches_what_it_lists(tier: illegal.IllegalTier, url: str, provider: str | None) -> None:
    assert hit(tier, url) == provider


def test_load_counts_entries_and_reports_malformed_lines(tier: illegal.IllegalTier) -> None:
    assert tier.entries_by_provider() == {"iwf": 4, "ctiru": 3}
    assert {(t.provider, t.format) for t in tier.lists} == {("iwf", "plain"), ("ctiru", "sha256"), ("ctiru", "md5")}
    assert tier.problems == [f"{tier.directory}/iwf/urls.txt: 1 lines are not entries"]


def test_canonical_digest_is_what_a_hashed_list_holds() -> None:
    assert illegal.canonical_digest("https://WWW.Terror.Example/videos/17/") == hashlib.sha256(b"terror.example/videos/17").hexdigest()
    assert illegal.canonical_digest("hashed-site.example", "md5") == hashlib.md5(b"hashed-site.example").hexdigest()


def test_a_missing_tier_or_provider_is_loud(tmp_path: Path) -> None:
    nothing = illegal.load(tmp_path / "nowhere")
    assert nothing.entry_count == 0
    assert "the IWF and CTIRU lists are not blocked" in nothing.problems[0]
    (tmp_path / "partial" / "iwf").mkdir(parents=True)
    (tmp_path / "partial" / "iwf" / "urls.txt").write_text("abuse.example\n")
    (tmp_path / "partial" / "iwf" / "urls.csv").write_text("x\n")
    partial = illegal.load(tmp_path / "partial")
    assert any("the CTIRU list is missing" in p for p in partial.problems)
    assert any("unknown list format '.csv'" in p for p in partial.problems)


def test_a_stale_list_is_loud(tmp_path: Path) -> None:
    root = write_tier(tmp_path / "t")
    old = time.time() - 3 * 86400
    os.utime(root / "iwf" / "urls.txt", (old, old))
    tier = illegal.load(root)
    assert any("urls.txt is 72 hours old" in p for p in tier.problems)


def test_changes_on_disk_are_noticed(tmp_path: Path) -> None:
    root = write_tier(tmp_path / "t")
    tier = illegal.load(root)
    assert not tier.changed_on_disk()
    (root / "iwf" / "new.txt").write_text("more.example\n")
    assert tier.changed_on_disk()


def test_nothing_in_the_policy_opens_the_tier(tmp_path: Path, tier: illegal.IllegalTier) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    policy = load_policy(path)
    pupils = policy.groups["pupils"]
    # An exception for the whole site, for these pupils, in force now; a local allow; `illegal = "allow"`.
    grant = Grant(1, "domain", "abuse.example", "", "", ScopeKind.GROUP, "pupils", NOW - timedelta(hours=1),
                  NOW + timedelta(hours=1), "it.admin", "it_admin", "testing")
    decider = Decider(policy, builtin_index(), grants=[grant], illegal=tier)
    for url in ("http://abuse.example/gallery/1.jpg", "http://terror.example/videos/17"):
        verdict = decider.decide(parse_target(url), pupils, now=NOW)
        assert (verdict.action, verdict.rule, verdict.category) == (Action.BLOCK, Rule.ILLEGAL, "illegal")
        assert verdict.flag is not None and verdict.flag.risk == "illegal"  # the DSL is alerted
        assert "Internet Watch Foundation" in verdict.reason or "CTIRU" in verdict.reason
    # The rest of the site: the exception and the local allow apply as usual.
    assert decider.decide(parse_target("http://abuse.example/about"), pupils, now=NOW).rule is Rule.EXCEPTION
    # And without the tier, the same policy lets the listed page through: the test can fail.
    assert Decider(policy, builtin_index(), grants=[grant]).decide(
        parse_target("http://abuse.example/gallery/1.jpg"), pupils, now=NOW).action is Action.ALLOW


def test_records_of_the_tier_are_never_purged_early(tmp_path: Path) -> None:
    import asyncio
    import sqlite3

    from test_records import make_record

    from schoolgate.db import create_engine, upgrade
    from schoolgate.records import RecordWriter
    from schoolgate.reports.retention import purge

    path = tmp_path / "policy.toml"
    path.write_text(POLICY.replace('[gateway]\n', f'[gateway]\ndatabase = "sqlite+aiosqlite:///{tmp_path}/sg.db"\n'))
    policy = load_policy(path)
    old = NOW - timedelta(days=400)  # past records_days (180), within flagged_days (2190)

    async def scenario() -> None:
        await upgrade(policy.gateway.database)
        writer = RecordWriter(policy.gateway.database)
        await writer.start()
        writer.submit(make_record(ts=old, host="ordinary.example", seq=1))
        # Unflagged (a DSL set flag_min_severity past it, say): still kept as long as flagged records.
        writer.submit(make_record(ts=old, host="abuse.example", seq=2, verdict="block", rule="illegal iwf"))
        await writer.close()
        engine = create_engine(policy.gateway.database)
        await purge(engine, policy, now=NOW)
        await engine.dispose()

    asyncio.run(scenario())
    with sqlite3.connect(tmp_path / "sg.db") as db:
        assert [h for (h,) in db.execute("SELECT host FROM access_log")] == ["abuse.example"]


def test_an_exception_for_a_listed_address_is_refused_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from schoolgate.cli import main

    monkeypatch.setenv(illegal.DIR_VARIABLE, str(write_tier(tmp_path / "illegal-content")))
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.replace('[gateway]\n', f'[gateway]\ndatabase = "sqlite+aiosqlite:///{tmp_path}/sg.db"\n'))
    base = ["--policy", str(path), "--by", "it.admin", "--role", "it_admin", "--reason", "x", "--for", "group:pupils"]
    assert main(["exceptions", "grant", "abuse.example/gallery/", *base]) != 0
    assert "illegal" in capsys.readouterr().err.lower()
    assert main(["exceptions", "grant", "unlisted.example", *base]) == 0
