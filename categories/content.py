"""Content scoring: what a page (or an AI answer, or a prompt) is about, read
from its text, for sites no list knows.

Weighted phrase lists in the style of e2guardian: each phrase adds its weight
to one category every time it appears (at most MAX_REPEATS times, so a page
cannot score by repeating one word), and *context* phrases (a helpline, a
lesson, a news report, sex education) take weight away from the categories
they speak for, so the NHS page on self-harm and the Samaritans' page pass
while a page teaching methods does not. The policy turns scores into verdicts
(per-group `block_at` and `flag_at`); this module only scores and explains.

Phrase lists live in `phrases/<language>.toml` (format in `phrases/en.toml`);
schools add their own files through `[content] phrase_files`. Text is read the
way the risk lexicon reads search terms (`categories.lexicon`: case, accents,
confusables, leetspeak, repeated letters, whole words), with its normaliser,
so "P0RN", "pörn" and "p o r n" are one phrase. Generated misspellings are
not used here: pages are written by their authors, not typed in a hurry, and
typo variants over whole pages cost precision.

`page_text` turns an HTML, JSON, server-sent-event or plain-text body into the
text a reader sees (titles, alt text and descriptions included; scripts and
styles dropped). Plain Python: no mitmproxy, no I/O beyond reading the lists.
"""

from __future__ import annotations

import html
import json
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# The lexicon's reading of text, shared so that pages and searches are read alike.
from schoolgate.categories.lexicon import (
    _LEET_L,
    PhraseAutomaton,
    _normalise,
    _Normalised,
    _split_phrases,
    _splittable,
)
from schoolgate.mediatypes import media_type

PHRASES_DIR = Path(__file__).parent / "phrases"
# The categories content can be scored for: each is a taxonomy id, so a content
# verdict speaks the same language as the lists (block page, flags, reports).
CONTENT_CATEGORIES: tuple[str, ...] = ("pornography", "self-harm", "extremism", "gambling", "hate", "weapons", "drugs")
# A "1" in the same word as a letter ("ki11", "h1gh"): only then is the text read a second
# time with "1" as "l", as the lexicon reads search terms; "116 123" or "2024" need no second reading.
_ONE_IN_A_WORD = re.compile(r"1[\w@$!|]*[^\W\d_]|[^\W\d_][\w@$!|]*1")
# One phrase counts at most this many times: repetition is evidence, but a
# page saying "casino" forty times is not forty times as much a casino.
MAX_REPEATS = 3


@dataclass(frozen=True, slots=True)
class Phrase:
    text: str  # the list's canonical spelling, which is what people are shown
    categories: tuple[str, ...]  # one for a scoring phrase; a context phrase may speak for several
    weight: int  # negative for context
    language: str
    source: str  # "en.toml group #3", for explain
    spellings: tuple[str, ...] = ()  # other spellings listed with "~"


@dataclass(frozen=True, slots=True)
class PhraseCount:
    phrase: Phrase
    count: int

    @property
    def counted(self) -> int:
        return min(self.count, MAX_REPEATS)

    @property
    def score(self) -> int:
        return self.phrase.weight * self.counted


@dataclass(frozen=True, slots=True)
class ContentScore:
    """Scores per category of one text, and the phrases behind them."""

    scores: Mapping[str, int]  # only the categories some phrase spoke for
    phrases: tuple[PhraseCount, ...]  # strongest first
    text_chars: int = 0  # how much text was scored

    @property
    def top(self) -> tuple[str, int] | None:
        """The highest-scoring category (ties: CONTENT_CATEGORIES order), if any scored above zero."""
        ranked = sorted(self.scores.items(), key=lambda item: (-item[1], CONTENT_CATEGORIES.index(item[0])))
        return ranked[0] if ranked and ranked[0][1] > 0 else None

    def phrases_for(self, category: str) -> list[PhraseCount]:
        return [p for p in self.phrases if category in p.phrase.categories]

    def detail(self, category: str, limit: int = 8) -> str:
        """One line for the record and the DSL: `self-harm 85: "cut deeper" +40x2, "samaritans" -30x1`."""
        shown = self.phrases_for(category)
        parts = [f'"{p.phrase.text}" {p.phrase.weight:+d}x{p.counted}' for p in shown[:limit]]
        more = f", {len(shown) - limit} more" if len(shown) > limit else ""
        return f"{category} {self.scores.get(category, 0)}: {', '.join(parts)}{more}"


