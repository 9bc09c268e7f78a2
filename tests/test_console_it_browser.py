"""IT tools and the phone layout in headless Chromium over a database filled by a real gateway run:
IT looks up a pupil's block-page reference, tests a URL, searches the log and edits the lists;
a teacher is refused; the DSL sees the unread badge and reads an incident on a 375 px phone.
Every page has zero axe-core violations and no sideways scrolling at 375 px.
With SCHOOLGATE_SCREENSHOTS=1, docs/screenshots/it-tools.png and incident-phone.png are refreshed."""

from __future__ import annotations

import re
import sqlite3

import pytest
from test_console import ConsoleServer
from test_console_browser import ACCOUNTS, audit_actions, browser, filled_by_gateway, shoot, sign_in  # noqa: F401

from support.browser import axe_violations

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = playwright_api.expect
PHONE = {"width": 375, "height": 812}


def fits_a_phone(page) -> None:
    """At 375 px wide the page scrolls only downwards."""
    page.set_viewport_size(PHONE)
    scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner, f"{page.url} is {scroll} px wide on a {inner} px phone"
    assert axe_violations(page) == [], page.url
    page.set_viewport_size({"width": 1280, "height": 800})


def blocked_reference(policy) -> str:
    with sqlite3.connect(policy.gateway.database.split("///", 1)[1]) as db:
        return db.execute("SELECT ref FROM access_log WHERE host = 'www.pornhub.com' AND ref IS NOT NULL").fetchone()[0]


def test_it_tools_in_a_real_browser(filled_by_gateway, browser) -> None:
    policy = filled_by_gateway
    ref = blocked_reference(policy)
    with ConsoleServer(policy) as server:
        base, page = server.url, browser.new_page()
        sign_in(page, base, "it.office", ACCOUNTS["it.office"][1])
        page.get_by_role("link", name="IT tools").click()

        # The reference as a pupil reads it out: lower case, spaces for dashes.
        page.get_by_label("Reference on the pupil's block page").fill(ref.lower().replace("-", " "))
        page.get_by_role("button", name="Look up").click()
        found = page.locator("#reference dl")
        for seen in (ref, "www.pornhub.com", "pornography", "pupils", "127.0.0.1", "block"):
            expect(found).to_contain_text(seen)
        expect(page.locator("#reference")).to_contain_text("shown to safeguarding leads only")

        page.get_by_label("URL to test").fill("https://www.pornhub.com/videos")
        page.get_by_label("Group").select_option("staff")
        page.get_by_role("button", name="Test").click()
        decision = page.get_by_label("Decision")
        expect(decision).to_contain_text("BLOCK")
        expect(decision).to_contain_text("staff (chosen on the form)")
        expect(decision).to_contain_text("category pornography")
        assert axe_violations(page) == []
        shoot(page, "it-tools")
        fits_a_phone(page)

        page.get_by_role("link", name="Access log").click()
        page.get_by_label("Site or address contains").fill("bbc")
        page.get_by_role("button", name="Search").click()
        expect(page.locator("table.data tbody tr")).to_have_count(1)
        expect(page.locator("table.data")).to_contain_text("www.bbc.co.uk/bitesize")
        expect(page.locator("main")).not_to_contain_text("history homework")  # searches: the DSL's to see
        fits_a_phone(page)

        page.goto(f"{base}/lists")
        block_list = page.locator("section", has=page.get_by_role("heading", name="Block list"))
        block_list.get_by_label("Domain or URL prefix").fill("games.example")
        block_list.get_by_label("Reason").fill("distracting in lessons")
        block_list.get_by_role("button", name="Add to the block list").click()
        page.get_by_label("Why remove games.example").fill("needed for a computing lesson")
        page.get_by_role("button", name="Remove").click()
        history = page.locator("#history")
        expect(history).to_contain_text("removed from the block list: games.example")
        expect(history).to_contain_text("needed for a computing lesson")
        expect(history).to_contain_text("distracting in lessons")
        fits_a_phone(page)
        actions = [a for actor, _, a in audit_actions(policy) if actor == "it.office"]
        assert {"view.reference", "view.test_url", "view.log", "list.block.add", "list.block.remove"} <= set(actions)

        page.get_by_role("button", name="Sign out").click()
        sign_in(page, base, "m.patel", ACCOUNTS["m.patel"][1])
        response = page.goto(f"{base}/it/log")
        assert response is not None and response.status == 403
        expect(page.get_by_role("heading", level=1)).to_have_text("Not available to your role")
        assert ("m.patel", "teacher", "denied") in audit_actions(policy)


def test_the_dsl_reads_an_incident_on_a_phone(filled_by_gateway, browser) -> None:
    policy = filled_by_gateway
    with ConsoleServer(policy) as server:
        base, page = server.url, browser.new_page()
        page.set_viewport_size(PHONE)
        sign_in(page, base, "j.lee", ACCOUNTS["j.lee"][1])
        nav_badge = page.get_by_role("navigation", name="Main").locator(".badge")
        expect(nav_badge).to_contain_text("2")  # the self-harm search and the pornography block, both unopened
        fits_a_phone(page)
        page.set_viewport_size(PHONE)
        page.get_by_role("row").filter(has_text="how to kill myself").get_by_role("link", name=re.compile(r"incident \d+")).click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Self-harm")
        expect(nav_badge).to_contain_text("1")
        shoot(page, "incident-phone")
        fits_a_phone(page)
        page.goto(f"{base}/it/log")
        expect(page.locator("table.data")).to_contain_text("how to kill myself")  # the DSL sees the searches
        fits_a_phone(page)
