"""A faulty category index never opens the filter, and an empty or stale list is loud."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from schoolgate.categories.health import IndexStatus, Serving, assess
from schoolgate.categories.index import builtin_index, compile_index
from schoolgate.categories.sources import plain_source
from schoolgate.engine import Engine
from schoolgate.policy import Action
from schoolgate.urls import parse_target

POLICY = """\
[gateway]
default_group = "pupils"

[lists]
index = "lists.idx"

[categories]
pornography = "block"
self-harm = "block"
games = "warn"
news = "allow"

[groups.pupils]
title = "Pupils"
networks = ["10.20.0.0/16"]
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


def compile_lists(tmp_path: Path, *hosts: str) -> Path:
    listed = tmp_path / "porn.txt"
    listed.write_text("".join(f"{host}\n" for host in hosts))
    compile_index([plain_source(listed, "pornography")], tmp_path / "lists.idx", show_progress=False, allow_shrink=True)
    return tmp_path / "lists.idx"


def verdict(engine: Engine, url: str) -> Action:
    return engine.decide(parse_target(url), engine.policy.groups["pupils"]).action


def test_a_missing_index_at_first_start_serves_the_builtin_list_and_says_so(policy: Path) -> None:
    engine = Engine.load(policy)
    assert engine.index is builtin_index()
    assert engine.index_status.serving is Serving.BUILTIN
    assert engine.index_status.problem == "missing"
    assert "not compiled yet" in engine.index_status.detail
    assert verdict(engine, "https://www.pornhub.com/") is Action.BLOCK  # the built-in list still blocks


def test_a_corrupt_index_of_the_same_size_keeps_the_last_good_one(policy: Path, tmp_path: Path) -> None:
    path = compile_lists(tmp_path, "listed-only-here.example", "pornhub.com")
    engine = Engine.load(policy)
    assert engine.index_status == IndexStatus(Serving.INDEX)
    assert verdict(engine, "https://listed-only-here.example/") is Action.BLOCK
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a different stamp whatever the clock's grain
    assert engine.changed_on_disk()
    reloaded = Engine.load(policy, engine)
    assert reloaded.index is engine.index
    assert reloaded.index_status.serving is Serving.PREVIOUS
    assert reloaded.index_status.problem == "corrupt"
    assert verdict(reloaded, "https://listed-only-here.example/") is Action.BLOCK
    assert verdict(reloaded, "https://www.pornhub.com/") is Action.BLOCK
    # A policy edit while the file is still bad keeps both the good index and the alarm.
    policy.write_text(POLICY.replace('games = "warn"', 'games = "block"'))
    again = Engine.load(policy, reloaded)
    assert again.index is engine.index and again.index_status.problem == "corrupt"


def test_an_index_renamed_away_never_falls_back_to_the_builtin_list(policy: Path, tmp_path: Path) -> None:
    path = compile_lists(tmp_path, "listed-only-here.example")
    engine = Engine.load(policy)
    path.rename(tmp_path / "elsewhere.idx")
    reloaded = Engine.load(policy, engine)
    assert reloaded.index is engine.index
    assert reloaded.index_status.serving is Serving.PREVIOUS
    assert reloaded.index_status.problem == "missing"
    assert verdict(reloaded, "https://listed-only-here.example/") is Action.BLOCK


def test_a_good_index_after_a_bad_one_is_taken_and_the_alarm_clears(policy: Path, tmp_path: Path) -> None:
    path = compile_lists(tmp_path, "first.example")
    engine = Engine.load(policy)
    path.write_bytes(path.read_bytes()[:100])
    bad = Engine.load(policy, engine)
    assert bad.index_status.problem == "truncated"
    compile_lists(tmp_path, "second.example")
    good = Engine.load(policy, bad)
    assert good.index_status.ok and good.index_status.serving is Serving.INDEX
    assert verdict(good, "https://second.example/") is Action.BLOCK


def test_health_names_each_empty_blocked_category(policy: Path, tmp_path: Path) -> None:
    compile_lists(tmp_path, "a.example", "b.example")
    engine = Engine.load(policy)
    health = assess(engine.policy.groups.values(), engine.index, engine.index_status, max_age_days=7)
    assert dict(health.entries) == {"pornography": 2, "self-harm": 0, "games": 0}
    assert health.empty_blocked == ["self-harm"]  # games is only warned
    assert not health.stale
    [problem] = health.problems()
    assert "'self-harm' has no entries" in problem


def test_health_says_when_the_lists_are_stale(policy: Path, tmp_path: Path) -> None:
    compile_lists(tmp_path, "a.example")
    engine = Engine.load(policy)
    health = assess(engine.policy.groups.values(), engine.index, engine.index_status, max_age_days=7,
                    now=time.time() + 9 * 86400)
    assert health.stale and round(health.age_days or 0) == 9
    assert any("9 days old" in line for line in health.problems())


def test_health_reports_the_index_problem_first(policy: Path) -> None:
    engine = Engine.load(policy)
    health = assess(engine.policy.groups.values(), engine.index, engine.index_status, max_age_days=7)
    assert health.problems()[0].startswith("category index: ")
    assert health.age_days is None and not health.stale  # the built-in list has no age to speak of


def test_check_names_each_empty_blocked_category_without_failing(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from schoolgate.cli import main

    assert main(["check", str(policy)]) == 0  # systemd runs `check` before start: a missing list must not stop it
    out = capsys.readouterr().out
    assert "warning: category index: " in out and "not compiled yet" in out
    assert "warning: blocked category 'self-harm' has no entries" in out
    assert "warning: blocked category 'pornography'" not in out  # the built-in list has some
    assert "'games'" not in out  # warned, not blocked
    assert "warning: illegal-content tier: " in out


def test_the_shipped_index_path_goes_to_the_state_directory_under_systemd(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    from schoolgate.policy import load_policy

    shipped = Path(__file__).resolve().parents[1] / "policy.toml"
    monkeypatch.delenv("SCHOOLGATE_STATE_DIR", raising=False)
    assert load_policy(shipped).lists.index == shipped.parent / "var" / "categories.idx"
    # /etc/schoolgate is read-only for the gateway and the nightly timer: `var/...` is theirs to write.
    monkeypatch.setenv("SCHOOLGATE_STATE_DIR", str(tmp_path))
    policy = load_policy(shipped)
    assert policy.lists.index == tmp_path / "categories.idx"
    assert policy.lists.sources == ("https://dsi.ut-capitole.fr/blacklists/download/blacklists.tar.gz",)


def test_lists_status_shows_sources_ages_counts_and_problems(policy: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from schoolgate.cli import main

    assert main(["lists", "status", "--policy", str(policy)]) == 1  # nothing compiled yet: a problem
    out = capsys.readouterr().out
    assert "serving:   builtin" in out and "not compiled yet" in out
    compile_lists(tmp_path, "a.example", "b.example", "c.example")
    assert main(["lists", "status", "--policy", str(policy)]) == 1  # self-harm is still empty
    out = capsys.readouterr().out
    assert "serving:   index" in out and "days ago" in out and "entries:   3" in out
    assert "           3  pornography          block" in out
    assert "self-harm            block" in out and "<- EMPTY" in out
    assert "problem: blocked category 'self-harm' has no entries" in out
    assert "illegal-content tier:" in out
