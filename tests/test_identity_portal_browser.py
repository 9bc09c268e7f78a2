"""The sign-in page in headless Chromium through a real mitmdump: an unsigned device is
sent to the page, signs in with a password or with OpenID Connect (a real provider on
loopback signing real JWTs), lands where it was going, and is recorded by name."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from support.oidc_provider import CLIENT_ID, Provider

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

POLICY = """\
[gateway]
default_group = "byod"
internal_destinations = ["ISSUER_HOST"]  # the test's provider runs on loopback

[auth]
htpasswd = "HTPASSWD"

[portal]
host = "signin.test"
session_hours = 2

[portal.oidc]
issuer = "ISSUER"
client_id = "CLIENT"
allowed_domains = ["school.test"]

[groups.byod]
title = "Visitors and own devices"
networks = ["127.0.0.0/8"]
require_auth = true
"""


@pytest.fixture
def provider() -> Iterator[Provider]:
    with Provider() as p:
        yield p


@pytest.fixture
def gateway(gateway_factory, upstream, provider, tmp_path):
    htpasswd = tmp_path / "users.htpasswd"
    htpasswd.write_text(f"amy.b:{bcrypt.hashpw(b'amy-pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    policy = (POLICY.replace("HTPASSWD", str(htpasswd)).replace("ISSUER_HOST", provider.issuer.split("//")[1])
              .replace("ISSUER", provider.issuer).replace("CLIENT", CLIENT_ID))
    return gateway_factory(policy, options={"flow_detail": 0})


@pytest.fixture
def browser(gateway) -> Iterator[object]:
    with playwright_api.sync_playwright() as p, tempfile.TemporaryDirectory(prefix="sg-chromium-") as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, ignore_https_errors=True,
            proxy={"server": gateway.proxy_url}, args=["--no-sandbox", "--disable-gpu"])
        context.set_default_timeout(20_000)
        yield context
        context.close()


def records(gateway) -> list[tuple]:
    gateway.stop()
    with sqlite3.connect(gateway.db_path) as db:
        return db.execute("SELECT username, identity_source, host, verdict FROM access_log ORDER BY seq").fetchall()


def test_an_unsigned_device_signs_in_with_a_password_and_goes_on(gateway, browser):
    page = browser.new_page()
    page.goto("http://allowed.test/homework")
    assert page.url.startswith("https://signin.test/")
    page.get_by_label("User name").fill("amy.b")
    page.get_by_label("Password").fill("amy-pw")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("http://allowed.test/homework")
    assert "allowed.test" in page.content()
    page.goto("https://signin.test/")
    assert "signed in as amy.b" in page.inner_text("main").replace("\n", " ")
    assert ("amy.b", "portal", "allowed.test", "allow") in records(gateway)


def test_an_unsigned_device_signs_in_with_openid_connect(gateway, browser, provider):
    page = browser.new_page()
    page.goto("http://allowed.test/news")
    page.get_by_role("link", name="Sign in with your school account").click()
    page.wait_for_url("http://allowed.test/news")
    assert provider.token_requests and provider.token_requests[-1]["code_verifier"]
    assert ("amy.b", "portal", "allowed.test", "allow") in records(gateway)
