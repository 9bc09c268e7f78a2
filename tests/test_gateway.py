"""The request path end to end: a real mitmdump with the schoolgate add-on,
real curl and httpx clients, real loopback HTTP and HTTPS servers, real SQLite.

Client addresses put clients in groups: 127.0.0.2 is primary, 127.0.0.3 (and
127.0.0.1) secondary, 127.0.0.4 the library, which must log in.
"""

from __future__ import annotations

import re
import sqlite3
import ssl
from pathlib import Path

import bcrypt
import httpx
import pytest

from support.clients import curl, httpx_client
from support.upstream import expected_body
from support.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]

POLICY = """\
[school]
name = "Test <School> & Co"
contact = "it@school.test"

[gateway]
database = "{database}"
metrics_port = {metrics_port}
default_group = "secondary"

[tls]
intercept = true
no_intercept_categories = ["banking"]
no_intercept_domains = ["casino.test"]

[auth]
htpasswd = "HTPASSWD"

[local]
allow = ["ok.adult.test"]
block = ["blocked-local.test", "allowed.test/forbidden"]

[categories]
pornography = "block"
gambling = "block"

[groups.primary]
title = "Primary"
networks = ["127.0.0.2/32"]
[groups.primary.categories]
games = "block"

[groups.secondary]
title = "Secondary"
networks = ["127.0.0.1/32", "127.0.0.3/32"]
[groups.secondary.categories]
games = "warn"

[groups.library]
title = "Library"
networks = ["127.0.0.4/32"]
require_auth = true

[groups.staff]
title = "Staff"
users = ["alice"]
[groups.staff.categories]
games = "allow"
"""


@pytest.fixture
def policy(tmp_path) -> str:
    """POLICY with a real htpasswd file (bcrypt) for alice and bob."""
    lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}" for user, pw in
             [("alice", "correct horse"), ("bob", "battery staple")]]
    path = tmp_path / "users.htpasswd"
    path.write_text("\n".join(lines) + "\n")
    return POLICY.replace("HTPASSWD", str(path))


@pytest.fixture
def gateway(gateway_factory, policy):
    return gateway_factory(policy, options={"schoolgate_reload_ms": 200})


def records(gw) -> list[dict]:
    """Every access record, read with plain sqlite3 after the gateway has flushed."""
    with sqlite3.connect(gw.db_path) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM access_log ORDER BY instance, seq")]


def test_allowed_http_and_https_reach_upstream_and_are_recorded(gateway, upstream):
    plain = curl(gateway, "http://allowed.test/page?q=1")
    assert plain.status == 200 and plain.body == expected_body("allowed.test", "/page", "q=1")
    with httpx_client(gateway) as client:
        secure = client.get("https://allowed.test/secure")
    assert secure.status_code == 200 and secure.content == expected_body("allowed.test", "/secure")
    assert [r.path for r in upstream.requests_for("allowed.test")] == ["/page", "/secure"]
    assert "proxy-authorization" not in upstream.requests_for("allowed.test")[0].headers

    gateway.stop()
    rows = records(gateway)
    assert [(r["method"], r["url"], r["verdict"], r["status"], r["group_name"], r["client_ip"]) for r in rows] == [
        ("GET", "http://allowed.test/page?q=1", "allow", 200, "secondary", "127.0.0.1"),
        ("GET", "https://allowed.test/secure", "allow", 200, "secondary", "127.0.0.1"),
    ]
    assert rows[0]["bytes_out"] == len(plain.body) and rows[0]["rule"] == "default"
    assert [r["seq"] for r in rows] == [1, 2]
    # Who visited what is in the database, never in the service journal.
    assert "allowed.test" not in gateway.log_text() and "/page" not in gateway.log_text()


def test_category_block_shows_block_page_and_never_contacts_the_site(gateway, upstream):
    result = curl(gateway, "http://adult.test/<script>alert(1)</script>", "--path-as-is")
    assert result.status == 403
    page = result.text
    assert "This page is blocked" in page and "Pornography" in page
    assert "Test &lt;School&gt; &amp; Co" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    reference = result.headers["x-schoolgate-reference"]
    assert re.fullmatch(r"SG-[0-9A-Z]{4}-[0-9A-Z]{4}", reference) and reference in page

    with httpx_client(gateway) as client:  # HTTPS, intercepted: the pupil sees the page too
        secure = client.get("https://www.adult.test/")
    assert secure.status_code == 403 and "This page is blocked" in secure.text

    assert upstream.requests_for("adult.test") == [] and upstream.requests_for("www.adult.test") == []
    assert gateway.upstream_connections("adult.test") == [] and gateway.upstream_connections("www.adult.test") == []

    gateway.stop()
    blocked = [r for r in records(gateway) if r["verdict"] == "block"]
    assert len(blocked) == 2
    assert blocked[0]["ref"] == reference and blocked[0]["status"] == 403
    assert blocked[0]["categories"] == ",pornography," and blocked[0]["rule"] == "category pornography:adult.test"


