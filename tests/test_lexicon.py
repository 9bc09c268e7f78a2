"""Risk lexicon: obfuscated and other-language variants are caught, benign
near-misses are not, and the shipped data is well-formed."""

from __future__ import annotations

from pathlib import Path

import pytest

from schoolgate.categories.lexicon import LEXICON_DIR, RISKS, RiskHit, RiskLexicon, load_groups
from schoolgate.categories.taxonomy import Severity


@pytest.fixture(scope="module")
def lexicon() -> RiskLexicon:
    return RiskLexicon.default()


def phrases(hits: list[RiskHit]) -> set[tuple[str, str]]:
    return {(h.risk, h.phrase) for h in hits}


@pytest.mark.parametrize(
    "text",
    [
        "kill myself",
        "KILL MYSELF",
        "k i l l  my self",
        "kill-myself",
        "killmyself",
        "kill.my.self",
        "k1ll mys3lf",
        "ki11 myself",  # "1" read as "l"
        "kiiiill myyyself",
        "I think I'll kill myself tonight!!",
    ],
)
def test_obfuscated_spellings_are_caught(lexicon: RiskLexicon, text: str) -> None:
    assert ("self-harm", "kill myself") in phrases(lexicon.match(text))


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("suiciiide", "suicide"),
        ("sucide", "suicide"),  # listed misspelling
        ("suicdie", "suicide"),  # generated: swapped letters
        ("suicde", "suicide"),  # listed
        ("herion", "heroin"),  # listed
        ("heorin", "heroin"),  # generated: swapped letters
        ("methamphetmine", "methamphetamine"),  # generated: dropped letter
        ("maijuana", "marijuana"),
        ("$u1c1d3", "suicide"),
        ("Suïcide", "suicide"),
        ("ｓｕｉｃｉｄｅ", "suicide"),  # full-width
        ("cociane", "cocaine"),
    ],
)
def test_misspellings_leetspeak_and_accents(lexicon: RiskLexicon, text: str, phrase: str) -> None:
    assert phrase in {h.phrase for h in lexicon.match(text)}


@pytest.mark.parametrize(
    ("text", "language", "risk"),
    [
        ("jak się zabić", "pl", "self-harm"),
        ("jak sie zabic", "pl", "self-harm"),  # typed without Polish letters
        ("CHCE SIE ZABIC", "pl", "self-harm"),
        ("gdzie kupić dopalacze", "pl", "drugs"),
        ("comment se suicider", "fr", "self-harm"),
        ("je veux mourir", "fr", "self-harm"),
        ("comment fabriquer une bombe", "fr", "weapons-violence"),
        ("cómo suicidarme", "es", "self-harm"),
        ("como suicidarme", "es", "self-harm"),
        ("quiero matarme", "es", "self-harm"),
        ("me hacen bullying", "es", "bullying"),
    ],
)
def test_other_languages(lexicon: RiskLexicon, text: str, language: str, risk: str) -> None:
    worst = lexicon.worst(text)
    assert worst is not None and worst.language == language and worst.risk == risk


@pytest.mark.parametrize(
    "text",
    [
        "cutting board",
        "kill time",
        "how to kill time on a train",
        "shoot a photo",
        "drug store opening hours",
        "drugstore near me",
        "isis the goddess",
        "egyptian goddess isis",
        "this is is a typo",
        "overdose of vitamin d symptoms",
        "bomb the test",
        "skill myself up in python",
        "methodology",
        "weed killer",
        "suicide squad cast",
        "heroine of the novel",
        "american bully puppy",
        "grooming my dog",
        "ecstasy of gold lyrics",
        "1000 ways to die",
        "148 in addr arpa",  # digits are not squeezed into "1488"
        "canais de tv",  # Portuguese, one letter from "cannabis"
        "mate desktop",  # a swap in "mátate" would squeeze to "mate"
    ],
)
def test_benign_near_misses_are_not_flagged(lexicon: RiskLexicon, text: str) -> None:
    assert lexicon.match(text) == []


def test_intent_outranks_topic(lexicon: RiskLexicon) -> None:
    hits = lexicon.match("best way to kill myself")
    assert hits[0] == RiskHit("self-harm", Severity.CRITICAL, "best way to kill myself", "en")
    assert [h.severity for h in hits] == sorted((h.severity for h in hits), reverse=True)
    assert lexicon.worst("suicide").severity == Severity.MEDIUM  # type: ignore[union-attr]
    assert lexicon.worst("how to self harm").severity >= Severity.HIGH  # type: ignore[union-attr]
    assert lexicon.worst("nothing to see here") is None


