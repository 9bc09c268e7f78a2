"""The lists in a real gateway: the first-start download, an index broken under a
running gateway, and the locked illegal-content tier (IWF/CTIRU formats, written
here as fixtures: the real lists are licensed to members). Real mitmdump, curl,
loopback upstream, SQLite, webhook receiver."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest

from support.alerts import WebhookReceiver
from support.clients import curl
from support.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
UT1_FIXTURE = REPO / "tests" / "fixtures" / "ut1"

POLICY = """\
[gateway]
database = "{database}"
metrics_port = {metrics_port}
default_group = "pupils"

[lists]
index = "INDEX"
sources = [SOURCES]

[local]
allow = ["iwf-listed.example", "ctiru.example"]

[categories]
pornography = "block"
gambling = "block"
illegal = "allow"

[monitoring]
console_url = "https://console.school.test/incidents/"

[alerts]
min_severity = "high"
[alerts.webhook]
url = "WEBHOOK_URL"

[groups.pupils]
networks = ["127.0.0.1/32"]
"""


def policy_text(index: Path, sources: list[str] = (), webhook: str = "") -> str:
    return (POLICY.replace("INDEX", str(index)).replace("SOURCES", ", ".join(f'"{s}"' for s in sources))
            .replace("WEBHOOK_URL", webhook))


def records(gw) -> list[dict]:
    with sqlite3.connect(gw.db_path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM access_log ORDER BY seq")]


def test_first_start_fetches_and_compiles_the_lists_in_the_background(gateway_factory, upstream, tmp_path):
    index = tmp_path / "state" / "categories.idx"
    gw = gateway_factory(policy_text(index, [str(UT1_FIXTURE)]), options={"schoolgate_reload_ms": 200})
    assert curl(gw, "http://adult.test/").status == 403  # the built-in list serves meanwhile
    wait_for(lambda: curl(gw, "http://casino.example/").status == 403, timeout=60)  # UT1 fixture: gambling
    assert index.is_file()
    log = gw.log_text()
    assert "no category index yet: downloading and compiling" in log
    assert "lists update: compiled" in log
    wait_for(lambda: gw.metric("schoolgate_category_index_ok", problem="none") == 1)
    assert gw.metric("schoolgate_category_entries", category="gambling", action="block") > 0
    wait_for(lambda: gw.metric("schoolgate_lists_fetches_total", result="ok") == 1)
    # No illegal-content lists in this gateway's directory: loud, in the log and the metrics.
    assert gw.metric("schoolgate_illegal_tier_ok") == 0
    assert gw.metric("schoolgate_illegal_tier_entries", provider="iwf") == 0
    assert "the IWF and CTIRU lists are not blocked" in gw.log_text()


def test_a_corrupt_or_truncated_index_under_a_running_gateway_keeps_the_last_good_one(gateway_factory, upstream, tmp_path):
    from schoolgate.cli import main

    index = tmp_path / "categories.idx"
    assert main(["lists", "update", "--source", str(UT1_FIXTURE), "--output", str(index)]) == 0
    gw = gateway_factory(policy_text(index), options={"schoolgate_reload_ms": 200, "schoolgate_lists_fetch": False})
    assert curl(gw, "http://casino.example/").status == 403
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    index.write_bytes(bytes(data))
    wait_for(lambda: gw.metric("schoolgate_category_index_ok", problem="corrupt") == 0)
    assert curl(gw, "http://casino.example/").status == 403  # not the built-in list: the last good index
    assert "category index refused" in gw.log_text()
    with index.open("r+b") as f:  # truncated in place: a shared mapping would die of SIGBUS here
        f.truncate(100)
    wait_for(lambda: gw.metric("schoolgate_category_index_ok", problem="truncated") == 0)
    assert curl(gw, "http://casino.example/").status == 403
    assert gw.running


@pytest.fixture
def webhook():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    receiver = asyncio.run_coroutine_threadsafe(WebhookReceiver().start(), loop).result(10)
    yield receiver
    asyncio.run_coroutine_threadsafe(receiver.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def write_tier(root: Path) -> Path:
    (root / "iwf").mkdir(parents=True)
    (root / "ctiru").mkdir()
    (root / "iwf" / "iwf-urls.txt").write_text("# IWF URL list (fixture)\niwf-listed.example/gallery/\n")
    digest = hashlib.sha256(b"ctiru.example/video/42").hexdigest()
    (root / "ctiru" / "ctiru.sha256").write_text(f"{digest}\n")
    return root


def test_the_illegal_tier_blocks_whatever_the_policy_says_and_alerts_the_dsl(gateway_factory, upstream, tmp_path, webhook):
    tier = write_tier(tmp_path / "illegal-content")
    gw = gateway_factory(policy_text(tmp_path / "none.idx", webhook=webhook.url),
                         options={"schoolgate_illegal_dir": str(tier), "schoolgate_lists_fetch": False})
    # The policy allows both hosts locally and allows category illegal: the tier still blocks.
    page = curl(gw, "http://iwf-listed.example/gallery/1.jpg")
    assert page.status == 403
    body = page.body.decode()
    assert "blocked by law" in body and "Nobody at school can unblock it" in body
    assert "Ask for access" not in body and "ask your teacher" not in body
    assert curl(gw, "http://www.ctiru.example/video/42").status == 403  # a hashed entry
    assert curl(gw, "http://iwf-listed.example/about").status == 200  # the rest of the host: the local allow
    assert curl(gw, "http://ctiru.example/video/43").status == 200
    seen = [(r.hostname, r.path) for r in upstream.requests]
    assert ("iwf-listed.example", "/about") in seen
    assert not [path for host, path in seen if path.startswith(("/gallery", "/video/42"))]
    wait_for(lambda: len(webhook.requests) >= 1)
    assert gw.metric("schoolgate_illegal_tier_entries", provider="iwf") == 1
    assert gw.metric("schoolgate_illegal_tier_entries", provider="ctiru") == 1
    assert gw.metric("schoolgate_illegal_tier_ok") == 1
    gw.stop()
    blocked = [r for r in records(gw) if r["verdict"] == "block"]
    assert [(r["host"], r["rule"]) for r in blocked] == [
        ("iwf-listed.example", "illegal iwf"), ("www.ctiru.example", "illegal ctiru")
    ]
    assert all(r["flag"] == "illegal" for r in blocked)
