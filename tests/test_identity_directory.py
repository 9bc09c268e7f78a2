"""Directory sign-in against a real OpenLDAP server (slapd) started for these tests:
search then bind and bind as the user, over LDAP, StartTLS and LDAPS; groups and OUs;
injection attempts; group changes picked up after the cache time, without a restart; pupils'
year groups and forms read when the policy names their attributes."""

from __future__ import annotations

import asyncio
import base64
import dataclasses

import pytest

from schoolgate.addons.directory import Directory, DirectoryUnavailable, PupilDetails
from schoolgate.addons.identity import BadCredentials, ProxyLogin
from schoolgate.identities import Source
from schoolgate.policy import DirectorySettings

from support.slapd import BASE, SERVICE_DN, Slapd, free_ports, unavailable, user_dn

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    server = Slapd(tmp_path_factory.mktemp("slapd")).start()
    yield server
    server.stop()


@pytest.fixture
def search_then_bind(slapd) -> DirectorySettings:
    return DirectorySettings(url=slapd.url, bind_dn=SERVICE_DN, bind_password_file=slapd.service_password_file,
                             user_base=BASE, group_base=f"ou=groups,{BASE}")


def test_search_then_bind_checks_the_password_and_reads_groups_and_ous(search_then_bind):
    directory = Directory(search_then_bind)
    amy = directory.check("amy.b", "amy-pw")
    assert amy is not None and amy.user == "amy.b" and amy.source is Source.PROXY_BASIC
    assert {"year7", f"cn=year7,ou=groups,{BASE}".lower(), f"ou=year7,ou=pupils,{BASE}".lower(),
            f"ou=pupils,{BASE}".lower()} <= amy.directory_groups
    assert "teachers" not in amy.directory_groups
    assert "teachers" in directory.check("mr.smith", "smith-pw").directory_groups
    assert directory.check("amy.b", "wrong") is None
    assert directory.check("nobody", "amy-pw") is None


def test_bind_as_the_user(slapd):
    directory = Directory(DirectorySettings(url=slapd.url, user_dn="uid={user},ou=Staff," + BASE,
                                            group_base=f"ou=groups,{BASE}"))
    smith = directory.check("mr.smith", "smith-pw")
    assert smith is not None and "teachers" in smith.directory_groups
    assert directory.check("mr.smith", "amy-pw") is None
    # DN-special characters are escaped into the DN, so a real name with a comma works...
    assert directory.check("o'brien,t", "obrien-pw") is not None
    # ...and a name cannot climb to another entry (amy is in ou=Year7, not ou=Staff).
    assert directory.check("amy.b,ou=Year7,ou=Pupils", "amy-pw") is None


@pytest.mark.parametrize("user", ["*", "amy*", "*)(uid=*", ")(uid=*", "amy.b)(|(uid=*", "amy.b)(objectClass=*",
                                  "a\\2a", "amy.b\x00", "(uid=amy.b)"])
def test_injection_attempts_never_sign_anyone_in(search_then_bind, user):
    directory = Directory(search_then_bind)
    for password in ("amy-pw", "ben-pw", "smith-pw", "x"):
        assert directory.check(user, password) is None


def test_an_empty_password_is_refused_before_any_bind(search_then_bind, slapd):
    # An LDAP simple bind with a DN and no password is an "unauthenticated bind", which succeeds.
    assert Directory(search_then_bind).check("amy.b", "") is None
    assert Directory(DirectorySettings(url=slapd.url, user_dn="uid={user},ou=Year7,ou=Pupils," + BASE)).check("amy.b", "") is None


def test_starttls_and_ldaps_verify_the_directory_certificate(search_then_bind, slapd):
    # By name: the certificate names localhost (ldap3 checks names, not IP addresses).
    start_tls = dataclasses.replace(search_then_bind, url=slapd.url.replace("127.0.0.1", "localhost"), start_tls=True,
                                    ca_file=slapd.tls.ca_file)
    assert Directory(start_tls).check("amy.b", "amy-pw") is not None
    ldaps = dataclasses.replace(search_then_bind, url=slapd.ldaps_url.replace("127.0.0.1", "localhost"), ca_file=slapd.tls.ca_file)
    assert Directory(ldaps).check("amy.b", "amy-pw") is not None
    # A certificate from a CA the gateway was not told to trust: refused, never "signed in".
    with pytest.raises(DirectoryUnavailable):
        Directory(dataclasses.replace(ldaps, ca_file=None)).check("amy.b", "amy-pw")


def test_an_unreachable_directory_or_a_wrong_service_password_is_unavailable_not_a_wrong_password(search_then_bind, slapd, tmp_path):
    (port,) = free_ports(1)
    with pytest.raises(DirectoryUnavailable):
        Directory(dataclasses.replace(search_then_bind, url=f"ldap://127.0.0.1:{port}", timeout_seconds=2)).check("amy.b", "amy-pw")
    bad = tmp_path / "bad.password"
    bad.write_text("nope")
    with pytest.raises(DirectoryUnavailable):
        Directory(dataclasses.replace(search_then_bind, bind_password_file=bad)).check("amy.b", "amy-pw")


