"""The review console end to end in headless Chromium (Debian's /usr/bin/chromium driven by
Playwright) over a database filled by a real gateway run: the DSL triages a flagged self-harm
search, a teacher is kept out of the flagged queue, wrong passwords are refused then throttled,
and the CSV export downloads; the queue puts the worst first, counts an episode's attempts,
closes a selection at once, says when records were lost and fits a phone. With
SCHOOLGATE_SCREENSHOTS=1 the main pages are saved to docs/screenshots/."""

from __future__ import annotations

import csv
import io
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from test_console import PASSWORDS as CONSOLE_PASSWORDS
from test_console import ConsoleServer, cli, create_accounts, flagged_search, store, write_policy
from test_records import make_record

from schoolgate.policy import load_policy

from support.browser import axe_violations
from support.clients import curl
from support.gateway import REPO

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The README's screenshots are refreshed only on request (SCHOOLGATE_SCREENSHOTS=1 ./dev test ...),
# so an ordinary test run leaves the working tree as it was.
SCREENSHOTS = REPO / "docs" / "screenshots" if os.environ.get("SCHOOLGATE_SCREENSHOTS") else None

POLICY = """\
[school]
name = "Example Academy"

[gateway]
database = "{database}"
metrics_port = {metrics_port}
default_group = "pupils"

[monitoring]
block_searches_at = "never"

[categories]
pornography = "block"

[groups.pupils]
title = "Pupils (secondary)"
networks = ["127.0.0.1/32"]
safe_search = true

[groups.staff]
title = "Staff"
networks = ["127.0.0.2/32"]

[exceptions]
teacher_groups = ["pupils"]

[console]
secret_file = "{dir}/console.secret"
"""

ACCOUNTS = {"j.lee": ("dsl", "Safeguarding-2026!"), "m.patel": ("teacher", "Teaching-2026!"),
            "it.office": ("it_admin", "Network-2026!")}


def add_accounts(policy, monkeypatch) -> None:
    """Every account in ACCOUNTS, made through the CLI as an administrator would (before Playwright
    starts: the CLI runs an event loop of its own)."""
    for name, (role, password) in ACCOUNTS.items():
        groups = ["--groups", "pupils"] if role == "teacher" else []
        assert cli(policy, "accounts", "add", name, "--role", role, *groups, stdin=password + "\n",
                   monkeypatch=monkeypatch) == 0


@pytest.fixture
def filled_by_gateway(gateway_factory, upstream, monkeypatch):
    """A real gateway run: a pupil's searches (one about self-harm) and browsing, and a staff request."""
    gw = gateway_factory(POLICY)

    def search(url: str, query: str, source_ip: str = "127.0.0.1") -> int:
        return curl(gw, url + quote_plus(query), source_ip=source_ip).status

    assert search("http://www.google.co.uk/search?q=", "history homework tudors") == 200
    assert curl(gw, "https://www.bbc.co.uk/bitesize").status == 200
    assert search("https://www.bing.com/search?q=", "how to kill myself") == 200  # flagged, not blocked
    assert curl(gw, "http://www.pornhub.com/").status == 403
    assert search("https://www.youtube.com/results?search_query=", "minecraft") == 200
    assert search("https://www.google.com/search?q=", "lesson plans", source_ip="127.0.0.2") == 200
    gw.stop()

    policy = load_policy(gw.policy_path)
    add_accounts(policy, monkeypatch)
    return policy


@pytest.fixture
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p, tempfile.TemporaryDirectory(prefix="sg-chromium-") as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, accept_downloads=True,
            viewport={"width": 1280, "height": 800}, locale="en-GB")
        context.set_default_timeout(15_000)
        yield context
        context.close()


