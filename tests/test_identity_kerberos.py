"""Kerberos single sign-on against a real MIT KDC started for these tests: a real ticket
(kinit) and a real Negotiate client (curl --proxy-negotiate) through a real mitmdump.
Basic stays for everyone else; a replayed or forged token signs nobody in."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys

import bcrypt
import pytest

from schoolgate.addons.kerberos import BadTicket, Negotiate
from schoolgate.identities import Source
from schoolgate.policy import KerberosSettings

from support.clients import curl
from support.kdc import Kdc, curl_negotiate, unavailable
from support.slapd import BASE, SERVICE_DN, Slapd
from support.slapd import unavailable as slapd_unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

POLICY = """\
[gateway]
default_group = "library"

[auth]
htpasswd = "HTPASSWD"

[kerberos]
keytab = "KEYTAB"
service = "HTTP/localhost"

[groups.library]
title = "Library"
networks = ["127.0.0.0/8", "::1/128"]
require_auth = true
"""


@pytest.fixture(scope="module")
def kdc(tmp_path_factory):
    server = Kdc(tmp_path_factory.mktemp("kdc")).start()
    yield server
    server.stop()


@pytest.fixture
def realm(kdc, monkeypatch):
    """The gateway (and this process) use the test realm's krb5.conf."""
    for name, value in kdc.env.items():
        monkeypatch.setenv(name, value)
    return kdc


def token_for(kdc, principal: str) -> str:
    """A real SPNEGO/Kerberos token for HTTP/localhost, made with a real ticket in another process."""
    code = ("import gssapi, base64; n = gssapi.Name('HTTP@localhost', gssapi.NameType.hostbased_service); "
            "print(base64.b64encode(gssapi.SecurityContext(name=n, usage='initiate').step()).decode())")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **kdc.kinit(principal)},
                          capture_output=True, text=True, check=True)
    return "Negotiate " + done.stdout.strip()


def test_a_real_ticket_names_the_user_and_a_replay_does_not(realm):
    negotiate = Negotiate(KerberosSettings(keytab=realm.keytab, service="HTTP/localhost"))
    header = token_for(realm, "amy.b")
    identity = negotiate.accept(header)
    assert (identity.user, identity.source) == ("amy.b", Source.KERBEROS)
    with pytest.raises(BadTicket):
        negotiate.accept(header)  # the same authenticator again: the replay cache refuses it
    assert negotiate.accept(token_for(realm, "Ann.Lee")).user == "ann.lee"  # named as every other source names her
    with pytest.raises(BadTicket):
        negotiate.accept("Negotiate " + base64.b64encode(b"NTLMSSP\0\x01\0\0\0").decode())
    with pytest.raises(BadTicket):
        negotiate.accept("Negotiate " + base64.b64encode(os.urandom(64)).decode())


def test_curl_signs_in_with_kerberos_through_the_gateway_and_basic_still_works(realm, gateway_factory, upstream, tmp_path):
    htpasswd = tmp_path / "users.htpasswd"
    htpasswd.write_text(f"visitor:{bcrypt.hashpw(b'visitor-pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    gateway = gateway_factory(POLICY.replace("HTPASSWD", str(htpasswd)).replace("KEYTAB", str(realm.keytab)))
    refused = curl(gateway, "http://allowed.test/")
    assert refused.status == 407 and "Negotiate" in refused.headers["proxy-authenticate"]
    status, stderr = curl_negotiate(gateway.proxy_port, "http://allowed.test/kerberos", realm.kinit("amy.b"), gateway.ca_cert)
    assert status == 200, stderr
    status, stderr = curl_negotiate(gateway.proxy_port, "https://allowed.test/kerberos-tls", realm.kinit("mr.smith"), gateway.ca_cert)
    assert status == 200, stderr
    assert curl(gateway, "http://allowed.test/basic", user="visitor", password="visitor-pw").status == 200
    gateway.stop()
    with sqlite3.connect(gateway.db_path) as db:
        rows = {(r[0], r[1]) for r in db.execute("SELECT username, identity_source FROM access_log WHERE verdict = 'allow'")}
    assert rows == {("amy.b", "kerberos"), ("mr.smith", "kerberos"), ("visitor", "proxy-basic")}


@pytest.mark.skipif(slapd_unavailable() is not None, reason=slapd_unavailable() or "")
def test_a_kerberos_users_groups_come_from_the_directory(realm, gateway_factory, upstream, tmp_path_factory):
    slapd = Slapd(tmp_path_factory.mktemp("slapd")).start()
    try:
        policy = f"""\
[kerberos]
keytab = "{realm.keytab}"

[directory]
url = "{slapd.url}"
bind_dn = "{SERVICE_DN}"
bind_password_file = "{slapd.service_password_file}"
user_base = "{BASE}"
group_base = "ou=groups,{BASE}"

[groups.library]
title = "Library"
networks = ["127.0.0.0/8", "::1/128"]
require_auth = true

[groups.year7]
title = "Year 7"
directory_groups = ["year7"]
[groups.year7.categories]
games = "block"
"""
        gateway = gateway_factory(policy)
        status, stderr = curl_negotiate(gateway.proxy_port, "http://games.test/", realm.kinit("amy.b"), gateway.ca_cert)
        assert status == 403, stderr  # year7 blocks games: the group came from the directory
        status, stderr = curl_negotiate(gateway.proxy_port, "http://games.test/", realm.kinit("mr.smith"), gateway.ca_cert)
        assert status == 200, stderr  # a teacher: in no mapped group, so the library's network rules
        gateway.stop()
    finally:
        slapd.stop()
    with sqlite3.connect(gateway.db_path) as db:
        rows = db.execute("SELECT username, group_name, identity_source FROM access_log ORDER BY seq").fetchall()
    assert rows == [("amy.b", "year7", "kerberos"), ("mr.smith", "library", "kerberos")]
