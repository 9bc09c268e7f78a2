"""Who may open what, for how long: the policy's [exceptions] rules."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schoolgate.categories.index import CategoryHit
from schoolgate.decide import Decider
from schoolgate.grants import Grant, GrantRequest, ScopeKind, check, lesson_end, normalise_scope
from schoolgate.policy import Action, Role, load_policy
from schoolgate.urls import parse_target

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

POLICY = """\
[groups.pupils]
networks = ["10.20.0.0/16"]
[groups.staff]
networks = ["10.30.0.0/16"]

[exceptions]
lessons = ["08:50-09:50", "09:50-10:50"]
default_minutes = 30
teacher_max_minutes = 120
teacher_max_severity = "low"
teacher_groups = ["pupils"]
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = Path(tmp_path_factory.mktemp("p")) / "policy.toml"
    path.write_text(POLICY)
    return load_policy(path)


def ask(target: str, *, role=Role.TEACHER, scope=(ScopeKind.GROUP, "pupils"), minutes=45, reason="lesson") -> GrantRequest:
    return GrantRequest(target=target, scope_kind=scope[0], scope=scope[1], starts_at=NOW,
                        ends_at=NOW + timedelta(minutes=minutes), reason=reason, actor="mr.smith", role=role)


def test_teacher_may_open_low_severity_for_pupils(policy):
    assert check(policy, ask("category:games"), set(), NOW) == []
    assert check(policy, ask("youtube.example/watch?v=abc"), {"streaming"}, NOW) == []


@pytest.mark.parametrize(
    ("target", "listed", "message"),
    [
        ("category:pornography", set(), "teachers may not open pornography"),
        ("category:self-harm", set(), "teachers may not open self-harm"),
        ("category:extremism", set(), "teachers may not open extremism"),
        ("adult.example", {"pornography", "news"}, "teachers may not open pornography"),  # by domain
        ("category:gambling", set(), "gambling is higher (ask IT)"),
        ("category:illegal", set(), "illegal cannot be opened by anyone"),
    ],
)
def test_teacher_refused_above_their_limits(policy, target, listed, message):
    assert any(message in p for p in check(policy, ask(target), listed, NOW))


def test_it_admin_may_open_more_but_never_illegal(policy):
    assert check(policy, ask("category:gambling", role=Role.IT_ADMIN, scope=(ScopeKind.GROUP, "staff")), set(), NOW) == []
    assert check(policy, ask("category:illegal", role=Role.IT_ADMIN), set(), NOW) == ["illegal cannot be opened by anyone"]


def test_scopes_times_and_reasons(policy):
    staff = ask("category:games", scope=(ScopeKind.GROUP, "staff"))
    assert "teachers may grant exceptions only for pupils" in check(policy, staff, set(), NOW)
    assert any("unknown group 'year9'" in p for p in check(policy, ask("category:games", scope=(ScopeKind.GROUP, "year9")), set(), NOW))
    assert check(policy, ask("category:games", scope=(ScopeKind.NETWORK, "10.20.3.0/24")), set(), NOW) == []
    assert any("is not a network" in p for p in check(policy, ask("category:games", scope=(ScopeKind.NETWORK, "room 12")), set(), NOW))
    assert "name at least one user" in check(policy, ask("category:games", scope=(ScopeKind.USERS, " , ")), set(), NOW)
    assert any("at most 2 h 0 min" in p for p in check(policy, ask("category:games", minutes=121), set(), NOW))
    assert any("in the past" in p for p in check(policy, ask("category:games", minutes=-5), set(), NOW))
    assert "give a reason; it is kept in the audit trail" in check(policy, ask("category:games", reason=" "), set(), NOW)
    assert any("unknown category 'gamez'" in p for p in check(policy, ask("category:gamez"), set(), NOW))
    assert any("is not a domain or URL" in p for p in check(policy, ask("bad..host"), set(), NOW))


def test_default_end_is_the_end_of_the_lesson(policy):
    local = datetime.now().astimezone().replace(hour=9, minute=15, second=0, microsecond=0)
    assert lesson_end(policy, local).astimezone().strftime("%H:%M") == "09:50"
    outside = local.replace(hour=12)
    assert lesson_end(policy, outside) == outside + timedelta(minutes=30)