def sign_in(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def sign_out(page) -> None:
    page.get_by_role("button", name="Sign out").click()


def shoot(page, name: str) -> None:
    directory = SCREENSHOTS or Path(tempfile.gettempdir()) / "schoolgate-screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(directory / f"{name}.png"), full_page=True)


def audit_actions(policy) -> list[tuple[str, str, str]]:
    with sqlite3.connect(policy.gateway.database.split("///", 1)[1]) as db:
        return [tuple(r) for r in db.execute("SELECT actor, role, action FROM audit_log ORDER BY id")]


def test_dsl_teacher_and_throttling_in_a_real_browser(filled_by_gateway, browser, tmp_path) -> None:
    policy = filled_by_gateway
    with ConsoleServer(policy) as server:
        base = server.url
        page = browser.new_page()
        page.goto(f"{base}/login")
        shoot(page, "login")

        # The DSL sees the flagged self-harm search in the queue.
        sign_in(page, base, "j.lee", ACCOUNTS["j.lee"][1])
        page.wait_for_url(f"{base}/incidents")
        row = page.get_by_role("row").filter(has_text="how to kill myself")
        playwright_api.expect(row).to_contain_text("self-harm")
        playwright_api.expect(row).to_contain_text("critical")
        playwright_api.expect(page.get_by_role("row").filter(has_text="history homework")).to_have_count(0)

        # Its context: the same pupil's other requests in the minutes around it.
        row.get_by_role("link").first.click()  # the time links to the incident; the who column to the device
        playwright_api.expect(page.get_by_role("heading", level=1)).to_contain_text("Self-harm")
        context = page.locator("section", has_text="Context:")
        for seen in ("history homework tudors", "www.bbc.co.uk/bitesize", "www.pornhub.com", "minecraft"):
            playwright_api.expect(context).to_contain_text(seen)
        playwright_api.expect(context).not_to_contain_text("lesson plans")  # a member of staff, not this pupil

        # Closed with a note, kept with who and when.
        page.get_by_label("Note").fill("Spoke to the pupil with their head of year; parents informed. Referred to Kooth.")
        page.get_by_label("Status").select_option("closed")
        page.get_by_role("button", name="Save").click()
        notes = page.locator("#notes")
        playwright_api.expect(notes).to_contain_text("Referred to Kooth.")
        playwright_api.expect(notes).to_contain_text("j.lee")
        playwright_api.expect(notes).to_contain_text("status new → closed")
        playwright_api.expect(notes.locator("time")).to_have_count(1)
        shoot(page, "incident")
        actions = [a for actor, role, a in audit_actions(policy) if (actor, role) == ("j.lee", "dsl")]
        assert actions[:4] == ["login.ok", "view.queue", "view.incident", "incident.closed"]

        # The export downloads valid CSV.
        page.goto(f"{base}/incidents?status=all")
        with page.expect_download() as download:
            page.get_by_role("link", name="Download CSV").click()
        saved = tmp_path / "export.csv"
        download.value.save_as(saved)
        rows = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8-sig"))))
        # The blocked pornography site is flagged by the gateway too.
        assert {(r["risk"], r["status"], r["search_term"], r["device"]) for r in rows} == {
            ("self-harm", "closed", "how to kill myself", "127.0.0.1"), ("pornography", "new", "", "127.0.0.1")}
        assert ("j.lee", "dsl", "export.csv") in audit_actions(policy)

        page.goto(f"{base}/report")
        playwright_api.expect(page.locator("svg.trend")).to_have_count(1)
        # the report groups sites by registrable domain
        playwright_api.expect(page.locator("section", has_text="Top blocked sites")).to_contain_text("pornhub.com")
        shoot(page, "report")
        sign_out(page)

        # A teacher cannot open the flagged queue, but can open a site for their group.
        sign_in(page, base, "m.patel", ACCOUNTS["m.patel"][1])
        page.wait_for_url(f"{base}/requests")
        response = page.goto(f"{base}/incidents")
        assert response is not None and response.status == 403
        playwright_api.expect(page.get_by_role("heading", level=1)).to_have_text("Not available to your role")
        playwright_api.expect(page.locator("main")).not_to_contain_text("how to kill myself")
        page.goto(f"{base}/exceptions")
        page.get_by_label("Site or page").fill("www.youtube.com/watch?v=dQw4w9WgXcQ")
        page.get_by_label("For how long").select_option("60")
        page.get_by_label("Reason").fill("Year 9 music: video for the lesson")
        page.get_by_role("button", name="Open").click()
        playwright_api.expect(page.get_by_role("status")).to_contain_text("Opened www.youtube.com/watch")
        shoot(page, "exceptions")
        sign_out(page)

        # Wrong passwords are refused, then the account is throttled even with the right one.
        for _ in range(5):
            sign_in(page, base, "it.office", "not-the-password")
            playwright_api.expect(page.get_by_role("alert")).to_contain_text("do not match an active account")
        sign_in(page, base, "it.office", ACCOUNTS["it.office"][1])
        playwright_api.expect(page.get_by_role("alert")).to_contain_text("Too many failed sign-ins")
        assert page.url.startswith(f"{base}/login")
        it_actions = [a for actor, _, a in audit_actions(policy) if actor == "it.office"]
        assert it_actions == ["login.failed"] * 5 + ["login.throttled"]



REQUESTS_POLICY = POLICY.replace('networks = ["127.0.0.1/32"]\nsafe_search = true',
                                 'networks = ["127.0.0.1/32"]\nrequire_auth = true').replace(
    'pornography = "block"', 'pornography = "block"\ngames = "block"') + """
[auth]
htpasswd = "HTPASSWD"
"""


@pytest.fixture
def school_with_pupils(gateway_factory, upstream, monkeypatch, tmp_path):
    """A gateway where pupils sign in (alice and bob), class lists from the MIS, and the console's accounts."""
    import bcrypt

    htpasswd = tmp_path / "users.htpasswd"
    htpasswd.write_text(
        "".join(f"{u}:{bcrypt.hashpw(f'{u}-pw'.encode(), bcrypt.gensalt(rounds=4)).decode()}\n" for u in ("alice", "bob")))
    gw = gateway_factory(REQUESTS_POLICY.replace("HTPASSWD", str(htpasswd)), options={"schoolgate_live_ms": 200})
    policy = load_policy(gw.policy_path)
    roster = tmp_path / "classes.csv"
    roster.write_text("class,username\n9X,alice\n9X,dan\n9Y,bob\n")
    assert cli(policy, "classes", "import", str(roster), monkeypatch=monkeypatch) == 0
    add_accounts(policy, monkeypatch)
    return gw, policy


def test_a_pupils_request_approved_for_their_class_in_a_real_browser(school_with_pupils) -> None:
    gw, policy = school_with_pupils
    with playwright_api.sync_playwright() as p, tempfile.TemporaryDirectory(prefix="sg-chromium-") as profile, \
            ConsoleServer(policy) as server:
        # alice's browser goes through the gateway and signs in to it; the console (loopback) is reached directly.
        context = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, ignore_https_errors=True,
            viewport={"width": 1280, "height": 800}, locale="en-GB",
            proxy={"server": gw.proxy_url, "bypass": "127.0.0.1", "username": "alice", "password": "alice-pw"})
        context.set_default_timeout(15_000)
        pupil, teacher, base = context.new_page(), context.new_page(), server.url

        # alice asks for a games site and for a pornographic one.
        def ask(url: str, why: str) -> None:
            assert pupil.goto(url).status == 403
            pupil.get_by_label("Tell your teacher why").fill(why)
            pupil.get_by_role("button", name="Ask for access").click()
            playwright_api.expect(pupil.get_by_role("heading", level=1)).to_have_text("Request sent")

        ask("http://www.pornhub.com/", "PSHE homework")
        ask("http://games.test/maths", "Times-tables game for the maths lesson")
        my_requests = pupil.get_by_role("link", name="See all your requests").get_attribute("href")

        # The teacher sees one request to decide (pornography is IT's) and approves it for the class, this lesson.
        sign_in(teacher, base, "m.patel", ACCOUNTS["m.patel"][1])
        teacher.wait_for_url(f"{base}/requests")
        playwright_api.expect(teacher.get_by_role("link", name="Access requests")).to_contain_text("1")
        adult = teacher.get_by_role("row").filter(has_text="www.pornhub.com")
        playwright_api.expect(adult).to_contain_text("Handled by the IT team (it.office): teachers may not open pornography")
        playwright_api.expect(adult.get_by_role("button", name="Approve")).to_have_count(0)
        games = teacher.get_by_role("row").filter(has_text="games.test")
        games.get_by_label("Open for").select_option(label="Class 9X")
        games.get_by_label("For how long").select_option(label="This lesson")
        shoot(teacher, "requests")
        games.get_by_role("button", name="Approve").click()
        playwright_api.expect(teacher.get_by_role("status")).to_contain_text("games.test is open for class 9X until")
        playwright_api.expect(teacher.get_by_role("link", name="Access requests")).to_have_text("Access requests")

        # alice, in 9X, gets through; bob, in 9Y, does not.
        deadline = time.monotonic() + 10
        while pupil.goto("http://games.test/maths").status != 200:
            assert time.monotonic() < deadline, "the class's exception never reached the gateway"
            time.sleep(0.2)
        assert curl(gw, "http://games.test/maths", user="bob", password="bob-pw").status == 403

        # alice sees the outcome: approved until the end of the lesson.
        with sqlite3.connect(gw.db_path) as db:
            (ends_at,) = db.execute("SELECT ends_at FROM exceptions").fetchone()
        until = datetime.fromisoformat(ends_at).replace(tzinfo=UTC).astimezone().strftime("%H:%M")
        pupil.goto("http://games.test" + my_requests)
        row = pupil.get_by_role("row").filter(has_text="games.test")
        playwright_api.expect(row).to_contain_text(f"Approved by m.patel until {until}")
        playwright_api.expect(pupil.get_by_role("row").filter(has_text="www.pornhub.com")).to_contain_text("Waiting")

        # The exceptions form refuses a block page's reference typed as the site, and says so at the field.
        teacher.goto(f"{base}/exceptions")
        teacher.get_by_label("Site or page").fill("SG-7K3Q-P2XD")
        teacher.get_by_label("Reason").fill("Year 9 quiz")
        teacher.get_by_role("button", name="Open").click()
        playwright_api.expect(teacher.get_by_role("alert")).to_contain_text("Not opened")
        target = teacher.get_by_label("Site or page")
        playwright_api.expect(target).to_have_attribute("aria-invalid", "true")
        playwright_api.expect(target).to_have_value("SG-7K3Q-P2XD")
        playwright_api.expect(teacher.locator("#target-error")).to_contain_text("is a block page's reference, not a site")
        playwright_api.expect(teacher.get_by_label("Reason")).to_have_value("Year 9 quiz")
        shoot(teacher, "exceptions")
        teacher.set_viewport_size({"width": 375, "height": 800})  # a phone: no sideways scrolling
        assert teacher.evaluate("document.documentElement.scrollWidth") <= 375
        teacher.goto(f"{base}/requests")
        assert teacher.evaluate("document.documentElement.scrollWidth") <= 375
        context.close()


