"""Every identity source through a real mitmdump, recorded with how it was obtained:
directory passwords and groups (real slapd), RADIUS accounting (real radclient), the
network, and unknown devices (the strictest group, never the most permissive)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess

import pytest

from schoolgate.cli import main

from support.clients import curl
from support.gateway import free_ports
from support.slapd import BASE, SERVICE_DN, Slapd, unavailable
from support.waiting import wait_for

DIRECTORY_POLICY = """\
[directory]
url = "URL"
bind_dn = "SERVICE_DN"
bind_password_file = "PASSWORD_FILE"
user_base = "BASE"
group_base = "ou=groups,BASE"

[groups.visitors]
title = "Visitors"
default_action = "block"

[groups.year7]
title = "Year 7"
directory_groups = ["year7"]
[groups.year7.categories]
games = "block"

[groups.staff]
title = "Staff"
directory_groups = ["cn=teachers,ou=groups,BASE"]

[groups.pupils]
title = "Pupils (by OU)"
directory_groups = ["ou=pupils,BASE"]
networks = ["127.0.0.0/8"]
"""


def rows(gateway, *columns: str) -> list[tuple]:
    gateway.stop()
    with sqlite3.connect(gateway.db_path) as db:
        return db.execute(f"SELECT {', '.join(columns)} FROM access_log ORDER BY seq").fetchall()


@pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")
def test_directory_passwords_and_groups_pick_the_policy_group(gateway_factory, upstream, tmp_path_factory, capsys):
    slapd = Slapd(tmp_path_factory.mktemp("slapd")).start()
    try:
        policy = (DIRECTORY_POLICY.replace("URL", slapd.url).replace("SERVICE_DN", SERVICE_DN)
                  .replace("PASSWORD_FILE", str(slapd.service_password_file)).replace("BASE", BASE))
        gateway = gateway_factory(policy)
        assert curl(gateway, "http://games.test/", user="amy.b", password="amy-pw").status == 403  # year7 blocks games
        assert curl(gateway, "http://games.test/", user="mr.smith", password="smith-pw").status == 200
        assert curl(gateway, "http://games.test/", user="ben.c", password="ben-pw").status == 200  # Year11: by OU
        assert curl(gateway, "http://games.test/", user="amy.b", password="wrong").status == 407
        assert curl(gateway, "http://games.test/", user="*)(uid=*", password="amy-pw").status == 407
        recorded = rows(gateway, "username", "group_name", "identity_source", "verdict")
        # `explain --user` reads the user's groups from the directory as the gateway does.
        assert main(["explain", "--policy", str(gateway.policy_path), "--user", "amy.b", "http://games.test/"]) == 0
        out = capsys.readouterr().out
        assert "group:      year7 (user amy.b is in directory group year7 (year7))" in out and "BLOCK" in out
    finally:
        slapd.stop()
    assert recorded[:3] == [("amy.b", "year7", "proxy-basic", "block"), ("mr.smith", "staff", "proxy-basic", "allow"),
                            ("ben.c", "pupils", "proxy-basic", "allow")]
    assert [r[1:] for r in recorded[3:]] == [("pupils", "network", "block")] * 2  # refused sign-ins, by network


@pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")
def test_the_gateway_keeps_pupils_year_groups_and_forms_from_the_directory(gateway_factory, upstream, tmp_path_factory):
    slapd = Slapd(tmp_path_factory.mktemp("slapd")).start()
    try:
        slapd.modify(f"dn: uid=amy.b,ou=Year7,ou=Pupils,{BASE}\nchangetype: modify\nadd: departmentNumber\n"
                     "departmentNumber: Year 7\n-\nadd: businessCategory\nbusinessCategory: 7B\n")
        policy = (DIRECTORY_POLICY.replace("group_base =", 'year_attribute = "departmentNumber"\n'
                                           'form_attribute = "businessCategory"\ngroup_base =')
                  .replace("URL", slapd.url).replace("SERVICE_DN", SERVICE_DN)
                  .replace("PASSWORD_FILE", str(slapd.service_password_file)).replace("BASE", BASE))
        gateway = gateway_factory(policy)
        assert curl(gateway, "http://games.test/", user="amy.b", password="amy-pw").status == 403
        assert curl(gateway, "http://games.test/", user="mr.smith", password="smith-pw").status == 200
        gateway.stop()  # stores what is still waiting
    finally:
        slapd.stop()
    with sqlite3.connect(gateway.db_path) as db:
        stored = db.execute("SELECT username, year_group, form FROM pupil_directory ORDER BY username").fetchall()
    assert stored == [("amy.b", "Year 7", "7B"), ("mr.smith", None, None)]
    assert "7B" not in gateway.log_text()


UNKNOWN_POLICY = """\
[categories]
pornography = "block"

[groups.staff]
title = "Staff"
networks = ["127.0.0.2/32"]

[groups.pupils]
title = "Pupils"
networks = ["127.0.0.3/32"]
[groups.pupils.categories]
games = "block"
social-media = "block"
"""


def test_a_device_nobody_identified_gets_the_strictest_group(gateway_factory, upstream):
    gateway = gateway_factory(UNKNOWN_POLICY)
    assert curl(gateway, "http://games.test/", source_ip="127.0.0.2").status == 200  # staff, by network
    assert curl(gateway, "http://games.test/", source_ip="127.0.0.9").status == 403  # on no network: pupils' rules
    assert rows(gateway, "client_ip", "group_name", "identity_source") == [
        ("127.0.0.2", "staff", "network"), ("127.0.0.9", "pupils", "unknown")]


RADCLIENT = shutil.which("radclient")

ACCOUNTING_POLICY = """\
[accounting]
secret_file = "SECRET"
clients = ["127.0.0.1"]
listen_address = "127.0.0.1"
port = PORT

[groups.wifi]
title = "Wi-Fi devices"
networks = ["127.0.0.0/8"]

[groups.year7]
title = "Year 7"
users = ["amy.b"]
[groups.year7.categories]
games = "block"
"""


@pytest.mark.skipif(RADCLIENT is None, reason="radclient is not installed (apt-get install freeradius-utils)")
def test_a_wifi_controller_names_the_user_on_an_address(gateway_factory, upstream, tmp_path):
    secret = tmp_path / "radius.secret"
    secret.write_text("controller-secret\n")
    (port,) = free_ports(1)
    gateway = gateway_factory(ACCOUNTING_POLICY.replace("SECRET", str(secret)).replace("PORT", str(port)))

    def account(status: str) -> bool:
        done = subprocess.run([RADCLIENT, "-r", "2", "-t", "2", f"127.0.0.1:{port}", "acct", "controller-secret"],
                              input=f"User-Name = amy.b@school.test, Framed-IP-Address = 127.0.0.7, "
                                    f"Acct-Status-Type = {status}", capture_output=True, text=True)
        return done.returncode == 0

    wait_for(lambda: account("Start"), timeout=20)
    assert curl(gateway, "http://games.test/", source_ip="127.0.0.7").status == 403  # amy.b: year7 blocks games
    assert account("Stop")
    assert curl(gateway, "http://games.test/", source_ip="127.0.0.7").status == 200  # back to the Wi-Fi group
    assert "amy.b" not in gateway.log_text()
    assert rows(gateway, "username", "group_name", "identity_source") == [
        ("amy.b", "year7", "accounting"), (None, "wifi", "network")]