def test_scope_matching():
    def grant(kind: ScopeKind, scope: str) -> Grant:
        return Grant(1, "domain", "games.test", "", "", kind, normalise_scope(kind, scope), NOW, NOW + timedelta(hours=1),
                     "mr.smith", "teacher", "lesson")

    assert grant(ScopeKind.GROUP, "pupils").covers("pupils", None, "10.0.0.1")
    assert not grant(ScopeKind.GROUP, "pupils").covers("staff", None, "10.0.0.1")
    assert grant(ScopeKind.USERS, "amy, ben").covers("pupils", "ben", None)
    assert not grant(ScopeKind.USERS, "amy, ben").covers("pupils", "be", None)
    assert not grant(ScopeKind.USERS, "amy").covers("pupils", None, None)
    assert grant(ScopeKind.NETWORK, "10.20.3.7/24").covers("pupils", None, "10.20.3.99")
    assert not grant(ScopeKind.NETWORK, "10.20.3.0/24").covers("pupils", None, "10.20.4.1")
    assert grant(ScopeKind.USER, "amy").covers("x", "amy", None)
    # Names in one form, however the teacher or the pupil spelt them.
    assert grant(ScopeKind.USER, "Amy.B").covers("x", "AMY.B", None)
    assert grant(ScopeKind.USERS, "Amy, BEN").covers("pupils", "ben", None)
    g = grant(ScopeKind.GROUP, "pupils")
    assert g.opens(parse_target("http://www.games.test/x")) and not g.opens(parse_target("http://games.testing/"))
    assert g.active(NOW) and not g.active(NOW + timedelta(hours=1)) and not g.active(NOW - timedelta(seconds=1))


class MixedSite:
    """A category list with a host of ordinary pages and one listed as pornography, and a games host."""

    def lookup(self, host: str, match_path: str) -> list[CategoryHit]:
        if host == "mixed.test" and match_path.startswith("/adult-section"):
            return [CategoryHit("pornography", "mixed.test/adult-section")]
        if host == "games.test":
            return [CategoryHit("games", "games.test")]
        return []


def decider_with(policy, *grants: Grant) -> Decider:
    strict = replace(policy, groups={name: replace(g, default_action=Action.ALLOW, categories={
        "pornography": Action.BLOCK, "games": Action.BLOCK}) for name, g in policy.groups.items()})
    return Decider(strict, MixedSite(), grants=grants)


def pupils_of(decider: Decider):
    return decider.policy.groups["pupils"]


def host_grant(host: str, role: Role, path: str = "") -> Grant:
    return Grant(7, "url" if path else "domain", host, path, "", ScopeKind.GROUP, "pupils", NOW - timedelta(minutes=1),
                 NOW + timedelta(hours=1), "mr.smith", role.value, "request #3: homework")


@pytest.mark.parametrize("url", ["http://mixed.test/adult-section", "https://mixed.test/ADULT-section/x",
                                 "http://mixed.test/homework/../adult-section"])
def test_a_teachers_exception_for_a_host_never_opens_a_page_on_it_listed_as_pornography(policy, url):
    decider = decider_with(policy, host_grant("mixed.test", Role.TEACHER), host_grant("mixed.test", Role.TEACHER, "/"))
    pupils = pupils_of(decider)
    verdict = decider.decide(parse_target(url), pupils, now=NOW)
    assert verdict.action is Action.BLOCK and verdict.category == "pornography"
    # the rest of the host is open, as the teacher asked
    assert decider.decide(parse_target("http://mixed.test/homework"), pupils, now=NOW).rule == "exception"


def test_an_exception_opens_what_its_granter_may_open(policy):
    it_admin = decider_with(policy, host_grant("mixed.test", Role.IT_ADMIN))
    pupils = pupils_of(it_admin)
    assert it_admin.decide(parse_target("http://mixed.test/adult-section"), pupils, now=NOW).action is Action.ALLOW
    teacher = decider_with(policy, host_grant("games.test", Role.TEACHER))  # games: low severity, a teacher may
    assert teacher.decide(parse_target("http://games.test/"), pupils, now=NOW).action is Action.ALLOW


