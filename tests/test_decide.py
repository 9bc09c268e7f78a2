"""Decisions: precedence of local lists, categories and defaults, with the
built-in list's reserved `.test` entries and awkward spellings of URLs."""

from pathlib import Path

import pytest

from schoolgate.categories.index import builtin_index
from schoolgate.decide import Decider
from schoolgate.policy import Action, load_policy
from schoolgate.urls import parse_target

POLICY = """\
[gateway]
default_group = "secondary"

[categories]
pornography = "block"
gambling = "block"
games = "warn"

[local]
allow = ["casino.test/maths-of-chance", "ok.adult.test", "teach.example"]
block = ["teach.example/forum", "bücher.test", "203.0.113.7"]

[groups.primary]
title = "Primary"
networks = ["10.10.0.0/16"]
[groups.primary.categories]
games = "block"

[groups.secondary]
title = "Secondary"
networks = ["10.20.0.0/16"]

[groups.staff]
title = "Staff"
networks = ["10.30.0.0/16"]
default_action = "allow"
[groups.staff.categories]
games = "allow"
social-media = "monitor"

[groups.kiosk]
title = "Library kiosk"
networks = ["10.40.0.0/24"]
default_action = "block"
"""


@pytest.fixture(scope="module")
def decide(tmp_path_factory):
    path = Path(tmp_path_factory.mktemp("policy")) / "policy.toml"
    path.write_text(POLICY)
    policy = load_policy(path)
    decider = Decider(policy, builtin_index())

    def run(url: str, group: str = "secondary"):
        return decider.decide(parse_target(url), policy.groups[group])

    return run


@pytest.mark.parametrize(
    "url",
    [
        "http://adult.test/",
        "https://ADULT.TEST./",
        "http://user:pw@adult.test:8080/x",
        "http://www.adult.test/",
        "http://deep.sub.adult.test/page?q=1",
    ],
)
def test_category_block_survives_spelling(decide, url):
    verdict = decide(url)
    assert verdict.action is Action.BLOCK
    assert verdict.rule == "category"
    assert verdict.categories == ("pornography",)
    assert verdict.matched == "pornography:adult.test"


def test_url_entry_in_a_category(decide):
    assert decide("http://mixed.test/adult-section/page").action is Action.BLOCK
    assert decide("http://mixed.test/Adult%2Dsection").action is Action.BLOCK  # escaped '-' and case
    assert decide("http://mixed.test/adult").action is Action.ALLOW  # shorter than the entry
    assert decide("http://mixed.test/news").rule == "default"


def test_local_allow_beats_category_and_names_its_line(decide):
    verdict = decide("http://ok.adult.test/")
    assert verdict.action is Action.ALLOW
    assert verdict.rule == "local-allow"
    assert verdict.categories == ("pornography",)  # still recorded as what it is
    assert verdict.source.endswith("policy.toml:10")
    # the allowance is for that subdomain only
    assert decide("http://adult.test/").action is Action.BLOCK


def test_local_url_prefix_is_more_specific_than_the_domain(decide):
    assert decide("http://casino.test/maths-of-chance/lesson1").action is Action.ALLOW
    assert decide("http://casino.test/poker").action is Action.BLOCK
    assert decide("http://teach.example/forum/thread").rule == "local-block"
    assert decide("http://www.teach.example/forum").action is Action.BLOCK  # subdomains too
    assert decide("http://teach.example/lessons").rule == "local-allow"


def test_idn_and_ip_literal_entries(decide):
    assert decide("http://xn--bcher-kva.test/").rule == "local-block"
    assert decide("http://BÜCHER.test/").rule == "local-block"
    assert decide("http://203.0.113.7/").rule == "local-block"
    assert decide("http://3405803783/").rule == "local-block"  # the same address, as a number
    assert decide("http://[::ffff:203.0.113.7]/").rule == "local-block"


def test_groups_get_their_own_actions(decide):
    assert decide("http://games.test/", "primary").action is Action.BLOCK
    assert decide("http://games.test/", "secondary").action is Action.WARN
    assert decide("http://games.test/", "staff").action is Action.ALLOW
    assert decide("http://social.test/", "staff").action is Action.MONITOR
    assert decide("http://social.test/", "secondary").rule == "category"  # unconfigured: the default action
    assert decide("http://social.test/", "secondary").action is Action.ALLOW


def test_default_action_of_a_group(decide):
    verdict = decide("http://unlisted.example/", "kiosk")
    assert (verdict.action, verdict.rule) == (Action.BLOCK, "default")
    assert "Library kiosk default: block" in verdict.reason
    assert decide("http://unlisted.example/").action is Action.ALLOW
