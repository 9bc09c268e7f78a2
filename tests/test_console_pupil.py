"""One pupil's story in the console over HTTP (the real app served by uvicorn, a real SQLite file):
outcomes and time to first review on an incident, a pupil's and a device's page with notes and the
watch list, the queue's filter kept through an incident, referral packs read back with pdftotext,
the role checks on all of it, and the same writes on PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from test_console import NOW, Env, env, flagged_search, store  # noqa: F401  (env: the fixture)
from test_records import make_record

from schoolgate.addons.directory import PupilDetails
from schoolgate.addons.pupildirectory import store_details
from schoolgate.db import create_engine, upgrade
from schoolgate.records import RecordWriter
from schoolgate.reports import incidents as incident_store
from schoolgate.reports import outcomes, pupils, referral
from schoolgate.reports.outcomes import Outcome, mark_reviewed, record_outcome, review_times, summarise

from support.postgres import journal_of


def incident_of(env: Env, term: str) -> str:
    page = env.client.get("/incidents?status=all")
    for number in re.findall(r'href="/incidents/(\d+)[?"]', page.text):
        if term in env.client.get(f"/incidents/{number}").text:
            return number
    raise AssertionError(f"no incident for {term!r}")


def details(env: Env, action: str) -> list[str]:
    with env.db() as db:
        return [row[0] for row in db.execute("SELECT after FROM audit_log WHERE action = ? ORDER BY id", (action,))]


def test_outcomes_are_recorded_with_a_date_audited_and_shown(env: Env) -> None:
    env.login("dsl")
    token = env.csrf("/incidents/1")
    done = env.client.post("/incidents/1/outcomes", data={
        "csrf": token, "outcome": "early-help", "on": date.today().isoformat(), "note": "Family support worker"})
    assert done.status_code == 200 and done.url.path == "/incidents/1"
    assert "Referred to early help" in done.text and "Family support worker" in done.text
    env.client.post("/incidents/1/outcomes", data={"csrf": token, "outcome": "spoke-to-pupil",
                                                   "on": (date.today() - timedelta(days=1)).isoformat()})
    page = env.client.get("/incidents/1").text
    assert page.index("Spoke to the pupil") < page.index("Referred to early help")  # by date
    assert ("dsl", "dsl", "incident.outcome") in env.audit()
    assert '"outcome": "early-help"' in details(env, "incident.outcome")[0]
    assert "Family support" not in "".join(details(env, "incident.outcome"))  # the note stays with the incident

    for bad in ({"outcome": "made-up", "on": date.today().isoformat()}, {"outcome": "police", "on": "soon"},
                {"outcome": "police", "on": (date.today() + timedelta(days=2)).isoformat()}):
        refused = env.client.post("/incidents/1/outcomes", data={"csrf": token, **bad})
        assert "role=\"alert\"" in refused.text
    assert len(details(env, "incident.outcome")) == 2
    assert env.client.post("/incidents/1/outcomes", data={"outcome": "police", "on": "2026-01-01"}).status_code == 403


def test_time_to_first_review_is_kept_once_and_summarised_for_a_period(env: Env) -> None:
    with env.db() as db:
        assert db.execute("SELECT count(*) FROM incidents WHERE first_reviewed_at IS NOT NULL").fetchone() == (0,)  # nobody has looked yet
    env.login("dsl")
    first = env.client.get("/incidents/1")
    assert "First reviewed" in first.text and "after it was flagged" in first.text
    with env.db() as db:
        (reviewed_at, by, first_seen), = db.execute(
            "SELECT first_reviewed_at, first_reviewed_by, first_seen FROM incidents WHERE id = 1")
    assert by == "dsl"
    env.client.get("/incidents/1")
    with env.db() as db:
        assert db.execute("SELECT first_reviewed_at FROM incidents WHERE id = 1").fetchone() == (reviewed_at,)

    store(env.policy, flagged_search(NOW - timedelta(days=1), user="dan", term="how to overdose"))
    engine = create_engine(env.policy.gateway.database)
    try:
        times = asyncio.run(review_times(engine, NOW - timedelta(days=7), datetime.now(UTC) + timedelta(minutes=1)))
    finally:
        asyncio.run(engine.dispose())
    assert (times.reviewed, times.waiting) == (1, 1)
    # From when it was flagged to when the DSL opened it (a busy run opens it later than NOW).
    waited = datetime.fromisoformat(reviewed_at) - datetime.fromisoformat(first_seen)
    assert timedelta(minutes=2) <= waited and abs(times.median - waited) < timedelta(seconds=1) and times.worst == times.median
    assert times.longest_waiting is not None and times.longest_waiting > timedelta(hours=23)


def test_review_times_give_the_median_and_worst() -> None:
    minutes = [timedelta(minutes=m) for m in (30, 5, 240, 10)]
    times = summarise(minutes, [])
    assert (times.median, times.worst, times.waiting, times.longest_waiting) == (
        timedelta(minutes=20), timedelta(hours=4), 0, None)
    assert summarise([], [timedelta(days=2)]).median is None


def test_a_pupils_page_shows_their_activity_notes_and_watch(env: Env) -> None:
    store(env.policy, *(make_record(ts=datetime(2026, 1, 5, 9, tzinfo=UTC) + timedelta(minutes=i), user="alice",
                                    host=f"site{i}.example", url=f"https://site{i}.example/") for i in range(55)))
    env.login("dsl")
    page = env.client.get("/pupils/alice")
    assert page.status_code == 200
    assert "www.childline.org.uk" in page.text and "how to kill myself" in page.text
    assert "10.1.9.9" not in page.text  # bob's device: another pupil's
    assert "Open incidents" in page.text and "self-harm" in page.text
    assert "Older" in page.text
    older = env.client.get("/pupils/alice?page=2").text
    assert "site0.example" in older and "site54.example" not in older
    january = env.client.get("/pupils/alice?from=2026-01-05&to=2026-01-05").text
    assert "site54.example" in january and "www.childline.org.uk" not in january
    assert env.client.get("/pupils/alice?from=yesterday").status_code == 400

    token = env.csrf("/pupils/alice")
    env.client.post("/pupils/alice/notes", data={"csrf": token, "note": "Head of year aware."})
    assert "Head of year aware." in env.client.get("/pupils/alice").text
    assert "Give a reason" in env.client.post("/pupils/alice/watch", data={"csrf": token, "action": "watch"}).text
    watched = env.client.post("/pupils/alice/watch", data={"csrf": token, "action": "watch",
                                                           "reason": "Repeated self-harm searches"})
    assert "watched" in watched.text and "Put on the watch list: Repeated self-harm searches" in watched.text
    queue = env.client.get("/incidents").text
    assert re.search(r'href="/pupils/alice">alice</a> <span class="badge badge-watch"', queue)
    assert 'badge-watch' in env.client.get("/incidents/1").text
    unwatched = env.client.post("/pupils/alice/watch", data={"csrf": token, "action": "unwatch", "reason": "Settled"})
    assert "Taken off the watch list: Settled" in unwatched.text
    assert "badge-watch" not in env.client.get("/incidents").text
    actions = [a for actor, _, a in env.audit() if actor == "dsl"]
    assert {"view.pupil", "pupil.note", "pupil.watch", "pupil.unwatch"} <= set(actions)
    assert "Repeated" not in "".join(details(env, "pupil.watch"))


def test_a_device_page_says_it_is_a_device_and_names_who_used_it(env: Env) -> None:
    store(env.policy, make_record(ts=NOW - timedelta(minutes=4), user=None, client_ip="10.1.9.9", host="anon.example",
                                  url="https://anon.example/"))
    env.login("dsl")
    page = env.client.get("/devices/10.1.9.9")
    assert page.status_code == 200 and "a device, not a person" in page.text
    assert "anon.example" in page.text
    assert 'href="/pupils/bob"' in page.text and "not signed in" in page.text
    assert "www.childline.org.uk" not in page.text
    assert env.client.get("/devices/not-an-address").status_code == 404
    assert ("dsl", "dsl", "view.device") in env.audit()


def test_the_queue_filter_survives_a_visit_to_an_incident(env: Env) -> None:
    env.login("dsl")
    queue = env.client.get("/incidents?risk=self-harm&status=all&user=alice&bogus=1").text
    assert re.search(r'<select id="risk" name="risk">.*<option selected>self-harm</option>', queue, re.S)
    link = re.search(r'href="(/incidents/1\?back=[^"]+)"', queue)
    assert link and "bogus" not in link[1]
    incident = env.client.get(link[1].replace("&amp;", "&")).text
    assert 'href="/incidents?risk=self-harm&amp;status=all&amp;user=alice"' in incident
    saved = env.client.post(link[1].replace("&amp;", "&"), data={"csrf": env.csrf("/incidents/1"), "note": "seen"})
    assert 'href="/incidents?risk=self-harm&amp;status=all&amp;user=alice"' in saved.text
    assert 'href="/pupils/alice"' in incident and 'href="/devices/10.1.2.3"' in incident


def test_pupil_pages_are_for_the_dsl_only(env: Env) -> None:
    for who in ("teacher", "it"):
        env.client.cookies.clear()
        env.login(who)
        token = env.csrf("/requests")
        for path in ("/pupils/alice", "/devices/10.1.2.3", f"/pupils/{quote('alice')}?page=2"):
            response = env.client.get(path)
            assert response.status_code == 403 and "childline" not in response.text, (who, path)
        for path, form in (("/incidents/1/outcomes", {"outcome": "police", "on": "2026-01-01"}),
                           ("/pupils/alice/notes", {"note": "x"}), ("/pupils/alice/watch", {"reason": "x"})):
            assert env.client.post(path, data={"csrf": token, **form}).status_code == 403, (who, path)
        assert (who, "teacher" if who == "teacher" else "it_admin", "denied") in env.audit()
    with env.db() as db:
        assert db.execute("SELECT count(*) FROM incident_outcomes").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM pupil_notes").fetchone() == (0,)


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "pack.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True).stdout


def test_referral_packs_hold_the_record_context_notes_outcomes_and_audit(env: Env, tmp_path: Path) -> None:
    store(env.policy, flagged_search(NOW - timedelta(days=3), user="alice", term="jak się zabić"))
    env.login("dsl")
    number = incident_of(env, "how to kill myself")
    token = env.csrf(f"/incidents/{number}")
    env.client.post(f"/incidents/{number}", data={"csrf": token, "note": "Spoke to her form tutor."})
    env.client.post(f"/incidents/{number}/outcomes", data={"csrf": token, "outcome": "social-care",
                                                          "on": date.today().isoformat(), "note": "MASH contacted"})
    env.client.post("/pupils/alice/notes", data={"csrf": token, "note": "Lives with her grandmother."})

    pdf = env.client.get(f"/incidents/{number}/referral.pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"] == f'attachment; filename="referral-incident-{number}.pdf"'
    text = pdf_text(pdf.content, tmp_path)
    for seen in ("Referral pack: incident", "how to kill myself", "childline", "Spoke to her form tutor.",
                 "Referred to children's social", "MASH contacted", "export.referral", "view.incident"):
        assert seen in text, seen
    assert "Lives with her grandmother" not in text  # the pupil's notes go in the pupil's pack

    rows = list(csv.reader(io.StringIO(env.client.get(f"/incidents/{number}/referral.csv").text.lstrip("\ufeff"))))
    assert ["Outcomes"] in rows and any("MASH contacted" in row for row in rows)
    assert any(row[2:4] == ["dsl", "export.referral"] or row[1:4] == ["dsl", "dsl", "export.referral"] for row in rows)

    pupil = pdf_text(env.client.get("/pupils/alice/referral.pdf").content, tmp_path)
    for seen in ("Referral pack: alice", "Lives with her grandmother.", "how to kill myself", "jak się zabić", "MASH contacted"):
        assert seen in pupil, seen
    assert pupil.index("jak się zabić") < pupil.index("how to kill myself")  # oldest incident first
    exports = [a for actor, _, a in env.audit() if a == "export.referral"]
    assert len(exports) == 3


def test_referral_packs_are_for_the_dsl_only(env: Env) -> None:
    env.login("it")
    for path in ("/incidents/1/referral.pdf", "/incidents/1/referral.csv", "/pupils/alice/referral.pdf"):
        response = env.client.get(path)
        assert response.status_code == 403 and "alice" not in response.text, path
    assert ("it", "it_admin", "denied") in env.audit()


def test_characters_the_pdf_font_lacks_are_marked_and_never_logged(env: Env, tmp_path: Path, caplog) -> None:
    store(env.policy, flagged_search(NOW - timedelta(days=1), user="mei", term="如何自杀"))
    env.login("dsl")
    with caplog.at_level("DEBUG"):
        pdf = env.client.get("/pupils/mei/referral.pdf")
    text = pdf_text(pdf.content, tmp_path)
    assert "????" in text and "the CSV pack has them all" in text
    assert "如" not in caplog.text
    assert "如何自杀" in env.client.get("/pupils/mei/referral.csv").text


def test_year_group_and_form_from_the_directory_show_on_the_pupil_and_the_incident(env: Env) -> None:
    async def stored() -> None:
        engine = create_engine(env.policy.gateway.database)
        try:
            await store_details(engine, {"alice": PupilDetails("Year 7", "7C")}, NOW - timedelta(days=200))
            await store_details(engine, {"alice": PupilDetails("Year 8", "8B"), "bob": PupilDetails(None, "9A")}, NOW)
        finally:
            await engine.dispose()

    env.login("dsl")
    assert "Year" not in env.client.get("/pupils/alice").text  # the directory has said nothing yet
    asyncio.run(stored())
    assert "Year 8 · form 8B" in env.client.get("/pupils/alice").text  # the latest look-up
    assert "Year 8 · form 8B" in env.client.get("/incidents/1").text
    assert "form 9A" in env.client.get("/pupils/bob").text


def test_outcomes_watch_list_directory_details_and_packs_on_postgres(database_url: str) -> None:
    """The same writes and reads on PostgreSQL: dates, upserts, the audit trail's JSON."""
    async def scenario() -> None:
        await upgrade(database_url)
        writer = RecordWriter(database_url, spool_path=journal_of(database_url))
        await writer.start()
        writer.submit(flagged_search(NOW - timedelta(hours=1)))
        await writer.close()
        engine = create_engine(database_url)
        try:
            item = (await incident_store.queue(engine, incident_store.IncidentFilter(user="alice")))[0]
            review = await mark_reviewed(engine, item.id, "dsl")
            assert timedelta(hours=1) <= review.waited < timedelta(hours=2)
            await record_outcome(engine, item.id, Outcome.IWF, date.today(), "reported", actor="dsl", role="dsl")
            assert [o.outcome for o in await outcomes.outcomes(engine, item.id)] == [Outcome.IWF]
            await pupils.watch(engine, "alice", "worried", actor="dsl", role="dsl")
            await pupils.watch(engine, "alice", "still worried", actor="dsl", role="dsl")
            assert (await pupils.watched(engine))["alice"].reason == "still worried"
            await store_details(engine, {"alice": PupilDetails("Year 9", "9B")}, NOW)
            await store_details(engine, {"alice": PupilDetails("Year 10", "10B")}, NOW)
            assert await pupils.year_and_form(engine, "alice") == pupils.YearAndForm("Year 10", "10B")
            pack = await referral.pupil_pack(engine, "alice", school="Test", made_by="dsl", now=NOW)
            assert "pupil.watch" in referral.pack_csv(pack) and referral.pack_pdf(pack).startswith(b"%PDF")
            times = await outcomes.review_times(engine, NOW - timedelta(days=1), NOW + timedelta(minutes=1))
            assert (times.reviewed, times.waiting) == (1, 0)
        finally:
            await engine.dispose()

    asyncio.run(scenario())