def test_local_lists_block_and_allow_over_categories(gateway, upstream):
    assert curl(gateway, "http://blocked-local.test/").status == 403
    forbidden = curl(gateway, "http://allowed.test/Forbidden/x")
    assert forbidden.status == 403 and "allowed.test/forbidden is on the school" in forbidden.text
    assert curl(gateway, "http://allowed.test/fine").status == 200
    # Listed as pornography, allowed locally: allowed by name, so passed through undecrypted
    # (the site's own certificate, which this client does not check).
    allowed = curl(gateway, "https://ok.adult.test/", "--insecure")
    assert allowed.status == 200 and allowed.body == expected_body("ok.adult.test", "/")

    gateway.stop()
    rules = [(r["host"], r["verdict"], r["rule"]) for r in records(gateway)]
    assert rules == [
        ("blocked-local.test", "block", "local-block blocked-local.test"),
        ("allowed.test", "block", "local-block allowed.test/forbidden"),
        ("allowed.test", "allow", "default"),
        ("ok.adult.test", "allow", "local-allow ok.adult.test (not decrypted)"),
    ]


def test_two_groups_by_network_get_different_verdicts(gateway, upstream):
    primary = curl(gateway, "http://games.test/", source_ip="127.0.0.2")
    secondary = curl(gateway, "http://games.test/", source_ip="127.0.0.3")
    assert primary.status == 403 and primary.headers["x-schoolgate-verdict"] == "block"
    assert secondary.status == 403 and secondary.headers["x-schoolgate-verdict"] == "warn"
    gateway.stop()
    assert [(r["client_ip"], r["group_name"], r["verdict"]) for r in records(gateway)] == [
        ("127.0.0.2", "primary", "block"),
        ("127.0.0.3", "secondary", "warn"),
    ]


def test_warning_can_be_acknowledged_and_that_is_recorded(gateway, upstream):
    with httpx_client(gateway, source_ip="127.0.0.3") as client:
        warning = client.get("https://games.test/play?level=2")
        assert warning.status_code == 403 and "Think before you continue" in warning.text
        assert upstream.requests_for("games.test") == []
        link = re.search(r'href="([^"]+)"', warning.text).group(1).replace("&amp;", "&")
        forged = client.get("https://games.test" + link.replace("sig=", "sig=0"), follow_redirects=False)
        assert forged.status_code == 400

        proceed = client.get("https://games.test" + link, follow_redirects=False)
        assert proceed.status_code == 303 and proceed.headers["location"] == "https://games.test/play?level=2"
        page = client.get(proceed.headers["location"])
        assert page.status_code == 200 and page.content == expected_body("games.test", "/play", "level=2")
        # Another pupil has not acknowledged anything.
    with httpx_client(gateway, source_ip="127.0.0.1") as other:
        assert other.get("https://games.test/play").status_code == 403

    gateway.stop()
    assert [(r["client_ip"], r["verdict"], r["status"]) for r in records(gateway)] == [
        ("127.0.0.3", "warn", 403),
        ("127.0.0.3", "proceed", 303),
        ("127.0.0.3", "allow", 200),
        ("127.0.0.1", "warn", 403),
    ]
    assert records(gateway)[2]["rule"] == "category games:games.test (warning acknowledged)"


def test_no_intercept_category_passes_through_undecrypted_but_is_logged(gateway, upstream):
    # Trusting only the upstream's own certificate proves the gateway did not decrypt.
    with httpx.Client(proxy=gateway.proxy_url, verify=ssl.create_default_context(cafile=upstream.cert_path)) as client:
        response = client.get("https://bank.test/account")
    assert response.status_code == 200
    (seen,) = upstream.requests_for("bank.test")
    assert seen.sni == "bank.test"
    with pytest.raises(httpx.ConnectError):  # and the school CA is not what it presented
        with httpx_client(gateway) as client:
            client.get("https://bank.test/account")

    gateway.stop()
    (row, *_) = records(gateway)
    assert (row["method"], row["host"], row["port"], row["verdict"], row["categories"]) == (
        "CONNECT", "bank.test", 443, "allow", ",banking,")
    assert row["url"] == "https://bank.test/"  # the path is encrypted: the gateway cannot see it


