"""A trust's baseline: each school can tighten it, never loosen it, and the verdict says which layer decided."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import schoolgate.categories
from schoolgate.categories.index import builtin_index
from schoolgate.decide import Decider
from schoolgate.grants import Grant, ScopeKind
from schoolgate.layers import TRUST, Layered
from schoolgate.policy import Action, load_policy
from schoolgate.urls import parse_target

DATING_SITE = (Path(schoolgate.categories.__file__).parent / "builtin" / "dating" / "domains").read_text().split()[0]

TRUST_POLICY = """\
[categories]
pornography = "block"
gambling = "block"
dating = "block"

[local]
block = ["trust-banned.test"]

[groups.pupils]
title = "Pupils (trust)"
safe_search = true
block_ip_literals = true
[groups.pupils.categories]
games = "warn"

[groups.staff]
title = "Staff (trust)"
"""

SCHOOL_POLICY = """\
[categories]
games = "allow"
social-media = "block"
dating = "block"

[local]
allow = ["pornhub.com", "trust-banned.test"]

[groups.pupils]
title = "Pupils"
networks = ["10.1.0.0/16"]
[groups.pupils.categories]
gambling = "allow"

[groups.sixth-form]
title = "Sixth form"
networks = ["10.2.0.0/16"]

[groups.staff]
title = "Staff"
networks = ["10.9.0.0/16"]
"""


@pytest.fixture
def layered(tmp_path):
    (tmp_path / "trust.toml").write_text(TRUST_POLICY)
    (tmp_path / "school.toml").write_text(SCHOOL_POLICY)
    trust, school = load_policy(tmp_path / "trust.toml"), load_policy(tmp_path / "school.toml")
    index = builtin_index()

    def make(grants=()):
        return school, Layered(Decider(school, index, (), grants), Decider(trust, index), trust)

    return make


def decide(school, layers, url: str, group: str):
    return layers.decide(parse_target(url), school.groups[group], user=None, client_ip="10.1.2.3")


def test_a_school_cannot_loosen_what_the_trust_blocks(layered):
    school, layers = layered()
    for url in ["https://pornhub.com/", "https://www.bet365.com/", "https://trust-banned.test/"]:
        verdict = decide(school, layers, url, "pupils")
        assert verdict.action is Action.BLOCK, url
        assert verdict.source.startswith(TRUST) and "trust's baseline" in verdict.reason
        assert verdict.group == "pupils"


def test_a_school_can_tighten_and_its_own_rule_is_named(layered):
    school, layers = layered()
    social = decide(school, layers, "https://www.tiktok.com/", "pupils")
    if social.categories:  # the built-in list knows tiktok as social media
        assert social.action is Action.BLOCK and not social.source.startswith(TRUST)
    games = decide(school, layers, "https://roblox.com/", "pupils")  # school: allow; trust pupils: warn
    assert games.action is Action.WARN and games.source.startswith(TRUST)
    staff_games = decide(school, layers, "https://roblox.com/", "staff")  # trust staff says nothing about games
    assert staff_games.action is Action.ALLOW and not staff_games.source.startswith(TRUST)


def test_an_exception_cannot_open_what_the_trust_blocks(layered):
    now = datetime.now(UTC)
    grant = Grant(id=1, kind="category", host="", path="", category="dating", scope_kind=ScopeKind.GROUP, scope="pupils",
                  starts_at=now - timedelta(minutes=1), ends_at=now + timedelta(hours=1), granted_by="it",
                  role="it_admin", reason="design and technology")
    school, layers = layered(grants=[grant])
    dating = f"https://{DATING_SITE}/"
    # The school's exception opens dating sites for pupils in the school's layer; the trust's still blocks them.
    assert layers.school.decide(parse_target(dating), school.groups["pupils"]).action is Action.ALLOW
    assert decide(school, layers, dating, "pupils").action is Action.BLOCK


def test_groups_map_by_name_else_baseline_group_else_the_trusts_unknown_devices_group(layered):
    school, layers = layered()
    assert layers.trust_group(school.groups["pupils"]).name == "pupils"
    assert layers.trust_group(school.groups["sixth-form"]).name == "pupils"  # the trust's strictest group
    held = dataclasses.replace(school.groups["sixth-form"], baseline_group="staff")
    assert layers.trust_group(held).name == "staff"


def test_the_trusts_switches_only_tighten(layered):
    school, layers = layered()
    pupils = layers.tightened(school.groups["pupils"])
    assert pupils.safe_search and pupils.block_ip_literals
    staff = layers.tightened(school.groups["staff"])
    assert not staff.safe_search and not staff.block_ip_literals
    assert decide(school, layers, "http://93.184.216.34/", "pupils").action is Action.BLOCK


def test_baseline_file_in_the_policy_layers_the_engine_and_explain_names_the_layer(tmp_path, capsys):
    from schoolgate.cli import main
    from schoolgate.engine import Engine

    (tmp_path / "trust.toml").write_text(TRUST_POLICY)
    (tmp_path / "school.toml").write_text('[baseline]\nfile = "trust.toml"\n\n' + SCHOOL_POLICY)
    engine = Engine.load(tmp_path / "school.toml")
    assert isinstance(engine.decider, Layered) and engine.policy.trust is not None
    assert tmp_path / "trust.toml" in engine.policy.watched_files  # an edit to the baseline is picked up too
    verdict = engine.decide(parse_target("https://pornhub.com/"), engine.policy.groups["pupils"])
    assert verdict.action is Action.BLOCK and verdict.source.startswith(TRUST)
    assert main(["explain", "--policy", str(tmp_path / "school.toml"), "--group", "pupils", "https://pornhub.com/"]) == 0
    out = capsys.readouterr().out
    assert "layer:      the trust's baseline" in out and "verdict:    BLOCK" in out


def test_check_reports_the_baselines_problems_and_unknown_baseline_groups(tmp_path):
    from schoolgate.policy import PolicyInvalid

    (tmp_path / "trust.toml").write_text(TRUST_POLICY.replace('gambling = "block"', 'gambling = "blok"'))
    (tmp_path / "school.toml").write_text('[baseline]\nfile = "trust.toml"\n\n' + SCHOOL_POLICY.replace(
        '[groups.sixth-form]\ntitle = "Sixth form"', '[groups.sixth-form]\ntitle = "Sixth form"\nbaseline_group = "sixth"'))
    with pytest.raises(PolicyInvalid) as bad:
        load_policy(tmp_path / "trust.toml")
    (tmp_path / "trust.toml").write_text(TRUST_POLICY)
    with pytest.raises(PolicyInvalid) as bad:
        load_policy(tmp_path / "school.toml")
    assert "baseline_group 'sixth' is not a group of the baseline" in str(bad.value)
    (tmp_path / "trust.toml").write_text(TRUST_POLICY.replace('gambling = "block"', 'gambling = "blok"'))
    (tmp_path / "school.toml").write_text('[baseline]\nfile = "trust.toml"\n\n' + SCHOOL_POLICY)
    with pytest.raises(PolicyInvalid) as bad:
        load_policy(tmp_path / "school.toml")
    assert any(p.file.endswith("trust.toml") and p.line for p in bad.value.problems)  # said where, in the trust's file