def test_groups_of_a_user_named_by_another_source(search_then_bind):
    directory = Directory(search_then_bind)
    assert "teachers" in directory.groups_of("o'brien,t")
    assert directory.groups_of("nobody") is None
    assert directory.groups_of("*") is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_group_changes_are_picked_up_after_the_cache_time_without_a_restart(search_then_bind, slapd):
    clock = Clock()
    directory = Directory(dataclasses.replace(search_then_bind, cache_seconds=60), clock=clock)
    login = ProxyLogin(clock=clock)
    header = "Basic " + base64.b64encode(b"ben.c:ben-pw").decode()

    async def groups():
        return (await login.verify("10.0.0.5", header, [directory], remember=60)).directory_groups

    assert "sixth-form" not in asyncio.run(groups())
    slapd.modify(f"dn: cn=sixth-form,ou=groups,{BASE}\nchangetype: modify\nadd: member\nmember: {user_dn('ben.c')}\n")
    try:
        clock.now += 30
        assert "sixth-form" not in asyncio.run(groups())  # still within the cache time
        clock.now += 31
        assert "sixth-form" in asyncio.run(groups())
        assert login.checks == 2
    finally:
        slapd.modify(f"dn: cn=sixth-form,ou=groups,{BASE}\nchangetype: modify\ndelete: member\nmember: {user_dn('ben.c')}\n")


def test_proxy_login_with_the_directory_limits_guesses(search_then_bind):
    login = ProxyLogin()
    directory = Directory(search_then_bind)

    async def go():
        for n in range(5):
            with pytest.raises(BadCredentials):
                await login.verify("10.0.0.7", "Basic " + base64.b64encode(f"amy.b:g{n}".encode()).decode(), [directory])
        with pytest.raises(BadCredentials):
            await login.verify("10.0.0.7", "Basic " + base64.b64encode(b"amy.b:amy-pw").decode(), [directory])
        assert login.checks == 5

    asyncio.run(go())


def test_a_directory_group_is_read_as_a_class_list(search_then_bind, slapd, tmp_path, capsys):
    from schoolgate.cli import main

    directory = Directory(search_then_bind)
    assert directory.members_of("teachers") == ("mr.smith", "o'brien,t")
    assert directory.members_of("sixth-form") == ()  # only the service account, which is nobody's user name
    assert directory.members_of("year9") is None
    assert directory.members_of("*") is None  # the name is escaped, not a wildcard

    policy = tmp_path / "policy.toml"
    policy.write_text(f"""[gateway]
database = "sqlite+aiosqlite:///{tmp_path}/schoolgate.db"

[directory]
url = "{slapd.url}"
bind_dn = "{SERVICE_DN}"
bind_password_file = "{slapd.service_password_file}"
user_base = "{BASE}"
group_base = "ou=groups,{BASE}"

[groups.pupils]
networks = ["10.0.0.0/8"]
""")
    assert main(["classes", "sync", "year7", "teachers", "--policy", str(policy), "--by", "it"]) == 0
    assert capsys.readouterr().out.splitlines() == ["class teachers: 2 members", "class year7: 1 members"]
    assert main(["classes", "sync", "year9", "--policy", str(policy)]) == 1
    assert "the directory has no group 'year9' with members" in capsys.readouterr().err

    # The nightly timer names no group: every class read from the directory before is read again.
    slapd.modify(f"dn: cn=teachers,ou=groups,{BASE}\nchangetype: modify\nadd: member\nmember: {user_dn('amy.b')}\n")
    try:
        assert main(["classes", "sync", "--policy", str(policy), "--by", "timer"]) == 0
    finally:
        slapd.modify(f"dn: cn=teachers,ou=groups,{BASE}\nchangetype: modify\ndelete: member\nmember: {user_dn('amy.b')}\n")
    assert capsys.readouterr().out.splitlines() == ["class teachers: 3 members", "class year7: 1 members"]
def test_a_class_made_of_groups_lists_their_members_once(search_then_bind, slapd):
    group = f"cn=maths-9x,ou=groups,{BASE}"
    slapd.modify(f"dn: {group}\nchangetype: add\nobjectClass: groupOfNames\ncn: maths-9x\n"
                 f"member: cn=teachers,ou=groups,{BASE}\nmember: {user_dn('amy.b')}\nmember: {group}\n")  # and itself
    try:
        assert Directory(search_then_bind).members_of("maths-9x") == ("amy.b", "mr.smith", "o'brien,t")
    finally:
        slapd.modify(f"dn: {group}\nchangetype: delete\n")


def test_year_group_and_form_are_read_when_the_policy_names_their_attributes(search_then_bind, slapd):
    slapd.modify(f"dn: {user_dn('amy.b')}\nchangetype: modify\nadd: departmentNumber\ndepartmentNumber: Year 7\n-\n"
                 "add: businessCategory\nbusinessCategory: 7B\n")
    plain = Directory(search_then_bind)
    assert plain.check("amy.b", "amy-pw") is not None and plain.take_details() == {}  # not asked for: not read
    named = dataclasses.replace(search_then_bind, year_attribute="departmentNumber", form_attribute="businessCategory")
    directory = Directory(named)
    assert directory.check("amy.b", "amy-pw") is not None
    assert directory.take_details() == {"amy.b": PupilDetails("Year 7", "7B")}
    assert directory.take_details() == {}  # handed over once
    assert directory.check("amy.b", "wrong") is None and directory.take_details() == {}
    # Read too when another source named the user (the service account looks them up), and when
    # the gateway binds as the user; an attribute the entry lacks is None.
    looked_up = Directory(named)
    assert looked_up.groups_of("amy.b") is not None
    assert looked_up.take_details() == {"amy.b": PupilDetails("Year 7", "7B")}
    as_user = Directory(DirectorySettings(url=slapd.url, user_dn="uid={user},ou=Year7,ou=Pupils," + BASE,
                                          year_attribute="departmentNumber", form_attribute="roomNumber"))
    assert as_user.check("amy.b", "amy-pw") is not None
    assert as_user.take_details() == {"amy.b": PupilDetails("Year 7", None)}
