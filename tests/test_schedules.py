"""Named time windows evaluated in the school's timezone, with a frozen clock (the moments are given)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from schoolgate.schedules import Schedule, parse_span, parse_term, parse_timezone

LONDON = ZoneInfo("Europe/London")


@pytest.fixture
def school() -> Schedule:
    return Schedule(
        timezone=LONDON,
        terms=(parse_term("2026-09-03..2026-10-23"), parse_term("2026-11-02..2026-12-18")),
        windows={
            "lessons": tuple(map(parse_span, ["term mon-fri 08:50-10:50", "term mon-fri 11:10-12:30", "term mon-fri 13:30-15:20"])),
            "breaks": tuple(map(parse_span, ["term mon-fri 10:50-11:10", "term mon-fri 12:30-13:30"])),
            "evenings": (parse_span("mon-fri 18:00-07:00"),),
            "weekends": (parse_span("sat-sun 00:00-24:00"), parse_span("holidays")),
        },
    )


def at(text: str, zone=LONDON) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


@pytest.mark.parametrize("moment, expected", [
    ("2026-11-30 09:00", ["lessons"]),          # Monday in term
    ("2026-11-30 10:50", ["breaks"]),           # a window starts on its first minute...
    ("2026-11-30 11:10", ["lessons"]),          # ...and ends before its last
    ("2026-11-30 12:45", ["breaks"]),
    ("2026-11-30 16:00", []),                   # after school, before the evening
    ("2026-11-30 23:30", ["evenings"]),
    ("2026-12-01 06:59", ["evenings"]),         # Monday's evening runs past midnight
    ("2026-12-05 06:30", ["evenings", "weekends"]),  # Saturday morning: Friday's evening runs to 07:00
    ("2026-12-05 07:00", ["weekends"]),
    ("2026-12-07 06:30", []),                   # Monday morning: no evening began on Sunday
    ("2026-12-05 12:00", ["weekends"]),
    ("2026-10-27 09:00", ["weekends"]),         # half term: a Tuesday outside the term dates is a holiday
    ("2026-12-18 09:00", ["lessons"]),          # last day of term is in term
    ("2026-12-21 09:00", ["weekends"]),
])
def test_windows_open_at_a_moment(school, moment, expected):
    assert school.active(at(moment)) == expected


def test_windows_are_read_in_the_schools_timezone_across_summer_time(school):
    # 08:00 UTC is 09:00 in London in September (BST) but 08:00 in December (GMT).
    assert school.active(datetime(2026, 9, 7, 8, 0, tzinfo=UTC)) == ["lessons"]
    assert school.active(datetime(2026, 12, 7, 8, 0, tzinfo=UTC)) == []
    assert school.active(datetime(2026, 12, 7, 9, 0, tzinfo=UTC)) == ["lessons"]


def test_a_groups_first_open_window_applies(school):
    assert school.first_active(["breaks", "weekends"], at("2026-11-30 10:55")) == "breaks"
    assert school.first_active(["breaks", "weekends"], at("2026-11-30 09:00")) is None
    assert school.first_active(["weekends", "evenings"], at("2026-12-05 06:30")) == "weekends"
    assert school.first_active(["evenings", "weekends"], at("2026-12-05 06:30")) == "evenings"


@pytest.mark.parametrize("text", ["mon-fri", "term 9-10", "funday 08:00-09:00", "mon-fri 25:00-26:00",
                                  "mon-fri 08:00-08:00", "08:61-09:00", "term term 08:00-09:00"])
def test_bad_spans_say_what_is_wrong(text):
    with pytest.raises(ValueError) as bad:
        parse_span(text)
    assert text in str(bad.value) or repr(text) in str(bad.value)


def test_days_wrap_and_lists():
    assert parse_span("fri-mon 10:00-11:00").days == {4, 5, 6, 0}
    assert parse_span("sat,sun 10:00-11:00").days == {5, 6}


@pytest.mark.parametrize("text", ["2026-09-03", "2026-10-23..2026-09-03", "autumn..2026-12-18"])
def test_bad_term_dates(text):
    with pytest.raises(ValueError):
        parse_term(text)


def test_unknown_timezone():
    with pytest.raises(ValueError, match="unknown timezone"):
        parse_timezone("Europe/Narnia")
    assert parse_timezone("Europe/London") == LONDON


# --- in the policy: [schedules] windows and a group's [groups.NAME.when.WINDOW] ---

SCHEDULED_POLICY = """\
[gateway]
unknown_group = "staff"

[schedules]
timezone = "Europe/London"
term_dates = ["2026-11-02..2026-12-18"]
[schedules.windows]
breaks = ["term mon-fri 10:50-11:10", "term mon-fri 12:30-13:30"]
after-school = ["mon-fri 16:00-18:00"]

[groups.staff]
title = "Staff"
networks = ["10.9.0.0/16"]
[groups.staff.categories]
social-media = "block"
shopping = "block"
[groups.staff.when.breaks.categories]
social-media = "allow"
shopping = "allow"
[groups.staff.when.after-school]
default_action = "allow"
[groups.staff.when.after-school.categories]
social-media = "allow"
"""


def load(tmp_path, text: str):
    from schoolgate.policy import load_policy

    path = tmp_path / "policy.toml"
    path.write_text(text)
    return load_policy(path)


def test_a_groups_actions_follow_its_windows(tmp_path):
    from schoolgate.policy import Action

    policy = load(tmp_path, SCHEDULED_POLICY)
    staff = policy.groups["staff"]
    lesson, window = policy.group_during(staff, at("2026-11-30 09:30"))
    assert window is None and lesson.action_for("social-media") is Action.BLOCK
    brk, window = policy.group_during(staff, at("2026-11-30 12:45"))
    assert window == "breaks" and brk.action_for("social-media") is Action.ALLOW and brk.action_for("shopping") is Action.ALLOW
    evening, window = policy.group_during(staff, datetime(2026, 11, 30, 16, 30, tzinfo=UTC))  # 16:30 GMT
    assert window == "after-school" and evening.action_for("social-media") is Action.ALLOW
    assert evening.action_for("shopping") is Action.BLOCK  # only what the window names changes
    assert evening.name == "staff"  # still recorded as the staff group


def test_window_mistakes_are_reported_with_their_line(tmp_path):
    from schoolgate.policy import PolicyInvalid

    text = SCHEDULED_POLICY.replace('"term mon-fri 12:30-13:30"', '"term mon-fry 12:30-13:30"').replace(
        "[groups.staff.when.after-school]", "[groups.staff.when.afterschool]").replace(
        "[groups.staff.when.after-school.categories]", "[groups.staff.when.afterschool.categories]")
    with pytest.raises(PolicyInvalid) as bad:
        load(tmp_path, text)
    messages = str(bad.value)
    assert "mon-fry" in messages and "no time window 'afterschool'" in messages
    assert all(p.line for p in bad.value.problems)


def test_explain_says_which_window_applied(tmp_path, capsys):
    from schoolgate.cli import main

    (tmp_path / "policy.toml").write_text(SCHEDULED_POLICY)
    args = ["explain", "--policy", str(tmp_path / "policy.toml"), "--group", "staff", "https://www.facebook.com/"]
    assert main([*args, "--at", "2026-11-30 12:45"]) == 0
    during_break = capsys.readouterr().out
    assert "window:     breaks" in during_break and "verdict:    ALLOW" in during_break
    assert main([*args, "--at", "2026-11-30 09:30"]) == 0
    in_lesson = capsys.readouterr().out
    assert "window:     none open" in in_lesson and "verdict:    BLOCK" in in_lesson
