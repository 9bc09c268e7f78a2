"""Content scoring, the pure part: phrase lists, scores, verdicts, what a reader sees,
and the labelled page corpus (tests/fixtures/pages)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from schoolgate.categories.content import (
    CONTENT_CATEGORIES,
    MAX_REPEATS,
    ContentScorer,
    PhraseListError,
    event_stream_text,
    html_text,
    judge,
    load_phrases,
    page_text,
)
from schoolgate.policy import PolicyInvalid, load_policy

PAGES = Path(__file__).parent / "fixtures" / "pages"
LABELS = tomllib.loads((PAGES / "labels.toml").read_text(encoding="utf-8"))
BLOCK_AT, FLAG_AT = 100, 50


@pytest.fixture(scope="module")
def scorer() -> ContentScorer:
    return ContentScorer.default()


def write(tmp_path: Path, text: str, name: str = "school.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the corpus ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LABELS))
def test_corpus_page_gets_its_label(scorer: ContentScorer, name: str) -> None:
    label = LABELS[name]
    score = scorer.score(page_text((PAGES / name).read_text(encoding="utf-8"), "text/html; charset=utf-8"))
    verdict = judge(score, block_at=BLOCK_AT, flag_at=FLAG_AT)
    explained = " | ".join(score.detail(c) for c in score.scores)
    if "block" in label:
        assert (verdict.action, verdict.category) == ("block", label["block"]), explained
    elif "flag" in label:
        assert (verdict.action, verdict.category) == ("flag", label["flag"]), explained
    else:
        assert verdict.action == "pass", explained


def test_corpus_covers_every_category_and_language() -> None:
    blocked = {label["block"] for label in LABELS.values() if "block" in label}
    assert blocked == set(CONTENT_CATEGORIES)
    languages = {(PAGES / name).read_text(encoding="utf-8").split('lang="')[1][:2]
                 for name in LABELS if 'lang="' in (PAGES / name).read_text(encoding="utf-8")}
    assert {"fr", "es", "pl"} <= languages
    assert sum("pass" in label for label in LABELS.values()) >= 15  # hard negatives
    assert set(LABELS) == {p.name for p in PAGES.glob("*.html")}


# --- scoring ------------------------------------------------------------------------------

def test_support_context_outweighs_the_topic(scorer: ContentScorer) -> None:
    harmful = scorer.score("Suicide methods: the most painless way to die and the lethal dose of pills.")
    supportive = scorer.score("Suicide methods are not something to look up alone. If you are having thoughts of "
                              "suicide, call Samaritans on 116 123. You are not alone.")
    assert harmful.scores["self-harm"] >= BLOCK_AT
    assert supportive.scores["self-harm"] < FLAG_AT
    assert any(p.phrase.text == "samaritans" and p.score < 0 for p in supportive.phrases)


def test_repetition_counts_at_most_max_repeats(scorer: ContentScorer) -> None:
    once = scorer.score("roulette")
    many = scorer.score(" ".join(["roulette"] * 40))
    assert many.scores["gambling"] == once.scores["gambling"] * MAX_REPEATS
    assert many.phrases[0].count == 40 and many.phrases[0].counted == MAX_REPEATS


def test_a_phrase_inside_a_longer_one_counts_once(scorer: ContentScorer) -> None:
    score = scorer.score("how to kill yourself")
    assert [p.phrase.text for p in score.phrases] == ["how to kill yourself"]


def test_evasions_are_read_like_the_lexicon_reads_searches(scorer: ContentScorer) -> None:
    for text in ("FR33 P0RN", "free pörn", "free  p o r n", "Frèe-Porn", "freeeee porn"):
        assert [p.phrase.text for p in scorer.score(text).phrases] == ["free porn"], text


def test_whole_words_only(scorer: ContentScorer) -> None:
    # "bet" inside "alphabet", "isis" inside "crisis", "anal" inside "analysis", "porn" inside nothing here.
    score = scorer.score("The alphabet crisis: an analysis of Scunthorpe's betterment plans")
    assert score.top is None and not [p for p in score.phrases if p.score > 0]


def test_languages(scorer: ContentScorer) -> None:
    assert scorer.score("comment se suicider, méthodes de suicide").top[0] == "self-harm"
    assert scorer.score("giros gratis y bono de bienvenida, apuesta ahora").top[0] == "gambling"
    assert scorer.score("darmowe porno, filmy porno").top[0] == "pornography"


def test_verdict_thresholds_and_detail(scorer: ContentScorer) -> None:
    score = scorer.score("bet now, free spins and a welcome bonus")  # 3 x 40
    assert judge(score, block_at=100, flag_at=50).action == "block"
    assert judge(score, block_at=200, flag_at=50).action == "flag"
    assert judge(score, block_at=200, flag_at=150).action == "pass"
    verdict = judge(score, block_at=100, flag_at=50)
    assert verdict.category == "gambling" and verdict.score == 120
    assert verdict.detail.startswith("gambling 120: ") and '"free spins" +40x1' in verdict.detail


def test_empty_and_harmless_text(scorer: ContentScorer) -> None:
    assert scorer.score("").top is None
    verdict = judge(scorer.score("Photosynthesis makes glucose."), block_at=100, flag_at=50)
    assert verdict.action == "pass" and verdict.category is None


# --- the school's own phrase files ------------------------------------------------------

def test_school_phrase_file_extends_the_lists(tmp_path: Path) -> None:
    extra = write(tmp_path, 'language = "en"\n[[group]]\ncategory = "gambling"\nweight = 60\n'
                            'phrases = ["lucky crate | mystery crate ~ mistery crate"]\n'
                            '[[context]]\ncategories = ["gambling"]\nweight = -60\nphrases = ["our maths club"]\n')
    scorer = ContentScorer.load([extra])
    assert scorer.score("open a mistery crate and a lucky crate").scores["gambling"] == 120
    assert scorer.score("our maths club opened a lucky crate").scores["gambling"] == 0
    assert ContentScorer.default().score("lucky crate").top is None


@pytest.mark.parametrize(("text", "problem"), [
    ('[[group]]\ncategory = "casinos"\nweight = 10\nphrases = ["x"]\n', "categories must be among"),
    ('[[group]]\ncategory = "gambling"\nweight = -10\nphrases = ["x"]\n', "above 0 in [[group]]"),
    ('[[context]]\ncategories = ["gambling"]\nweight = 10\nphrases = ["x"]\n', "below 0 in [[context]]"),
    ('[[group]]\ncategory = "gambling"\nweight = 10\nphrase = ["x"]\n', "unknown key(s) phrase"),
    ('[[groups]]\ncategory = "gambling"\n', "unknown key(s) groups"),
    ('[[group]\n', "school.toml"),
])
def test_bad_phrase_files_are_refused_with_the_reason(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(PhraseListError, match=problem.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_phrases(write(tmp_path, text))


def test_shipped_lists_load_and_stay_whole_words() -> None:
    for path in sorted((Path(__file__).parents[1] / "categories" / "phrases").glob("*.toml")):
        phrases = load_phrases(path)
        assert {c for p in phrases for c in p.categories if p.weight > 0} == set(CONTENT_CATEGORIES), path.name
        assert any(p.weight < 0 for p in phrases), path.name


# --- what a reader sees ------------------------------------------------------------------

def test_html_text_keeps_what_is_shown_and_drops_code() -> None:
    text = html_text('<html><head><title>Free &amp; easy</title><meta name="description" content="meta words">'
                     '<style>.porn{}</style><script>var casino = 1;</script></head><body><!-- hidden bet -->'
                     '<p>Shown <b>text</b></p><img alt="alt words"><script>never closed casino')
    assert "Free & easy" in text and "meta words" in text and "Shown" in text and "alt words" in text
    assert "casino" not in text and "porn" not in text and "hidden bet" not in text


def test_json_and_event_stream_text() -> None:
    assert "café killed" in page_text('{"a": "caf\\u00e9 killed\\n"}', "application/json")
    events = "".join(f"data: {json.dumps({'delta': {'text': piece}})}\n\n" for piece in ["How", " to", " kill", " yourself"])
    events += "event: ping\ndata: [DONE]\n\n"
    assert event_stream_text(events).startswith("How to kill yourself")
    chatgpt = 'data: {"message": {"content": {"parts": ["Free spins"]}}, "id": "abc123"}\n\n'
    assert page_text(chatgpt, "text/event-stream; charset=utf-8") == "Free spins"
    assert page_text("plain words", "text/plain") == "plain words"


# --- [content] in policy.toml ----------------------------------------------------------

POLICY = """\
[gateway]
default_group = "pupils"
[groups.pupils]
networks = ["10.0.0.0/8"]
[groups.staff]
networks = ["10.9.0.0/16"]
content_block_at = 300
"""


def policy_problems(tmp_path: Path, text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(PolicyInvalid) as caught:
        load_policy(write(tmp_path, text, "policy.toml"))
    return [(p.line, p.message) for p in caught.value.problems]


def test_content_settings_and_group_thresholds(tmp_path: Path) -> None:
    extra = write(tmp_path, '[[group]]\ncategory = "gambling"\nweight = 60\nphrases = ["lucky crate"]\n')
    policy = load_policy(write(tmp_path, POLICY + '[content]\nflag_at = 40\nmax_kib = 32\ncategories = ["forums"]\n'
                                               f'phrase_files = ["{extra.name}"]\n', "policy.toml"))
    assert policy.content.thresholds(policy.groups["pupils"]) == (100, 40)
    assert policy.content.thresholds(policy.groups["staff"]) == (300, 40)
    assert policy.content.max_kib == 32 and policy.content.categories == {"forums"}
    assert policy.content.phrase_files == (extra,) and extra in policy.watched_files  # edits reload the policy
    assert load_policy(write(tmp_path, POLICY, "policy.toml")).content.block_at == 100  # the default


def test_bad_content_settings_are_refused_with_their_line(tmp_path: Path) -> None:
    broken = write(tmp_path, '[[group]]\ncategory = "casinos"\nweight = 10\nphrases = ["x"]\n', "ours.toml")
    text = POLICY + ('[content]\nflag_at = 150\nmax_kib = 0\ncategories = ["forum"]\n'
                     f'phrase_files = ["{broken.name}"]\n')
    found = {message.split(":")[0] if message.startswith("phrase list") else message: line
             for line, message in policy_problems(tmp_path, text)}
    lines = text.splitlines()
    assert lines[found["flag_at must be at least 1 and at most block_at"] - 1] == "flag_at = 150"
    assert lines[found["max_kib must be between 1 and 1024"] - 1] == "max_kib = 0"
    assert lines[found["unknown category 'forum'; did you mean 'forums'?"] - 1].startswith("categories")
    assert lines[found["phrase list"] - 1].startswith("phrase_files")
    (line, message), = policy_problems(tmp_path, POLICY.replace("content_block_at = 300", "content_block_at = 20"))
    assert "group staff: content flag threshold 50 must be at least 1 and at most its block threshold 20" in message
    assert POLICY.replace("content_block_at = 300", "content_block_at = 20").splitlines()[line - 1] == "content_block_at = 20"


def test_explain_content_prints_the_verdict_and_every_phrase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from schoolgate.cli import main

    policy = write(tmp_path, POLICY, "policy.toml")
    assert main(["explain", "--policy", str(policy), "--content", str(PAGES / "neg-samaritans.html")]) == 0
    out = capsys.readouterr().out
    assert "verdict:    PASS" in out and "'samaritans' -50 x2" in out and "group:      pupils" in out
    assert main(["explain", "--policy", str(policy), "--group", "staff",
                 "--content", str(PAGES / "gambling-casino.html")]) == 0
    out = capsys.readouterr().out
    assert "verdict:    BLOCK (gambling, score 568)" in out and "thresholds: block from 300, flag from 50" in out
    assert "'free spins' +40 x2" in out and "[en, en.toml group #" in out
    events = write(tmp_path, 'data: {"delta": {"text": "Here are suicide methods"}}\n\n', "answer.sse")
    assert main(["explain", "--policy", str(policy), "--content", str(events)]) == 0
    assert "'suicide methods' +50 x1" in capsys.readouterr().out
    assert main(["explain", "--policy", str(policy), "--content", str(tmp_path / "missing.html")]) == 2
