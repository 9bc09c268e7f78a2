"""Safeguarding risk lexicon: which phrases in a search term or page text
suggest a pupil may be at risk, under which risk and how seriously.

The shipped phrases live in `lexicon/<language>.toml` (format described in
`lexicon/en.toml`); see LEXICON.md for sources, severities and known limits.

Matching runs one Aho-Corasick automaton over a *normalised* form of the text,
built the same way for phrases and for text:

1. Unicode compatibility-decompose, drop accents, case-fold and fold the
   letters NFKD leaves alone ("ł" -> "l", "ø" -> "o"), so "Samobójstwo",
   "SAMOBOJSTWO" and "ｓａｍｏｂｏｊｓｔｗｏ" are one string. Invisible format
   characters (zero-width spaces and joiners, soft hyphens, variation selectors)
   are dropped, and letters of other scripts that look like Latin ones are read
   as those (Unicode UTS #39 confusables: a Cyrillic "і" in "kіll" is "i").
2. Split into tokens of letters and digits; "@", "$", "!" and "|" stay inside a
   token, since leetspeak uses them as letters ("k!ll", "$uicide").
3. In a token that has at least one letter, read leetspeak digits and symbols
   as letters (0->o, 1->i, 3->e, 4->a, 5->s, 7->t, 8->b, 9->g, @->a, $->s,
   !->i, |->l). Tokens of digits alone ("1000", "2024") stay digits. "1" is
   also "l" ("ki11"), so text with a "1" is matched a second time reading it so.
4. Drop every separator and squeeze runs of one letter to one ("suiciiide",
   "kill" -> "kil"; digits are not squeezed: "1488" is not "148"), remembering
   where each token started and ended.

A match counts only when it starts at a token start and ends at a token end
(whole words: "skill myself" and "methodology" never match "kill myself" or
"meth"). Between those ends the text may be split anywhere ("kill-myself",
"killmyself", "k i l l  my self") for phrases of two or more words or of at
least SPLITTABLE_MIN letters; shorter one-word phrases may only be spelt out
letter by letter ("i s i s"), so that "this is is" is not "isis".

Misspellings: each phrase may list its own ("suicide ~ sucide"). Words also
match with two neighbouring interior letters swapped ("suicdie", "herion") from
SWAP_MIN letters, or one interior letter dropped ("marjuana") from DROP_MIN
letters, counted after squeezing; shorter words give too many real words
("cannabis" less a "b" is Portuguese "canais").

Benign near-misses are kept out by choosing phrases that carry the risk
("cut myself", not "cutting"; "how to make a bomb", not "bomb"), and by each
group's `exclude` phrases: a hit lying inside an excluded phrase of the same
risk ("drug store", "isis the goddess") is dropped.
"""

from __future__ import annotations

import json
import re
import tomllib
import unicodedata
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Protocol

import ahocorasick

from schoolgate.categories.taxonomy import Severity

RISKS: dict[str, str] = {
    "self-harm": "Self-harm and suicide",
    "extremism": "Extremism and radicalisation",
    "sexual-exploitation": "Sexual exploitation and grooming",
    "bullying": "Bullying",
    "drugs": "Drugs",
    "weapons-violence": "Weapons and violence",
}

LEXICON_DIR = Path(__file__).parent / "lexicon"
SPLITTABLE_MIN = 7
SWAP_MIN = 6
DROP_MIN = 8

_FOLD = str.maketrans({"ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ı": "i", "æ": "ae", "œ": "oe", "þ": "th"})
_LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a", "$": "s", "!": "i", "|": "l"}
_LEET_I = str.maketrans(_LEET)
_LEET_L = str.maketrans({**_LEET, "1": "l"})
_ASCII_OR_NOT = re.compile(r"([\x00-\x7f]+)|[^\x00-\x7f]+")
_TOKEN = re.compile(r"[@$]?[^\W_]+(?:[@$!|]+[^\W_]+)*")


@dataclass(frozen=True, slots=True)
class RiskHit:
    risk: str
    severity: Severity
    phrase: str  # the lexicon's canonical spelling, not the text as typed
    language: str


@dataclass(frozen=True, slots=True)
class _Pattern:
    hit: RiskHit
    splittable: bool
    excludes: bool  # an exclusion: suppresses same-risk hits inside its span


@dataclass(frozen=True, slots=True)
class _Normalised:
    text: str
    starts: list[bool]  # per character: begins a token
    ends: list[bool]  # per character: ends a token
    hard_splits: list[int]  # prefix count of boundaries between two multi-letter tokens

    def split_between(self, start: int, end: int) -> bool:
        """Whether a boundary between two multi-letter tokens lies inside [start, end]."""
        return self.hard_splits[end] - self.hard_splits[start] > 0


class _Spelt(Protocol):
    @property
    def splittable(self) -> bool: ...  # may be split by spaces anywhere between its ends