EMPTY_SCORE = ContentScore({}, ())


class PhraseListError(ValueError):
    """A phrase file that cannot be used; the message names the file and the problem."""


_KEYS = {"group": {"category", "weight", "phrases"}, "context": {"categories", "weight", "phrases"}}


def load_phrases(path: Path) -> list[Phrase]:
    """Every phrase of one file; PhraseListError names the file, the table and what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PhraseListError(f"{path}: {e}") from e
    language = data.get("language", path.stem)
    unknown_tables = set(data) - {"language", *_KEYS}
    if unknown_tables:
        raise PhraseListError(f"{path}: unknown key(s) {', '.join(sorted(unknown_tables))}; expected [[group]] or [[context]]")
    phrases: list[Phrase] = []
    for table, keys in _KEYS.items():
        for n, raw in enumerate(data.get(table, []), 1):
            where = f"{path.name} {table} #{n}"
            extra = set(raw) - keys
            if extra:
                raise PhraseListError(f"{path}: [[{table}]] #{n}: unknown key(s) {', '.join(sorted(extra))}")
            categories = [raw["category"]] if table == "group" and "category" in raw else raw.get("categories", [])
            if not categories or any(c not in CONTENT_CATEGORIES for c in categories):
                raise PhraseListError(
                    f"{path}: [[{table}]] #{n}: categories must be among {', '.join(CONTENT_CATEGORIES)} (got {categories!r})")
            weight = raw.get("weight")
            if not isinstance(weight, int) or isinstance(weight, bool) or (weight > 0) != (table == "group") or not weight:
                raise PhraseListError(
                    f"{path}: [[{table}]] #{n}: weight must be a whole number, above 0 in [[group]], below 0 in [[context]]")
            for spellings in _split_phrases(raw.get("phrases", [])):
                phrases.append(Phrase(spellings[0], tuple(categories), weight, language, where, tuple(spellings[1:])))
    return phrases


@dataclass(frozen=True, slots=True)
class _Entry:
    phrase: Phrase
    splittable: bool  # may be split by spaces anywhere (see categories.lexicon)


class ContentScorer:
    """Phrase lists compiled into one Aho-Corasick automaton over normalised text."""

    def __init__(self, phrases: Iterable[Phrase]) -> None:
        self._entries: PhraseAutomaton[_Entry] = PhraseAutomaton()
        self.phrases = list(phrases)
        for phrase in self.phrases:
            for spelling in (phrase.text, *phrase.spellings):
                # First loaded wins for a key and categories: a word shared by two languages counts once.
                self._entries.add(spelling, phrase.categories, _Entry(phrase, _splittable(spelling)))
        self._entries.compile()
        self.pattern_count = len(self._entries)

    @classmethod
    def load(cls, files: Iterable[Path] = ()) -> ContentScorer:
        """The shipped lists (English first, so it names words shared between languages), then `files`."""
        shipped = sorted(PHRASES_DIR.glob("*.toml"), key=lambda p: (p.stem != "en", p.stem))
        return cls(phrase for path in [*shipped, *files] for phrase in load_phrases(Path(path)))

    @classmethod
    @cache
    def default(cls) -> ContentScorer:
        """The shipped lists, compiled once per process."""
        return cls.load()

    def score(self, text: str) -> ContentScore:
        """Every phrase in the text with its count, and the score per category."""
        if not text or not self.pattern_count:
            return EMPTY_SCORE
        counts = self._count(_normalise(text))
        # Read again with "1" as "l" where a "1" sits in a word; keep each phrase's larger count.
        again: dict[Phrase, int] = {}
        for window in _windows_around(_ONE_IN_A_WORD, text):
            for phrase, count in self._count(_normalise(window, _LEET_L)).items():
                again[phrase] = again.get(phrase, 0) + count
        for phrase, count in again.items():
            counts[phrase] = max(count, counts.get(phrase, 0))
        found = sorted((PhraseCount(p, c) for p, c in counts.items()), key=lambda pc: (-abs(pc.score), pc.phrase.text))
        scores: dict[str, int] = {}
        for pc in found:
            for category in pc.phrase.categories:
                scores[category] = scores.get(category, 0) + pc.score
        return ContentScore(scores, tuple(found), len(text))

    def _count(self, normalised: _Normalised) -> dict[Phrase, int]:
        spans = [(start, end, entry.phrase) for start, end, entry in self._entries.spans(normalised)]
        # A phrase lying inside a longer one of the same categories counts as the longer one
        # only ("how to kill yourself" is not also "kill yourself").
        spans.sort(key=lambda span: (span[0], -span[1]))
        reach: dict[tuple[str, ...], int] = {}
        counts: dict[Phrase, int] = {}
        for _start, end, phrase in spans:
            if reach.get(phrase.categories, -1) >= end:
                continue
            reach[phrase.categories] = end
            counts[phrase] = counts.get(phrase, 0) + 1
        return counts


def _windows_around(pattern: re.Pattern[str], text: str, reach: int = 160) -> Iterator[str]:
    """The parts of a text within `reach` characters of a match, overlapping parts joined,
    each widened to whole words: the longest phrase is far shorter than `reach`."""
    start = end = -1
    for match in pattern.finditer(text):
        left, right = max(0, match.start() - reach), match.end() + reach
        if start >= 0 and left <= end:
            end = right
            continue
        if start >= 0:
            yield _whole_words(text, start, end)
        start, end = left, right
    if start >= 0:
        yield _whole_words(text, start, end)


def _whole_words(text: str, start: int, end: int) -> str:
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end]


# --- what a reader sees -----------------------------------------------------------------

_HIDDEN = re.compile(r"<(script|style|svg|template|noscript)\b.*?(?:</\1\s*>|\Z)", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
# Attribute text a reader (or a screen reader) is shown: alt text, titles, descriptions.
_SHOWN_ATTRIBUTE = re.compile(
    r"""\b(?:alt|title|aria-label|placeholder|content)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*(?:>|\Z)")
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\[nrt/\"\\]")
_JSON_SIMPLE = {"\\n": " ", "\\r": " ", "\\t": " ", "\\/": "/", '\\"': '"', "\\\\": "\\"}
# Fields that carry the words of an AI answer in the services' event streams.
_TEXT_FIELDS = frozenset({"text", "content", "v", "delta", "completion", "parts", "message", "value", "response"})