def test_a_block_page_reference_or_a_single_word_is_not_a_site(policy):
    from schoolgate.grants import parse_target as parse_grant_target

    for pasted in ("SG-7K3Q-P2XD", "sg 7k3q p2xd", "SG7K3QP2XD"):
        assert any("is a block page's reference, not a site" in p for p in check(policy, ask(pasted), set(), NOW))
    assert any("not a site's address" in p for p in check(policy, ask("homework"), set(), NOW))
    assert parse_grant_target("www.bbc.co.uk/news") == ("url", "www.bbc.co.uk", "/news", "")
    assert parse_grant_target("10.1.2.3")[0] == "domain"


def test_class_and_room_scopes(tmp_path):
    from schoolgate.grants import GrantRefused, chosen_scope

    path = tmp_path / "policy.toml"
    path.write_text(POLICY + 'rooms = { "lab-2" = ["10.20.3.0/24", "10.20.4.0/25"] }\n')
    policy = load_policy(path)
    classes = {"9X": ("amy", "ben")}
    kind, scope, label = chosen_scope(policy, "class", "9X", classes)
    assert (kind, label) == (ScopeKind.USERS, "class 9X")
    member = Grant(1, "domain", "games.test", "", "", kind, normalise_scope(kind, scope), NOW, NOW + timedelta(hours=1),
                   "mr.smith", "teacher", "lesson", label)
    assert member.covers("pupils", "ben", None) and not member.covers("pupils", "cat", None)
    assert member.whom == "class 9X"
    kind, scope, label = chosen_scope(policy, "room", "lab-2", classes)
    room = replace(member, scope_kind=kind, scope=normalise_scope(kind, scope), label=label)
    assert room.covers("pupils", None, "10.20.4.9") and room.covers("pupils", None, "10.20.3.200")
    assert not room.covers("pupils", None, "10.20.4.200")
    assert check(policy, replace(ask("games.test"), scope_kind=kind, scope=scope), set(), NOW) == []
    with pytest.raises(GrantRefused, match="unknown room 'lab-3'; rooms are: lab-2"):
        chosen_scope(policy, "room", "lab-3", classes)
    with pytest.raises(GrantRefused, match="unknown class '9Y'"):
        chosen_scope(policy, "class", "9Y", classes)


def test_lengths_offered_stay_within_the_roles_maximum(policy):
    from schoolgate.grants import durations, end_of_day, ends_at_for

    morning = datetime.now().astimezone().replace(hour=9, minute=15, second=0, microsecond=0)
    assert end_of_day(policy, morning).astimezone().strftime("%H:%M") == "10:50"  # the last lesson's end
    assert ends_at_for(policy, "lesson", morning).astimezone().strftime("%H:%M") == "09:50"
    teacher = [value for value, _ in durations(policy, Role.TEACHER, morning)]
    assert teacher == ["lesson", "day", "30", "60", "120"]  # within teacher_max_minutes = 120
    assert "43200" in [value for value, _ in durations(policy, Role.IT_ADMIN, morning)]


def test_a_pupil_sees_only_their_own_requests_outcome():
    from schoolgate.addons.pages import outcome
    from schoolgate.grants import AskedFor, latest_request_for

    now = datetime.now(UTC)

    def asked(id_: int, user: str | None, ip: str, status: str, **more) -> AskedFor:
        values = dict(id=id_, created_at=now - timedelta(minutes=5), client_ip=ip, username=user, host="games.test",
                      url="http://games.test/", status=status, decided_by=None, note=None, open_until=None)
        return AskedFor(**{**values, **more})

    until = now + timedelta(minutes=30)
    requests = (asked(1, "amy", "10.0.0.1", "refused", decided_by="mr.smith", note="not in lessons"),
                asked(2, "amy", "10.0.0.1", "approved", decided_by="mr.smith", open_until=until),
                asked(3, "ben", "10.0.0.1", "pending"), asked(4, None, "10.0.0.9", "pending"))
    latest = latest_request_for(requests, "10.0.0.1", "amy", "games.test")
    assert latest is not None and latest.id == 2
    assert outcome(latest, now) == f"Approved by mr.smith until {until.astimezone():%H:%M}."
    assert outcome(requests[0], now) == "Refused by mr.smith: “not in lessons”"
    assert outcome(requests[2], now).startswith("Waiting for a teacher or IT")
    assert latest_request_for(requests, "10.0.0.1", None, "games.test") is None  # the device is not amy
    assert latest_request_for(requests, "10.0.0.9", None, "games.test").id == 4
    assert latest_request_for(requests, "10.0.0.1", "amy", "other.test") is None
