"""Referral packs: everything the school holds on one incident or one pupil, as PDF and CSV,
to attach to a CPOMS or MyConcern record or hand to a referral partner.

A pack is built as plain sections (a title and rows) first, then written out as CSV (one block
per section) or as a PDF with fpdf2 (pure Python). The PDF uses DejaVu Sans when the system has it
(Debian's fonts-dejavu-core), so searches in Latin, Greek, Cyrillic, Arabic and Hebrew scripts
print; characters the font lacks (Chinese, for one; everything past Latin-1 without DejaVu) are
shown as "?", with a line saying so: the CSV keeps them all. Each pack ends with the audit trail of who viewed or changed
what it covers, the download itself included.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fpdf import FPDF
from fpdf.fonts import TTFFont
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.db import audit_log
from schoolgate.reports import incidents, outcomes, pupils
from schoolgate.reports.console.templating import duration, identified_by, local_time, severity_name
from schoolgate.reports.incidents import Incident, IncidentFilter
from schoolgate.reports.queries import surrounding
from schoolgate.reports.report import _csv

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
FONT_BOLD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
CONTEXT_MINUTES = 10


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    columns: tuple[str, ...]  # empty: rows are (field, value) pairs
    rows: list[tuple[str, ...]] = field(default_factory=list)
    widths: tuple[int, ...] = ()  # the columns' relative widths in the PDF (equal when empty)


@dataclass(frozen=True, slots=True)
class Pack:
    title: str
    school: str
    made: str  # who made it and when
    sections: list[Section]


def _text(value: object) -> str:
    return "" if value is None else str(value)


# --- gathering ------------------------------------------------------------------------------

async def _incident_sections(engine: AsyncEngine, item: Incident) -> list[Section]:
    r = item.record
    review = await outcomes.first_review(engine, item.id)
    facts = Section(f"Incident #{item.id}: {r.flag}", (), [
        ("When", local_time(r.ts)), ("Who", r.user or "not signed in (a device, not a person)"),
        ("Identified by", identified_by(r.identity_source)), ("Device", r.client_ip), ("Group", r.group),
        ("Risk", f"{r.flag} ({severity_name(r.flag_severity)})"), ("Why flagged", _text(r.flag_detail)),
        ("Search", f"{r.search_term} on {r.search_engine}" if r.search_term else ""),
        ("Address", r.url or r.host), ("Outcome of the request", r.verdict), ("Reference", _text(r.ref)),
        ("Status", item.status.value), ("Assigned to", item.assigned or ""),
        ("First reviewed", f"{duration(review.waited)} after it was flagged, by {review.by}" if review else "not yet"),
    ])
    context = Section(f"Context: the same {'pupil' if r.user else 'device'}, {CONTEXT_MINUTES} minutes either side",
                      ("Time", "Who", "Outcome", "Risk", "Address or search"), [
        (local_time(c.ts, "%H:%M:%S"), c.user or "not signed in", c.verdict, _text(c.flag),
         f"\u201c{c.search_term}\u201d on {c.search_engine}" if c.search_term else c.url or c.host)
        for _, c in await surrounding(engine, item.record_id, CONTEXT_MINUTES)], (2, 3, 2, 3, 8))
    notes = Section("Notes and status changes", ("When", "Who", "Status", "Note"), [
        (local_time(n.ts), n.author, f"{n.status_from} -> {n.status_to}" if n.status_to else "", n.text)
        for n in await incidents.notes(engine, item.id)], (3, 2, 3, 8))
    done = Section("Outcomes", ("Date", "Outcome", "Recorded by", "Note"), [
        (o.on.isoformat(), o.outcome.title, f"{o.author}, {local_time(o.ts)}", o.note)
        for o in await outcomes.outcomes(engine, item.id)], (2, 6, 4, 5))
    return [facts, context, notes, done]


def _audit_section(rows: Iterable[tuple[datetime, str, str, str]]) -> Section:
    return Section("Who viewed or changed this (audit trail)", ("When", "Who", "Role", "Action"),
                   [(local_time(ts), actor, role, action) for ts, actor, role, action in rows])


async def _audit_rows(engine: AsyncEngine, incident_ids: list[int],
                      user: str | None) -> list[tuple[datetime, str, str, str]]:
    a = audit_log.c
    async with engine.connect() as conn:
        rows = list((await conn.execute(
            select(a.ts, a.actor, a.role, a.action, a.object_kind, a.object_id, a.after)
            .where(a.object_kind.in_(("incident", "pupil"))).order_by(a.id))).all())
    return [(r.ts, r.actor, r.role, r.action) for r in rows
            if (r.object_kind == "incident" and r.object_id in incident_ids)
            or (user is not None and r.object_kind == "pupil" and json.loads(r.after or "{}").get("user") == user)]


async def incident_pack(engine: AsyncEngine, item: Incident, *, school: str, made_by: str, now: datetime) -> Pack:
    sections = await _incident_sections(engine, item)
    sections.append(_audit_section(await _audit_rows(engine, [item.id], None)))
    return Pack(f"Referral pack: incident #{item.id}", school, f"Made by {made_by}, {local_time(now)}", sections)


async def pupil_pack(engine: AsyncEngine, user: str, *, school: str, made_by: str, now: datetime) -> Pack:
    items = await incidents.queue(engine, IncidentFilter(user=user), limit=10_000)
    watch = (await pupils.watched(engine)).get(user)
    sections = [Section(f"Pupil: {user}", (), [
        ("Incidents", str(len(items))),
        ("Watch list", f"since {local_time(watch.added_at)} ({watch.added_by}): {watch.reason}" if watch else "no")]),
        Section("Notes on the pupil", ("When", "Who", "Note"),
                [(local_time(n.ts), n.author, n.text) for n in await pupils.notes(engine, user)], (3, 2, 8))]
    for item in reversed(items):  # oldest first: the pupil's story in order
        sections += await _incident_sections(engine, item)
    sections.append(_audit_section(await _audit_rows(engine, [i.id for i in items], user)))
    return Pack(f"Referral pack: {user}", school, f"Made by {made_by}, {local_time(now)}", sections)


# --- writing -------------------------------------------------------------------------------

def pack_csv(pack: Pack) -> str:
    """One block per section: its title, its column names, its rows, a blank line."""
    lines: list[tuple[str, ...]] = [(pack.title,), (pack.school,), (pack.made,), ()]
    for section in pack.sections:
        lines += [(section.title,), section.columns or ("field", "value"), *section.rows, ()]
    return _csv(lines)


class _PDF(FPDF):
    def __init__(self, pack: Pack) -> None:
        super().__init__(format="A4")
        self.pack = pack
        self.unicode = FONT.exists() and FONT_BOLD.exists()
        if self.unicode:
            self.add_font("body", "", str(FONT))
            self.add_font("body", "B", str(FONT_BOLD))
        font = self.fonts.get("body")
        self.glyphs = frozenset(font.cmap) if isinstance(font, TTFFont) else frozenset()
        self.face = "body" if self.unicode else "helvetica"
        self.lost = False  # some characters could not be printed
        self.set_title(pack.title)
        self.set_auto_page_break(True, margin=15)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(self.face, size=8)
        self.cell(0, 5, self.safe(f"OFFICIAL-SENSITIVE: safeguarding record. {self.pack.title}, page {self.page_no()}"),
                  align="C")

    def safe(self, text: str) -> str:
        """Text the font can print; other characters become "?" (the CSV keeps them). Done here,
        not left to fpdf2, which would log the missing characters: pupils' searches, in a log."""
        if not self.unicode:
            printable = text.encode("latin-1", "replace").decode("latin-1")
        else:
            printable = "".join(ch if ord(ch) in self.glyphs or ch in "\n\t" else "?" for ch in text)
        self.lost = self.lost or printable != text
        return printable


