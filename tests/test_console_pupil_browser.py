"""A DSL follows one pupil's story in headless Chromium, over a database filled by a real gateway
where the pupil signed in to the proxy: filters the queue by risk, records an outcome, comes back to
the same filtered queue, opens the pupil's page from it, puts them on the watch list, and downloads
the referral packs (read back with pdftotext and csv). A teacher is kept out. With
SCHOOLGATE_SCREENSHOTS=1 the pupil page and a referral pack's first page are saved to docs/screenshots/."""

from __future__ import annotations

import csv
import io
import subprocess
from urllib.parse import quote_plus

import bcrypt
import pytest
from test_console import ConsoleServer
from test_console_browser import ACCOUNTS, POLICY, SCREENSHOTS, add_accounts, audit_actions, browser, shoot, sign_in  # noqa: F401

from schoolgate.policy import load_policy

from support.browser import axe_violations
from support.clients import curl

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
PHONE_WIDTH = 375


def fits_a_phone(page) -> bool:
    page.set_viewport_size({"width": PHONE_WIDTH, "height": 800})
    page.wait_for_function(f"window.innerWidth === {PHONE_WIDTH}")  # laid out at the new width
    fits = page.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH
    page.set_viewport_size({"width": 1280, "height": 800})
    return fits


@pytest.fixture
def pupil_signed_in(gateway_factory, upstream, tmp_path, monkeypatch):
    """A real gateway where pupils sign in to the proxy: alice searches for self-harm, between lessons."""
    htpasswd = tmp_path / "users.htpasswd"
    htpasswd.write_text(f"alice:{bcrypt.hashpw(b'pupil password', bcrypt.gensalt(rounds=4)).decode()}\n")
    gw = gateway_factory(POLICY.replace("[monitoring]", f'[auth]\nhtpasswd = "{htpasswd}"\n\n[monitoring]'))

    def as_alice(url: str) -> int:
        return curl(gw, url, user="alice", password="pupil password").status

    assert as_alice("http://www.google.co.uk/search?q=" + quote_plus("history homework tudors")) == 200
    assert as_alice("https://www.bing.com/search?q=" + quote_plus("how to kill myself")) == 200
    assert as_alice("https://www.bbc.co.uk/bitesize") == 200
    gw.stop()
    policy = load_policy(gw.policy_path)
    add_accounts(policy, monkeypatch)
    return policy


def test_a_dsl_follows_one_pupils_story(pupil_signed_in, browser, tmp_path) -> None:  # noqa: F811
    policy = pupil_signed_in
    with ConsoleServer(policy) as server:
        base = server.url
        page = browser.new_page()
        sign_in(page, base, "j.lee", ACCOUNTS["j.lee"][1])
        page.wait_for_url(f"{base}/incidents")

        # The risk filter offers the risks by name; the filter stays in the URL.
        page.get_by_label("Risk").select_option("self-harm")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url("**/incidents?*risk=self-harm*")
        assert axe_violations(page) == []
        row = page.get_by_role("row").filter(has_text="how to kill myself")
        row.get_by_role("link").first.click()

        # An outcome, with its date, on the incident; the time to first review is shown.
        expect(page.locator("dl")).to_contain_text("after it was flagged")
        page.get_by_label("Outcome", exact=True).select_option(label="Spoke to the pupil")
        page.get_by_label("What was done (optional)").fill("Safety plan agreed.")
        page.get_by_role("button", name="Record outcome").click()
        outcomes = page.locator("#outcomes")
        expect(outcomes).to_contain_text("Spoke to the pupil")
        expect(outcomes).to_contain_text("Safety plan agreed.")
        assert axe_violations(page) == [] and fits_a_phone(page)
        incident_url = page.url.split("#")[0]

        # Back to the same filtered queue, then to the pupil's page from the "who" column.
        page.locator(".crumbs").get_by_role("link", name="Flagged queue").click()
        page.wait_for_url("**/incidents?*risk=self-harm*")
        expect(page.get_by_label("Risk")).to_have_value("self-harm")
        page.get_by_role("row").filter(has_text="how to kill myself").get_by_role("link", name="alice").click()
        page.wait_for_url(f"{base}/pupils/alice")
        expect(page.locator("#timeline")).to_contain_text("history homework tudors")
        expect(page.locator("#timeline")).to_contain_text("www.bbc.co.uk/bitesize")

        # On the watch list, with a reason: a badge wherever her name appears.
        page.get_by_label("Why watch this pupil").fill("Searches about self-harm; safety plan in place")
        page.get_by_role("button", name="Add to the watch list").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("watched")
        expect(page.locator("#notes")).to_contain_text("Put on the watch list: Searches about self-harm")
        shoot(page, "pupil")
        assert axe_violations(page) == [] and fits_a_phone(page)
        page.goto(f"{base}/incidents")
        expect(page.get_by_role("row").filter(has_text="how to kill myself")).to_contain_text("watched")

        # The referral packs: PDF from the incident, CSV from the pupil's page.
        page.goto(incident_url)
        with page.expect_download() as download:
            page.get_by_role("link", name="Referral pack (PDF)").click()
        pdf = tmp_path / "referral.pdf"
        download.value.save_as(pdf)
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True,
                              text=True).stdout
        for seen in ("how to kill myself", "Spoke to the pupil", "Safety plan agreed.", "history homework tudors", "proxy sign-in",
                     "export.referral"):
            assert seen in text, seen
        if SCREENSHOTS:
            subprocess.run(["pdftoppm", "-png", "-r", "70", "-singlefile", str(pdf), str(SCREENSHOTS / "referral")],
                           check=True)
        page.locator("dd").get_by_role("link", name="127.0.0.1").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("a device, not a person")
        assert axe_violations(page) == [] and fits_a_phone(page)
        page.goto(f"{base}/pupils/alice")
        with page.expect_download() as download:
            page.get_by_role("link", name="Referral pack (CSV)").click()
        saved = tmp_path / "referral.csv"
        download.value.save_as(saved)
        rows = list(csv.reader(io.StringIO(saved.read_text(encoding="utf-8-sig"))))
        assert ["Referral pack: alice"] in rows
        assert any("Put on the watch list: Searches about self-harm; safety plan in place" in r for r in rows)
        actions = [a for actor, _, a in audit_actions(policy) if actor == "j.lee"]
        assert actions.count("export.referral") == 2 and "incident.outcome" in actions and "pupil.watch" in actions
        page.get_by_role("button", name="Sign out").click()

        # A teacher cannot see the pupil's page.
        sign_in(page, base, "m.patel", ACCOUNTS["m.patel"][1])
        page.wait_for_url(f"{base}/requests")
        response = page.goto(f"{base}/pupils/alice")
        assert response is not None and response.status == 403
        expect(page.locator("main")).not_to_contain_text("how to kill myself")
