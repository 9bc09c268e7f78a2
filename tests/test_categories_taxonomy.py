"""The category taxonomy and the UT1 mapping."""

from __future__ import annotations

import pytest

from schoolgate.categories.taxonomy import CATEGORIES, HEADINGS, UT1_MAPPING, Category, Severity, category

REQUIRED_IDS = {
    "pornography", "adult-mixed", "lingerie", "sexual-education", "dating", "gambling", "drugs", "extremism", "hate",
    "violence", "weapons", "self-harm", "illegal", "malware", "phishing", "hacking", "cryptojacking", "stalkerware",
    "ddos", "piracy", "cheating", "cults", "vpn-proxy", "doh", "dynamic-dns", "url-shortener", "social-media", "chat",
    "forums", "blogs", "games", "educational-games", "streaming", "radio", "webmail", "shopping", "advertising",
    "filehosting", "downloads", "webhosting", "financial", "banking", "crypto", "news", "fake-news", "sports",
    "celebrity", "jobsearch", "cooking", "astrology", "religion", "education", "ai", "translation", "manga",
    "mobile-phone", "kids", "health",
}
HEADING_IDS = {"illegal", "discrimination", "drugs", "extremism", "gambling", "malware-hacking", "pornography",
               "piracy", "self-harm", "violence"}


def test_exactly_the_agreed_categories() -> None:
    assert set(CATEGORIES) == REQUIRED_IDS
    assert all(key == c.id and isinstance(c, Category) and c.title and c.description for key, c in CATEGORIES.items())


def test_headings() -> None:
    assert set(HEADINGS) == HEADING_IDS
    assert {c.heading for c in CATEGORIES.values()} - {None} == HEADING_IDS  # every heading is covered


@pytest.mark.parametrize(
    ("id", "heading", "severity"),
    [
        ("pornography", "pornography", Severity.CRITICAL),
        ("hate", "discrimination", Severity.HIGH),
        ("vpn-proxy", "malware-hacking", Severity.HIGH),  # UKSIC: filter bypass tools
        ("games", None, Severity.LOW),
    ],
)
def test_examples(id: str, heading: str | None, severity: Severity) -> None:
    assert (category(id).heading, category(id).severity) == (heading, severity)


def test_ut1_mapping_targets_are_categories() -> None:
    assert {v for v in UT1_MAPPING.values() if v is not None} <= set(CATEGORIES)
    assert UT1_MAPPING["drogue"] == UT1_MAPPING["drugs"] == "drugs"
    assert UT1_MAPPING["liste_blanche"] is None


def test_unknown_category_suggests() -> None:
    with pytest.raises(KeyError, match="did you mean pornography"):
        category("pornogaphy")
