"""The sign-in page: directory/htpasswd passwords and OpenID Connect (code flow with PKCE)
against a real OIDC provider on loopback signing real JWTs. Requests are mitmproxy test
flows handed to the portal; the provider is reached over real HTTP."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from schoolgate.addons.identity import HtpasswdBackend, ProxyLogin
from schoolgate.addons.oidc import OidcClient, OidcError
from schoolgate.addons.portal import CSRF_COOKIE, PortalPages, School, portal_url
from schoolgate.identities import AddressSessions, Identity, Source
from schoolgate.policy import OidcSettings, PortalSettings

from support.oidc_provider import CLIENT_ID, Provider

SCHOOL = School("Test School", "it@school.test")
PUPIL = "10.30.0.7"


@pytest.fixture
def provider():
    with Provider() as p:
        yield p


@pytest.fixture
def htpasswd(tmp_path):
    path = tmp_path / "users.htpasswd"
    path.write_text(f"amy.b:{bcrypt.hashpw(b'amy-pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    return HtpasswdBackend(path)


@pytest.fixture
def portal():
    return PortalPages(AddressSessions(), ProxyLogin())


def flow(url: str, method: str = "GET", body: str = "", cookie: str | None = None) -> http.HTTPFlow:
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if method == "POST" else {}
    if cookie:
        headers["Cookie"] = f"{CSRF_COOKIE}={cookie}"
    return tflow.tflow(req=http.Request.make(method, url, body, headers))


def answer(portal, f, settings, backends=(), ip=PUPIL) -> http.Response:
    asyncio.run(portal.answer(f, ip, settings, list(backends), SCHOOL))
    assert f.response is not None
    return f.response


def csrf_of(response: http.Response) -> str:
    return response.headers["set-cookie"].split(";")[0].split("=", 1)[1]


def test_password_sign_in_names_the_device_and_goes_back(portal, htpasswd):
    settings = PortalSettings(host="signin.test")
    page = answer(portal, flow(portal_url(settings, "https://www.bbc.co.uk/news")), settings, [htpasswd])
    assert page.status_code == 200 and b'name="password"' in page.content
    token = csrf_of(page)
    assert f'value="{token}"'.encode() in page.content and b"https://www.bbc.co.uk/news" in page.content
    signed = answer(portal, flow("https://signin.test/sign-in", "POST",
                                 f"csrf={token}&user=amy.b&password=amy-pw&to=https%3A%2F%2Fwww.bbc.co.uk%2Fnews", token),
                    settings, [htpasswd])
    # A page that goes on by itself (a form's redirect to another site would meet the page's form-action rule).
    assert signed.status_code == 200 and b'content="0;url=https://www.bbc.co.uk/news"' in signed.content
    assert portal.sessions.get(PUPIL) == Identity("amy.b", Source.PORTAL)
    # Signing out ends it.
    out = answer(portal, flow("https://signin.test/sign-out", "POST", f"csrf={token}", token), settings, [htpasswd])
    assert out.status_code == 200 and portal.sessions.get(PUPIL) is None


def test_wrong_passwords_and_forms_from_elsewhere_sign_nobody_in(portal, htpasswd):
    settings = PortalSettings(host="signin.test")
    token = csrf_of(answer(portal, flow("https://signin.test/"), settings, [htpasswd]))
    wrong = answer(portal, flow("https://signin.test/sign-in", "POST", f"csrf={token}&user=amy.b&password=nope", token),
                   settings, [htpasswd])
    assert wrong.status_code == 401 and b"Wrong user name or password" in wrong.content
    # Another site posting to the portal has no cookie (SameSite=Strict) and cannot know the token.
    forged = answer(portal, flow("https://signin.test/sign-in", "POST", "csrf=x&user=amy.b&password=amy-pw"),
                    settings, [htpasswd])
    assert b"expired" in forged.content and portal.sessions.get(PUPIL) is None
    # Guessing here counts like proxy sign-in: the sixth wrong guess is not checked.
    for n in range(5):
        answer(portal, flow("https://signin.test/sign-in", "POST", f"csrf={token}&user=amy.b&password=g{n}", token),
               settings, [htpasswd], ip="10.30.0.8")
    checks = portal.login.checks
    locked = answer(portal, flow("https://signin.test/sign-in", "POST", f"csrf={token}&user=amy.b&password=amy-pw", token),
                    settings, [htpasswd], ip="10.30.0.8")
    assert b"Too many" in locked.content and portal.login.checks == checks


def test_the_page_escapes_what_it_echoes(portal):
    settings = PortalSettings(host="signin.test")
    page = answer(portal, flow('https://signin.test/?to=https://x.test/"><script>alert(1)</script>'), settings)
    assert b"<script>alert(1)" not in page.content
    bad = answer(portal, flow("https://signin.test/?to=javascript:alert(1)"), settings)
    assert b"javascript:" not in bad.content


def oidc_settings(provider, **kw) -> PortalSettings:
    kw.setdefault("allowed_domains", ("school.test",))
    return PortalSettings(host="signin.test", passwords=False,
                          oidc=OidcSettings(issuer=provider.issuer, client_id=CLIENT_ID, **kw))


def oidc_round(portal, provider, settings, *, start_ip=PUPIL, callback_ip=PUPIL) -> http.Response:
    start = answer(portal, flow("https://signin.test/oidc?to=https%3A%2F%2Fwww.bbc.co.uk%2F"), settings, ip=start_ip)
    assert start.status_code == 302
    authorize = start.headers["location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["redirect_uri"] == ["https://signin.test/callback"]
    back = httpx.get(authorize, follow_redirects=False)  # the provider signs the user in and sends the browser back
    assert back.status_code == 302
    return answer(portal, flow(back.headers["location"]), settings, ip=callback_ip)


def test_openid_connect_sign_in_with_pkce(portal, provider):
    settings = oidc_settings(provider, allowed_domains=("school.test",))
    done = oidc_round(portal, provider, settings)
    assert done.status_code == 303 and done.headers["location"] == "https://www.bbc.co.uk/"
    assert portal.sessions.get(PUPIL) == Identity("amy.b", Source.PORTAL, frozenset({"year7"}))
    # The provider checked the PKCE verifier against the challenge (it refuses a wrong one).
    assert provider.token_requests[-1]["code_verifier"]


@pytest.mark.parametrize("forge", ["key", "audience", "nonce", "expired", "issuer"])
def test_a_forged_or_misdirected_id_token_signs_nobody_in(portal, provider, forge):
    provider.forge = forge
    refused = oidc_round(portal, provider, oidc_settings(provider))
    assert b"did not work" in refused.content and portal.sessions.get(PUPIL) is None


def test_a_callback_on_another_device_or_an_outside_account_is_refused(portal, provider):
    settings = oidc_settings(provider, allowed_domains=("school.test",))
    other = oidc_round(portal, provider, settings, callback_ip="10.30.0.99")
    assert b"did not work" in other.content and portal.sessions.get("10.30.0.99") is None
    provider.next_user = {"preferred_username": "someone@gmail.test"}
    outside = oidc_round(portal, provider, settings)
    assert b"did not work" in outside.content and portal.sessions.get(PUPIL) is None


def test_without_allowed_domains_no_outside_account_passes_for_a_school_user(portal, provider):
    # Any account at the provider (a gmail address) would otherwise sign in as the school's amy.b.
    provider.next_user = {"preferred_username": "amy.b@gmail.test"}
    refused = oidc_round(portal, provider, oidc_settings(provider, allowed_domains=()))
    assert b"did not work" in refused.content and portal.sessions.get(PUPIL) is None
    # The school's own account, in whatever case the provider spells it, is the one user.
    provider.next_user = {"preferred_username": "Amy.B@School.Test"}
    oidc_round(portal, provider, oidc_settings(provider))
    assert portal.sessions.get(PUPIL) == Identity("amy.b", Source.PORTAL)


def test_signing_out_of_the_page_ends_only_the_session_the_page_made(portal, htpasswd):
    settings = PortalSettings(host="signin.test")
    # The Wi-Fi controller (RADIUS accounting) says ben is on this device; the page did not sign him in.
    wifi = Identity("ben.c", Source.ACCOUNTING)
    portal.sessions.start(PUPIL, wifi, 3600, "10.0.0.250")
    token = csrf_of(answer(portal, flow("https://signin.test/"), settings, [htpasswd]))
    answer(portal, flow("https://signin.test/sign-out", "POST", f"csrf={token}", token), settings, [htpasswd])
    assert portal.sessions.get(PUPIL) == wifi  # a pupil cannot shed the Wi-Fi's name for the device by signing out


def test_sign_ins_started_and_never_finished_are_bounded_oldest_first(provider):
    clock = [1000.0]
    client = OidcClient(oidc_settings(provider).oidc, clock=lambda: clock[0])
    client.MAX_PENDING = 3

    def start(n: int) -> str:
        location = asyncio.run(client.start(PUPIL, "https://signin.test/callback", "https://x.test/" + "a" * n))
        return parse_qs(urlsplit(location).query)["state"][0]

    states = [start(n) for n in range(5)]  # a pupil starting sign-ins as fast as they like
    assert list(client._pending) == states[2:]
    clock[0] += 600  # ten minutes on, every unfinished one has lapsed
    fresh = start(0)
    assert list(client._pending) == [fresh]


def test_one_device_cannot_push_out_everyone_elses_sign_ins(provider):
    client = OidcClient(oidc_settings(provider).oidc)
    client.MAX_PENDING_PER_DEVICE = 2

    def start(ip: str) -> str:
        location = asyncio.run(client.start(ip, "https://signin.test/callback", ""))
        return parse_qs(urlsplit(location).query)["state"][0]

    first, _ = start(PUPIL), start(PUPIL)
    with pytest.raises(OidcError):
        start(PUPIL)  # the flooding device is refused; others are not
    other = start("10.30.0.8")
    with pytest.raises(OidcError):
        asyncio.run(client.finish(PUPIL, first, "wrong-code"))  # finished (here, refused): no longer held
    start(PUPIL)
    assert other in client._pending


def test_an_overlong_place_to_go_back_to_is_not_kept_with_the_sign_in(portal, provider):
    settings = oidc_settings(provider)
    answer(portal, flow("https://signin.test/oidc?to=https%3A%2F%2Fx.test%2F" + "a" * 5000), settings)
    answer(portal, flow("https://signin.test/oidc?to=https%3A%2F%2Fx.test%2Fshort"), settings)
    assert [p.back_to for p in portal.oidc(settings)._pending.values()] == ["", "https://x.test/short"]