class PhraseAutomaton[V: _Spelt]:
    """Spellings compiled into one Aho-Corasick automaton over normalised text, matched as
    the module docstring says (whole words, split only where allowed): the one matcher the
    risk lexicon and content scoring (categories.content) share. `add` everything, then
    `compile`, then `spans`."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[Hashable, V]] = {}
        self._automaton = ahocorasick.Automaton()

    def add(self, spelling: str, kind: Hashable, value: V) -> None:
        """The first value added for a normalised spelling and kind wins."""
        key = _normalise(spelling).text
        if key:
            self._by_key.setdefault(key, {}).setdefault(kind, value)

    def compile(self) -> None:
        for key, values in self._by_key.items():
            self._automaton.add_word(key, (len(key), tuple(values.values())))
        if self._by_key:
            self._automaton.make_automaton()

    def __len__(self) -> int:
        """Distinct normalised spellings."""
        return len(self._by_key)

    def spans(self, normalised: _Normalised) -> Iterator[tuple[int, int, V]]:
        """(start, end, value) of every match in the text: whole words, and split between
        its ends only for a splittable value."""
        if not self._by_key:
            return
        for end, (length, values) in self._automaton.iter(normalised.text):
            start = end - length + 1
            if not (normalised.starts[start] and normalised.ends[end]):
                continue  # whole words only: "scunthorpe" holds no phrase
            split = normalised.split_between(start, end)
            yield from ((start, end, value) for value in values if value.splittable or not split)


@cache
def _confusables() -> dict[int, str]:
    """Non-ASCII characters that UTS #39 lists as confusable with an ASCII letter or
    digit, mapped to it (letters preferred), from the Unicode data that the
    confusable-homoglyphs package ships."""
    table = json.loads((resources.files("confusable_homoglyphs") / "confusables.json").read_text(encoding="utf-8"))
    letters: dict[int, str] = {}
    digits: dict[int, str] = {}
    for key, homoglyphs in table.items():
        for glyph in (entry["c"] for entry in homoglyphs):
            for source, target in ((key, glyph), (glyph, key)):
                if len(source) == 1 and not source.isascii() and len(target) == 1 and target.isascii() and target.isalnum():
                    if source.isupper() and target == "l":
                        target = "1"  # a capital I-alike (Greek Ι, Cyrillic І) reads as "i" or "l", like leetspeak's "1"
                    (letters if target.isalpha() else digits).setdefault(ord(source), target)
    return {**digits, **letters}


def _visible(c: str) -> bool:
    return not (unicodedata.combining(c) or unicodedata.category(c) == "Cf" or "\ufe00" <= c <= "\ufe0f")


def _fold_unicode(run: str) -> str:
    run = run.translate(_confusables())  # before case-folding: Greek "Κ" looks like "K", its "κ" like nothing
    decomposed = unicodedata.normalize("NFKD", run.casefold().translate(_FOLD))
    return "".join(c for c in decomposed if _visible(c)).translate(_confusables())


def _fold_run(match: re.Match[str]) -> str:
    return match.group().lower() if match.group(1) else _fold_unicode(match.group())


def _tokens(text: str, leet: dict[int, str]) -> list[str]:
    # Every step above leaves ASCII as it is but for case, so only non-ASCII runs take the
    # slow path (pages are long and mostly ASCII; a curly quote must not slow the rest).
    plain = text.lower() if text.isascii() else _ASCII_OR_NOT.sub(_fold_run, text)
    tokens = _TOKEN.findall(plain)
    # Most tokens are plain words: only the others need the per-character steps (pages are long).
    for n, token in enumerate(tokens):
        if not token.isalpha():
            if not token.isdigit() and any(c.isalpha() for c in token):
                token = token.translate(leet)
            tokens[n] = token if token.isalnum() else "".join(c for c in token if c.isalnum())
    return tokens


def _normalise(text: str, leet: dict[int, str] = _LEET_I) -> _Normalised:
    chars: list[str] = []
    starts: list[bool] = []
    ends: list[bool] = []
    hard_after: list[bool] = []  # a multi-letter/multi-letter boundary follows this character
    previous_long = False
    for token in _tokens(text, leet):
        long = len(token) > 1
        for i, c in enumerate(token):
            first, last = i == 0, i == len(token) - 1
            if chars and chars[-1] == c and c.isalpha():
                # A squeezed letter keeps both roles: "kill lamb" holds "kil" and "lamb".
                starts[-1] |= first
                ends[-1] |= last
                continue
            if first and chars:
                hard_after[-1] = long and previous_long
            chars.append(c)
            starts.append(first)
            ends.append(last)
            hard_after.append(False)
        previous_long = long
    prefix = [0]
    for hard in hard_after:
        prefix.append(prefix[-1] + hard)
    return _Normalised("".join(chars), starts, ends, prefix)


def _normalisations(text: str) -> Iterator[_Normalised]:
    yield _normalise(text)
    if "1" in text:
        yield _normalise(text, _LEET_L)


def _typo_variants(phrase: str) -> set[str]:
    """The phrase with one interior letter of a long word dropped, or two swapped."""
    words = [_normalise(token).text for token in _tokens(phrase, _LEET_I)]
    variants: set[str] = set()
    for n, word in enumerate(words):
        if not word.isalpha():
            continue
        edits: set[str] = set()
        if len(word) >= SWAP_MIN:
            edits |= {word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(1, len(word) - 2)}
        if len(word) >= DROP_MIN:
            edits |= {word[:i] + word[i + 1 :] for i in range(1, len(word) - 1)}
        # An edit that makes a double letter squeezes into a shorter, likelier real word ("matate" -> "maatte" -> "mate").
        edits = {edit for edit in edits if _normalise(edit).text == edit}
        variants |= {" ".join([*words[:n], edit, *words[n + 1 :]]) for edit in edits}
    return variants


@dataclass(frozen=True, slots=True)
class _Group:
    risk: str
    severity: Severity
    language: str
    phrases: tuple[str, ...]  # each "canonical ~ misspelling ~ ..."
    exclude: tuple[str, ...]


def _split_phrases(entries: Iterable[str]) -> Iterator[list[str]]:
    for entry in entries:
        for phrase in entry.split("|"):
            spellings = [s.strip() for s in phrase.split("~") if s.strip()]
            if spellings:
                yield spellings


def load_groups(path: Path) -> list[_Group]:
    """The phrase groups of one lexicon file; ValueError names what is wrong."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    language = data["language"]
    groups = []
    for raw in data.get("group", []):
        if raw["risk"] not in RISKS:
            raise ValueError(f"{path.name}: unknown risk {raw['risk']!r}; known: {', '.join(RISKS)}")
        if raw["severity"].upper() not in Severity.__members__:
            raise ValueError(f"{path.name}: unknown severity {raw['severity']!r}")
        groups.append(
            _Group(
                risk=raw["risk"],
                severity=Severity[raw["severity"].upper()],
                language=language,
                phrases=tuple(raw["phrases"]),
                exclude=tuple(raw.get("exclude", ())),
            )
        )
    return groups