def test_hits_are_distinct_and_cover_several_risks(lexicon: RiskLexicon) -> None:
    hits = lexicon.match("buy weed and buy weed, then how to make a bomb")
    assert len(hits) == len(set(hits))
    assert {h.risk for h in hits} == {"drugs", "weapons-violence"}


def test_exclusion_only_covers_its_own_span(lexicon: RiskLexicon) -> None:
    assert phrases(lexicon.match("isis the goddess and join isis")) >= {("extremism", "join isis")}
    assert ("drugs", "drugs") in phrases(lexicon.match("drug store selling drugs"))


def test_shipped_lexicon_is_large_and_complete(lexicon: RiskLexicon) -> None:
    assert len(lexicon) >= 500
    languages = {g.language for path in LEXICON_DIR.glob("*.toml") for g in load_groups(path)}
    assert {"en", "pl", "fr", "es"} <= languages
    for language in languages:
        risks = {g.risk for path in LEXICON_DIR.glob(f"{language}.toml") for g in load_groups(path)}
        assert risks == set(RISKS), language


def test_default_is_built_once() -> None:
    assert RiskLexicon.default() is RiskLexicon.default()


def test_custom_lexicon_and_bad_risk(tmp_path: Path) -> None:
    (tmp_path / "xx.toml").write_text(
        'language = "xx"\n[[group]]\nrisk = "drugs"\nseverity = "high"\nphrases = ["foo bar | bazq ~ bazk"]\n'
    )
    custom = RiskLexicon.load(tmp_path)
    assert len(custom) == 3
    assert [h.phrase for h in custom.match("Foo-Bar and BAZK")] == ["bazq", "foo bar"]
    (tmp_path / "xx.toml").write_text('language = "xx"\n[[group]]\nrisk = "gambling"\nseverity = "high"\nphrases = ["x"]\n')
    with pytest.raises(ValueError, match="unknown risk 'gambling'"):
        RiskLexicon.load(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "how to k\u0456ll myself",  # Cyrillic і
        "h\u043ew t\u043e kill mys\u0435lf",  # Cyrillic о, о, е
        "HOW TO K\u0406LL MYSELF",  # Cyrillic capital І
        "\u0397\u039fW \u03a4\u039f \u039a\u0399LL \u039c\u03a5S\u0395LF",  # Greek capitals
        "how to kill my\u200bself",  # zero-width space
        "how to k\u00adill myself",  # soft hyphen
        "how to ki\u200dll myself",  # zero-width joiner
        "how to \U0001d48c\U0001d48a\U0001d48d\U0001d48d myself",  # mathematical script letters
    ],
)
def test_confusable_and_invisible_characters_are_folded(lexicon: RiskLexicon, text: str) -> None:
    hit = lexicon.worst(text)
    assert hit is not None and hit.phrase == "how to kill myself" and hit.severity == Severity.CRITICAL


@pytest.mark.parametrize(
    ("text", "risk", "severity"),
    [
        ("how many paracetamol would kill me", "self-harm", Severity.CRITICAL),
        ("how many pills to od", "self-harm", Severity.CRITICAL),
        ("how many sleeping pills to die", "self-harm", Severity.CRITICAL),
        ("lethal dose of sertraline", "self-harm", Severity.CRITICAL),
        ("buy sodium nitrite", "self-harm", Severity.CRITICAL),
        ("i want to kms", "self-harm", Severity.CRITICAL),
        ("barcode wrists", "self-harm", Severity.HIGH),
        ("ana coach", "self-harm", Severity.HIGH),
        ("i dont want to be alive", "self-harm", Severity.HIGH),
        ("self delete", "self-harm", Severity.HIGH),
        ("nudes for robux", "sexual-exploitation", Severity.HIGH),
        ("buy xans", "drugs", Severity.HIGH),
        ("snapchat dealer", "drugs", Severity.HIGH),
        ("k hole", "drugs", Severity.MEDIUM),
        ("how to make a shank", "weapons-violence", Severity.HIGH),
    ],
)
def test_slang_and_overdose_phrasings(lexicon: RiskLexicon, text: str, risk: str, severity: Severity) -> None:
    hit = lexicon.worst(text)
    assert hit is not None and (hit.risk, hit.severity) == (risk, severity)


@pytest.mark.parametrize(
    "text",
    ["5 kms to london", "ketchup recipe", "percentage 30", "lean meat recipe", "lamb shank recipe",
     "how to delete myself from google", "a barcode scanner", "\u043f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440"],
)
def test_slang_keeps_whole_words(lexicon: RiskLexicon, text: str) -> None:
    assert lexicon.worst(text) is None