@pytest.fixture
def crowded_queue(tmp_path, monkeypatch):
    """Records through the real writer into SQLite, as a busy morning leaves them (before the browser starts:
    Playwright's sync API runs an event loop of its own)."""
    policy = write_policy(tmp_path)
    create_accounts(policy, monkeypatch)
    now = datetime.now(UTC).replace(microsecond=0)
    porn = dict(flag="pornography", flag_severity=3, flag_detail="category pornography", verdict="block",
                categories=("pornography",), host="www.pornhub.com", url="https://www.pornhub.com/")
    store(policy,
          # The critical search came first; fifteen pornography page loads on other devices after it.
          flagged_search(now - timedelta(minutes=50), user="alice"),
          *[make_record(ts=now - timedelta(minutes=40 - n), user=None, client_ip=f"10.1.0.{n}", **porn)
            for n in range(1, 16)],
          # One page load that raised three flagged requests: one incident, three attempts.
          *[make_record(ts=now - timedelta(minutes=5, seconds=-n), user="bob", **porn) for n in range(3)],
          # A gateway killed mid-run: seq 3 and 4 never reached the database.
          *[make_record(ts=now - timedelta(minutes=30 - n), instance="gw-hall", seq=n) for n in (1, 2, 5)])
    return policy


def test_the_queue_is_worst_first_with_episodes_bulk_close_and_lost_records(crowded_queue, browser) -> None:
    policy = crowded_queue
    with ConsoleServer(policy) as server:
        base = server.url
        page = browser.new_page()
        sign_in(page, base, "dsl", CONSOLE_PASSWORDS["dsl"])
        page.wait_for_url(f"{base}/incidents")
        rows = page.locator("table.data tbody tr")
        playwright_api.expect(rows).to_have_count(17)
        playwright_api.expect(rows.nth(0)).to_contain_text("how to kill myself")  # row 1, not row 17
        playwright_api.expect(rows.nth(0)).to_contain_text("critical")
        playwright_api.expect(rows.nth(1)).to_contain_text("bob")  # then the most recently seen
        playwright_api.expect(rows.nth(1).locator(".attempts")).to_have_text("3")
        playwright_api.expect(page.get_by_role("alert")).to_contain_text(
            "2 access records lost from gateway gw-hall between")
        shoot(page, "queue")

        # On a phone the queue reads down the page, never sideways.
        page.set_viewport_size({"width": 375, "height": 740})
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        page.set_viewport_size({"width": 1280, "height": 800})

        # The episode's attempts are listed on its incident, which fits a phone too.
        rows.nth(1).get_by_role("link", name=re.compile(r"incident \d+")).click()
        playwright_api.expect(page.locator("#attempts tbody tr")).to_have_count(3)
        page.set_viewport_size({"width": 375, "height": 740})
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        page.set_viewport_size({"width": 1280, "height": 800})
        page.go_back()

        # Bulk close: tick three pornography incidents, close them in one go.
        for n in (2, 3, 4):
            rows.nth(n).get_by_role("checkbox").check()
        page.get_by_label("With the incidents ticked").select_option("close")
        page.get_by_role("button", name="Apply").click()
        playwright_api.expect(page.get_by_role("status")).to_have_text("Closed 3 incidents.")
        playwright_api.expect(rows).to_have_count(14)
        playwright_api.expect(rows.nth(0)).to_contain_text("how to kill myself")
    closed = [a for actor, _, a in audit_actions(policy) if actor == "dsl" and a.startswith("incident.")]
    assert closed == ["incident.closed"] * 3