def test_blocked_https_is_refused_at_connect_before_any_upstream_connection(gateway, upstream):
    result = curl(gateway, "https://casino.test/roulette")
    assert result.exit_code == 56 and result.connect_status == 403
    assert gateway.upstream_connections("casino.test") == [] and upstream.requests_for("casino.test") == []
    gateway.stop()
    (row,) = records(gateway)
    assert (row["method"], row["verdict"], row["status"], row["categories"]) == ("CONNECT", "block", 403, ",gambling,")
    assert row["ref"] == result.headers["x-schoolgate-reference"]


def test_proxy_authentication_names_the_user(gateway, upstream):
    assert curl(gateway, "http://games.test/", user="alice", password="correct horse").status == 200  # staff
    assert curl(gateway, "https://allowed.test/", user="bob", password="battery staple").status == 200
    wrong = curl(gateway, "http://allowed.test/", user="alice", password="wrong")
    assert wrong.status == 407 and "proxy-authenticate" in wrong.headers
    assert curl(gateway, "http://allowed.test/", source_ip="127.0.0.4").status == 407  # library must log in
    assert curl(gateway, "http://allowed.test/", source_ip="127.0.0.4", user="bob", password="battery staple").status == 200
    assert upstream.requests_for("games.test")[0].headers.get("proxy-authorization") is None

    gateway.stop()
    assert [(r["username"], r["group_name"], r["host"], r["verdict"]) for r in records(gateway)] == [
        ("alice", "staff", "games.test", "allow"),
        ("bob", "secondary", "allowed.test", "allow"),
        (None, "secondary", "allowed.test", "block"),  # the wrong password: a refused sign-in is recorded
        ("bob", "library", "allowed.test", "allow"),
    ]
    assert "correct horse" not in gateway.log_text() and "battery staple" not in gateway.log_text()


def test_broken_policy_edit_keeps_the_last_good_policy_then_a_fix_applies(gateway, policy, upstream):
    assert curl(gateway, "http://blocked-local.test/").status == 403
    gateway.write_policy(policy.replace('[categories]', '[categories]\ngames = "sometimes"'))
    wait_for(lambda: "policy change refused" in gateway.log_text())
    assert "categories.games = 'sometimes' is not an action" in gateway.log_text()
    assert gateway.metric("schoolgate_policy_last_load_ok") == 0
    assert gateway.metric("schoolgate_policy_reloads_total", result="failed") == 1
    assert curl(gateway, "http://blocked-local.test/").status == 403  # still enforced

    gateway.write_policy(policy.replace('block = ["blocked-local.test", ', 'block = ['))
    wait_for(lambda: gateway.metric("schoolgate_policy_last_load_ok") == 1)
    assert curl(gateway, "http://blocked-local.test/").status == 200
    assert gateway.metric("schoolgate_policy_reloads_total", result="ok") == 2


def test_metrics_count_decisions_without_personal_data(gateway, upstream):
    curl(gateway, "http://adult.test/")
    curl(gateway, "http://adult.test/again")
    curl(gateway, "http://allowed.test/", user="alice", password="correct horse")
    assert gateway.metric("schoolgate_requests_total", group="secondary", verdict="block", category="pornography") == 2
    assert gateway.metric("schoolgate_requests_total", group="staff", verdict="allow", category="none") == 1
    assert gateway.metric("schoolgate_decision_seconds_count") == 3
    assert gateway.metric("schoolgate_list_entries", category="pornography") >= 1
    assert gateway.metric("schoolgate_records_dropped_total") == 0
    text = httpx.get(gateway.metrics_url).text
    for personal in ("alice", "127.0.0.1", "adult.test", "/again"):
        assert personal not in text


def test_url_logging_can_leave_out_paths(gateway_factory, policy, upstream):
    gw = gateway_factory(policy.replace("[gateway]", '[gateway]\nlog_urls = "path-less"'))
    curl(gw, "http://allowed.test/private/diary?name=x")
    gw.stop()
    (row,) = records(gw)
    assert row["url"] == "http://allowed.test" and row["host"] == "allowed.test"


