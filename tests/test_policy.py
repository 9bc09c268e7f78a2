"""policy.toml: the default runs, and every kind of mistake is reported with
file, line and what is wrong."""

from pathlib import Path

import pytest

from schoolgate.cli import main
from schoolgate.policy import Action, PolicyInvalid, load_policy

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """\
[gateway]
default_group = "pupils"

[groups.pupils]
networks = ["10.0.0.0/8"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(PolicyInvalid) as caught:
        load_policy(write(tmp_path, text))
    for problem in caught.value.problems:
        assert problem.file.endswith("policy.toml")
    return [(p.line, p.message) for p in caught.value.problems]


def test_default_policy_is_valid_and_sensible():
    policy = load_policy(REPO / "policy.toml")
    assert {"pupils-primary", "pupils-secondary", "staff", "guests"} <= set(policy.groups)
    primary = policy.groups["pupils-primary"]
    assert primary.action_for("pornography") is Action.BLOCK  # from the global [categories]
    assert primary.action_for("social-media") is Action.BLOCK  # the group's own
    assert policy.groups["staff"].action_for("social-media") is Action.ALLOW  # default action
    assert policy.groups["pupils-secondary"].action_for("games") is Action.WARN
    assert policy.database_url.startswith("sqlite+aiosqlite:////")  # made absolute beside the policy
    assert policy.intercepts("example.com", set()) and not policy.intercepts("x.example", {"banking"})


def test_groups_by_network_longest_prefix_and_users(tmp_path):
    policy = load_policy(write(tmp_path, MINIMAL + """
[groups.room12]
networks = ["10.1.2.0/24"]
[groups.staff]
networks = ["fd00:30::/32"]
users = ["mrs.khan"]
"""))
    assert policy.group_for("10.9.9.9", None)[0].name == "pupils"
    assert policy.group_for("10.1.2.3", None)[0].name == "room12"
    assert policy.group_for("::ffff:10.1.2.3", None)[0].name == "room12"
    assert policy.group_for("fd00:30::5", None)[0].name == "staff"
    assert policy.group_for("10.1.2.3", "mrs.khan")[0].name == "staff"  # a known user beats the network
    assert policy.group_for("192.0.2.1", None)[0].name == "pupils"  # default group


def test_toml_syntax_error_has_line(tmp_path):
    found = problems(tmp_path, MINIMAL + '\n[local]\nallow = ["a.com",\n  "b.com"\nblock = []\n')
    assert len(found) == 1
    line, message = found[0]
    assert line is not None and line >= 8 and "not valid TOML" in message


def test_every_problem_is_listed_with_its_line(tmp_path):
    text = MINIMAL + """\
[categories]
pornografy = "block"
gambling = "blok"

[groups.staff]
networks = ["10.30.0.1/16", "not-a-network", "10.0.0.0/8"]

[local]
allow = ["good.example", "bad..example"]
block = ["good.example"]
"""
    found = problems(tmp_path, text)
    by_message = {message: line for line, message in found}

    def line_of(fragment: str) -> int | None:
        return next(line for message, line in by_message.items() if fragment in message)

    lines = text.splitlines()
    assert "pornografy" in lines[line_of("did you mean 'pornography'") - 1]
    assert "blok" in lines[line_of("'blok' is not an action") - 1]
    assert "10.30.0.1/16" in lines[line_of("did you mean 10.30.0.0/16") - 1]
    assert line_of("'not-a-network' is not a valid CIDR") is not None
    assert line_of("10.0.0.0/8 is in both pupils and staff") is not None
    assert "bad..example" in lines[line_of("bad..example") - 1]
    assert line_of("on both the allow list") is not None
    assert len(found) == 7


def test_unknown_keys_and_missing_references(tmp_path):
    found = problems(tmp_path, """\
[gatway]
x = 1
[gateway]
default_group = "nobody"
log_urls = "some"
[groups.pupils]
networks = []
require_auth = true
colour = "red"
""")
    messages = " | ".join(m for _, m in found)
    assert "unknown section [gatway]" in messages
    assert "default_group 'nobody' is not a defined group" in messages
    assert "log_urls = 'some'" in messages
    assert "require_auth = true but [auth] htpasswd is not set" in messages
    assert "unknown setting 'colour'" in messages
    assert all(line is not None for line, _ in found)


def test_list_files_are_read_and_checked(tmp_path):
    (tmp_path / "allow.txt").write_text("# teachers' sites\nscratch.mit.edu\n\nexample.org/maths  # a comment\nbad host\n")
    with pytest.raises(PolicyInvalid) as caught:
        load_policy(write(tmp_path, MINIMAL + '[local]\nallow_files = ["allow.txt"]\n'))
    (problem,) = caught.value.problems
    assert problem.file.endswith("allow.txt") and problem.line == 5 and "bad host" in problem.message

    (tmp_path / "allow.txt").write_text("scratch.mit.edu\nexample.org/maths\n")
    policy = load_policy(tmp_path / "policy.toml")
    assert [(e.host, e.path, e.source.rsplit("/", 1)[-1]) for e in policy.local] == [
        ("scratch.mit.edu", "", "allow.txt:1"),
        ("example.org", "/maths", "allow.txt:2"),
    ]
    assert tmp_path / "allow.txt" in policy.watched_files


def test_check_command(tmp_path, capsys):
    good = write(tmp_path, MINIMAL)
    assert main(["check", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    good.write_text(MINIMAL + '[categories]\ngames = "sometimes"\n')
    assert main(["check", str(good)]) == 1
    out = capsys.readouterr().out
    assert f"{good}:7: categories.games = 'sometimes' is not an action" in out