@pytest.fixture
def probed_gateway(gateway_factory, upstream, monkeypatch):
    """A running gateway and the console's policy, whose self-check probes that gateway (accounts made first:
    the CLI runs its own event loop, which cannot start inside Playwright's)."""
    import dataclasses

    from schoolgate.policy import SelfCheckSettings

    gw = gateway_factory(POLICY, options={"schoolgate_lists_fetch": False})
    policy = dataclasses.replace(load_policy(gw.policy_path), selfcheck=SelfCheckSettings(proxy=gw.proxy_url))
    add_accounts(policy, monkeypatch)
    return policy


def test_the_selfcheck_page_probes_the_gateway_for_it_and_the_dsl(probed_gateway, browser, upstream) -> None:
    policy = probed_gateway
    with ConsoleServer(policy) as server:
        base = server.url
        page = browser.new_page()
        sign_in(page, base, "it.office", ACCOUNTS["it.office"][1])
        page.wait_for_url(f"{base}/requests")
        page.get_by_role("link", name="Self-check").click()
        playwright_api.expect(page.get_by_role("heading", level=1)).to_have_text("Filtering and monitoring self-check")
        # Opening the page judges the configuration only; the probes run when asked for.
        playwright_api.expect(page.locator("#probes")).to_contain_text("No probes were run.")
        assert not [r for r in upstream.requests if r.hostname == "www.google.com"]
        page.get_by_role("button", name="Run the probes and send a test alert").click()
        def result(title: str) -> object:
            return page.get_by_role("row").filter(has=page.get_by_role("cell", name=title, exact=True)).locator(".check")

        playwright_api.expect(result("Pornography")).to_have_text("met")
        playwright_api.expect(page.get_by_role("row").filter(has_text="Pornography")).to_contain_text("blocked as group pupils")
        # This policy leaves SafeSearch off for staff, which counts as a pupils' group (raw tunnels blocked) ...
        playwright_api.expect(result("Safe search")).to_have_text("not met")
        playwright_api.expect(page.get_by_role("row").filter(has_text="Safe search")).to_contain_text(
            "set safe_search = true for staff")
        # ... and does not block VPN sites: the probe got through, so circumvention is not met.
        probes = page.locator("#probes")
        playwright_api.expect(probes.get_by_role("row").filter(has_text="adult-site")).to_contain_text("passed")
        playwright_api.expect(probes.get_by_role("row").filter(has_text="safesearch")).to_contain_text("passed")
        playwright_api.expect(probes.get_by_role("row").filter(has_text="vpn-proxy")).to_contain_text("failed")
        playwright_api.expect(result("Circumvention")).to_have_text("not met")
        ctiru = "Integrate the police assessed list of unlawful terrorist content (CTIRU)"
        playwright_api.expect(result(ctiru)).to_have_text("not met")  # no CTIRU list in this gateway
        assert axe_violations(page) == []
        shoot(page, "selfcheck")
        page.set_viewport_size({"width": 375, "height": 800})
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        page.set_viewport_size({"width": 1280, "height": 800})

        probe = page.locator("#probes").get_by_role("row").filter(has_text="test-alert")
        playwright_api.expect(probe).to_contain_text("no alert channel configured")
        assert [a for actor, _, a in audit_actions(policy) if actor == "it.office"].count("view.selfcheck") == 2
        sign_out(page)

        sign_in(page, base, "m.patel", ACCOUNTS["m.patel"][1])
        page.wait_for_url(f"{base}/requests")
        response = page.goto(f"{base}/selfcheck")
        assert response is not None and response.status == 403