def test_odd_requests_get_clear_errors(gateway, upstream):
    bad_host = curl(gateway, "http://allowed.test/", "-H", "Host: bad..host")
    assert bad_host.status == 400 and "not a valid host name" in bad_host.text
    fronted = curl(gateway, "http://allowed.test/", "-H", "Host: adult.test")  # Host header fronting
    assert fronted.status == 403
    ip = curl(gateway, "http://[2001:db8::1]:9/")  # IP literal, nothing listening: decided, then a gateway error
    assert ip.status == 502


def test_tls_name_is_decided_too_so_sni_cannot_hide_behind_a_passthrough_connect(gateway, upstream):
    # CONNECT names a bank (passed through undecrypted); the TLS handshake asks for
    # casino.test, blocked and itself on the no-intercept list. Deciding the CONNECT
    # name alone would tunnel it through; a blocked name is decrypted and refused.
    result = curl(gateway, "https://casino.test/", "--connect-to", "casino.test:443:bank.test:443")
    assert result.status == 403 and "This page is blocked" in result.text
    assert upstream.requests == []
    gateway.stop()
    (row,) = records(gateway)
    assert (row["host"], row["verdict"], row["categories"]) == ("casino.test", "block", ",gambling,")


def test_device_without_the_school_ca_is_recorded(gateway, upstream):
    result = curl(gateway, "https://allowed.test/", "--cacert", str(upstream.cert_path))
    assert result.exit_code == 60  # curl: peer certificate cannot be authenticated
    assert upstream.requests_for("allowed.test") == []
    gateway.stop()
    (row,) = records(gateway)
    assert row["method"] == "CONNECT" and row["host"] == "allowed.test"
    assert "does this device trust the school certificate?" in row["rule"]


def test_a_new_category_index_is_picked_up_while_serving(gateway_factory, policy, upstream, tmp_path):
    from schoolgate.cli import main

    index = tmp_path / "categories.idx"
    extra = tmp_path / "school-games.txt"
    extra.write_text("fun.test\n")
    indexed = policy.replace("[local]", f'[lists]\nindex = "{index}"\n\n[local]')
    gw = gateway_factory(indexed, options={"schoolgate_reload_ms": 200})
    assert curl(gw, "http://fun.test/").status == 200  # no index yet: the built-in list
    assert curl(gw, "http://adult.test/").status == 403

    assert main(["lists", "update", "--policy", str(gw.policy_path), "--source", str(REPO / "tests/fixtures/ut1"),
                 "--extra", f"{extra}:gambling", "--output", str(index)]) == 0
    wait_for(lambda: curl(gw, "http://fun.test/").status == 403)
    assert curl(gw, "http://casino.example/").status == 403  # from the UT1 fixture (gambling)
    assert curl(gw, "http://adult.test/").status == 403  # the built-in list is compiled in too
    assert curl(gw, "http://allowed.test/").status == 200


def test_warning_acknowledged_on_one_gateway_holds_on_another_and_never_reaches_the_site(gateway_factory, policy, upstream, tmp_path):
    shared = policy.replace("[gateway]", f'[gateway]\nsecret_file = "{tmp_path / "gateway.secret"}"')
    first, second = gateway_factory(shared), gateway_factory(shared)
    with httpx_client(first, source_ip="127.0.0.3") as client:
        warning = client.get("https://games.test/play", headers={"Cookie": "session=abc"})
        link = re.search(r'href="([^"]+)"', warning.text).group(1).replace("&amp;", "&")
        assert client.get("https://games.test" + link, follow_redirects=False).status_code == 303
        cookies = client.cookies
    with httpx_client(second, source_ip="127.0.0.3", cookies=cookies) as client:
        page = client.get("https://games.test/play", headers={"Cookie": f"session=abc; schoolgate_ack={cookies['schoolgate_ack']}"})
        assert page.status_code == 200
    with httpx_client(second, source_ip="127.0.0.1") as other:  # the cookie is bound to the pupil's device
        assert other.get("https://games.test/play", headers={"Cookie": f"schoolgate_ack={cookies['schoolgate_ack']}"}).status_code == 403
    (seen,) = upstream.requests_for("games.test")
    assert seen.headers["cookie"] == "session=abc"