class RiskLexicon:
    """Risk phrases compiled into one automaton; see the module docstring for how text is matched."""

    def __init__(self, groups: Iterable[_Group]) -> None:
        self._patterns: PhraseAutomaton[_Pattern] = PhraseAutomaton()
        self._phrases: set[tuple[str, str]] = set()

        def add(spelling: str, pattern_for: _Pattern) -> None:
            # First loaded wins for a key and risk: "cocaine" is one English hit, not three.
            self._patterns.add(spelling, (pattern_for.hit.risk, pattern_for.excludes), pattern_for)

        typos: list[tuple[str, _Pattern]] = []
        for group in groups:
            for spellings in _split_phrases(group.phrases):
                hit = RiskHit(group.risk, group.severity, spellings[0], group.language)
                for spelling in spellings:
                    self._phrases.add((group.risk, spelling))
                    pattern = _Pattern(hit, _splittable(spelling), excludes=False)
                    add(spelling, pattern)
                    typos.extend((typo, pattern) for typo in _typo_variants(spelling))
            for spellings in _split_phrases(group.exclude):
                for spelling in spellings:
                    add(spelling, _Pattern(RiskHit(group.risk, Severity.NONE, spelling, group.language), True, excludes=True))
        # After every listed phrase, so a generated typo never shadows a real phrase's severity.
        for typo, pattern in typos:
            add(typo, pattern)

        self._patterns.compile()
        self.pattern_count = len(self._patterns)

    @classmethod
    def load(cls, directory: Path = LEXICON_DIR) -> RiskLexicon:
        """Every `*.toml` lexicon in a directory, English first so it names shared words."""
        files = sorted(directory.glob("*.toml"), key=lambda p: (p.stem != "en", p.stem))
        return cls(group for path in files for group in load_groups(path))

    @classmethod
    @cache
    def default(cls) -> RiskLexicon:
        """The shipped lexicon, compiled once per process."""
        return cls.load()

    def __len__(self) -> int:
        """Phrases and listed misspellings (not generated typos)."""
        return len(self._phrases)

    def match(self, text: str) -> list[RiskHit]:
        """Every distinct risk phrase in the text, highest severity first."""
        found: dict[tuple[str, str], RiskHit] = {}
        for normalised in _normalisations(text):
            for hit in self._hits(normalised):
                found.setdefault((hit.risk, hit.phrase), hit)
        return sorted(found.values(), key=lambda h: (-h.severity, h.risk, h.phrase))

    def worst(self, text: str) -> RiskHit | None:
        hits = self.match(text)
        return hits[0] if hits else None

    def _hits(self, normalised: _Normalised) -> list[RiskHit]:
        spans = list(self._patterns.spans(normalised))
        exclusions = [(start, end, p.hit.risk) for start, end, p in spans if p.excludes]
        return [
            p.hit
            for start, end, p in spans
            if not p.excludes and not any(risk == p.hit.risk and s <= start and end <= e for s, e, risk in exclusions)
        ]


def _splittable(phrase: str) -> bool:
    tokens = _tokens(phrase, _LEET_I)
    return len(tokens) > 1 or sum(map(len, tokens)) >= SPLITTABLE_MIN