def pack_pdf(pack: Pack) -> bytes:
    pdf = _PDF(pack)
    pdf.add_page()
    pdf.set_font(pdf.face, "B", 15)
    pdf.multi_cell(0, 8, pdf.safe(pack.title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(pdf.face, size=9)
    pdf.multi_cell(0, 5, pdf.safe(f"{pack.school}. {pack.made}."), new_x="LMARGIN", new_y="NEXT")
    for section in pack.sections:
        pdf.ln(3)
        pdf.set_font(pdf.face, "B", 11)
        pdf.multi_cell(0, 6, pdf.safe(section.title), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(pdf.face, size=8.5)
        if not section.rows:
            pdf.multi_cell(0, 5, "None.", new_x="LMARGIN", new_y="NEXT")
            continue
        columns = section.columns or ("", "")
        widths = section.widths or ((1, 3) if not section.columns else None)
        with pdf.table(col_widths=widths, first_row_as_headings=bool(section.columns), line_height=4.5) as table:
            for row in ([columns] if section.columns else []) + section.rows:
                line = table.row()
                for value in row:
                    line.cell(pdf.safe(value))
    if pdf.lost:
        pdf.ln(3)
        pdf.multi_cell(0, 5, "Some characters (shown as ?) are not in this server's PDF font: the CSV pack has "
                             "them all.", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