# Types that tell a browser nothing, so it sniffs the body (WHATWG MIME Sniffing).
UNTYPED = frozenset({"", "unknown/unknown", "application/unknown", "*/*"})
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")  # the spec's "binary data bytes"


def sniffed_type(head: bytes) -> str | None:
    """What a browser takes a body sent without a usable Content-Type for, from its first
    bytes: HTML when it opens with a tag (after a BOM and white space; wider than the
    browser's list of tags, so nothing it renders is missed), plain text when it has no
    binary bytes; None for the rest (images, downloads), which are not read."""
    if head[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return "text/plain; charset=utf-16"  # shown as text; the BOM says the byte order
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip(b"\t\n\x0c\r ")
    if start[:1] == b"<":
        return "text/html"
    return None if _BINARY.search(head) else "text/plain"


def page_text(body: str, content_type: str = "") -> str:
    """The text a reader sees in a body of this type (HTML, JSON, server-sent events, plain text).

    Works on a prefix of a body too: an unclosed tag or script at the end is dropped.
    """
    kind = media_type(content_type)
    if kind == "text/event-stream":
        return event_stream_text(body)
    if kind.endswith("json") or kind == "application/javascript":
        return _json_text(body)
    if kind in ("text/html", "application/xhtml+xml") or (not kind and body.lstrip()[:1] == "<"):
        return html_text(body)
    return body


def html_text(body: str) -> str:
    body = _COMMENT.sub(" ", _HIDDEN.sub(" ", body))
    shown = " ".join(a or b for a, b in _SHOWN_ATTRIBUTE.findall(body))
    return html.unescape(shown + " " + _TAG.sub(" ", body))


def _json_text(body: str) -> str:
    return _JSON_ESCAPE.sub(
        lambda m: chr(int(m.group(1), 16)) if m.group(1) else _JSON_SIMPLE[m.group(0)], body)


def event_stream_text(body: str) -> str:
    """The words of a server-sent event stream: the text fields of JSON events joined as the
    service streams them (each delta carries its own spaces), other data lines as they are."""
    pieces: list[str] = []
    for line in body.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        try:
            event = json.loads(data)
        except ValueError:
            pieces.append(f" {data} ")
            continue
        pieces.extend(_text_fields(event))
    return "".join(pieces)


def message_text(message: str) -> str:
    """The words of one WebSocket message of an AI chat: the text fields of its JSON records
    (SignalR separates several with \\x1e), joined as streamed; not JSON, the message itself."""
    pieces: list[str] = []
    for record in message.split("\x1e"):
        if not record.strip():
            continue
        try:
            pieces.extend(_text_fields(json.loads(record)))
        except ValueError:
            pieces.append(f" {record} ")
    return "".join(pieces)


def _text_fields(value: object, key: str | None = None) -> Iterator[str]:
    if isinstance(value, str):
        if key in _TEXT_FIELDS:
            yield value
    elif isinstance(value, list):
        for item in value:
            yield from _text_fields(item, key)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _text_fields(v, k)


# --- from a score to a verdict -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ContentVerdict:
    """What a score means under a group's thresholds."""

    action: str  # "block", "flag" or "pass"
    category: str | None
    score: int
    detail: str  # the phrases and scores that decided it, for the record and the DSL

    @property
    def blocks(self) -> bool:
        return self.action == "block"


def judge(score: ContentScore, *, block_at: int, flag_at: int) -> ContentVerdict:
    """Block from `block_at`, flag from `flag_at`, in the highest-scoring category."""
    top = score.top
    if top is None or top[1] < min(flag_at, block_at):
        return ContentVerdict("pass", top[0] if top else None, top[1] if top else 0, score.detail(top[0]) if top else "")
    category, value = top
    return ContentVerdict("block" if value >= block_at else "flag", category, value, score.detail(category))


_TYPES_BY_SUFFIX = {".html": "text/html", ".htm": "text/html", ".xhtml": "application/xhtml+xml",
                    ".json": "application/json", ".sse": "text/event-stream", ".txt": "text/plain"}


def saved_page_text(path: Path, content_type: str = "", limit: int | None = None) -> str:
    """The text a reader sees in (the first `limit` bytes of) a saved page, read as
    `content_type` or by its file name (.html, .json, .sse, .txt; anything else is sniffed:
    HTML when it starts with "<")."""
    kind = content_type or _TYPES_BY_SUFFIX.get(path.suffix.lower(), "")
    with path.open("rb") as page:
        return page_text(page.read(limit).decode("utf-8", "replace"), kind)


def explanation(score: ContentScore, verdict: ContentVerdict, *, block_at: int, flag_at: int) -> list[str]:
    """Lines for `schoolgate explain --content`: the verdict, each category's score, and
    every phrase found with its weight, count and where it is listed."""
    lines = [f"verdict:    {verdict.action.upper()}"
             + (f" ({verdict.category}, score {verdict.score})" if verdict.category else ""),
             f"thresholds: block from {block_at}, flag from {flag_at}",
             f"text:       {score.text_chars} characters scored"]
    for category, value in sorted(score.scores.items(), key=lambda item: -item[1]):
        lines.append(f"\n{category}: {value}")
        for pc in score.phrases_for(category):
            repeats = f" (found {pc.count}, counted {pc.counted})" if pc.count != pc.counted else ""
            lines.append(f"  {pc.score:+5d}  {pc.phrase.text!r} {pc.phrase.weight:+d} x{pc.counted}{repeats}"
                         f"  [{pc.phrase.language}, {pc.phrase.source}]")
    if not score.scores:
        lines.append("\nno phrase from the lists was found")
    return lines
