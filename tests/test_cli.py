"""The `schoolgate` command itself: version, init, piping, JSON logs, and a parser
that loads no database, web or proxy library until a command needs one."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

from schoolgate.jsonlog import JsonFormatter
from schoolgate.policy import load_policy

SCHOOLGATE = Path(sys.executable).with_name("schoolgate")


def schoolgate(*args: str, cwd: Path | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCHOOLGATE), *args], capture_output=True, text=True, input=stdin, cwd=cwd, timeout=60)


def test_version_names_the_installed_package() -> None:
    from importlib.metadata import version

    done = schoolgate("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"schoolgate {version('schoolgate')}"


def test_init_writes_a_valid_private_policy_and_state_folder(tmp_path: Path) -> None:
    done = schoolgate("init", str(tmp_path / "school"))
    assert done.returncode == 0, done.stderr
    policy_path = tmp_path / "school" / "policy.toml"
    assert stat.S_IMODE(policy_path.stat().st_mode) == 0o600
    for folder in ("var", "var/ca"):
        assert stat.S_IMODE((tmp_path / "school" / folder).stat().st_mode) == 0o700, folder
    policy = load_policy(policy_path)  # valid as written
    assert policy.gateway.database.endswith("/school/var/schoolgate.db")
    assert "lists update" in done.stdout and "accounts add" in done.stdout  # says what is still missing

    policy_path.write_text("# the school's own edits\n")
    again = schoolgate("init", str(tmp_path / "school"))
    assert again.returncode == 1 and "exists already" in again.stderr
    assert policy_path.read_text() == "# the school's own edits\n"  # never overwritten


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`schoolgate classify urls.txt | head -1`: no BrokenPipeError traceback."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"https://site{n}.example/page\n" for n in range(50_000)))
    done = subprocess.run(f"{SCHOOLGATE} classify {urls} | head -1", shell=True, capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_a_policy_problem_is_said_once_the_same_way_by_every_command(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[gateway]\nlog_url = "none"\n[groups.pupils]\nnetworks = ["10.0.0.0/8"]\n')
    for command in (["run"], ["explain", "https://example.com/"], ["purge"], ["exceptions", "list"]):
        done = schoolgate(*command, "--policy", str(policy), cwd=tmp_path)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.startswith("schoolgate: the policy cannot be used:\n"), (command, done.stderr)
        assert f"{policy}:2: unknown setting 'log_url' in [gateway]; did you mean 'log_urls'?" in done.stderr


def test_a_missing_policy_points_at_init(tmp_path: Path) -> None:
    done = schoolgate("explain", "https://example.com/", cwd=tmp_path)
    assert done.returncode == 2 and "`schoolgate init`" in done.stderr


def test_json_log_lines() -> None:
    record = logging.LogRecord("schoolgate.lists", logging.WARNING, __file__, 1, "index %s is %d days old",
                               ("x.idx", 9), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["logger"] == "schoolgate.lists"
    assert line["message"] == "index x.idx is 9 days old" and line["ts"].endswith("+00:00")


def test_the_gateway_logs_json_when_asked(tmp_path: Path) -> None:
    """A real mitmdump with the add-on and `schoolgate_log_format=json`: its log lines are JSON objects."""
    (tmp_path / "policy.toml").write_text(
        f'[gateway]\ndatabase = "sqlite+aiosqlite:///{tmp_path}/sg.db"\nmetrics_port = 0\n'
        '[groups.pupils]\nnetworks = ["127.0.0.0/8"]\n')
    mitmdump = Path(sys.executable).with_name("mitmdump")
    script = Path(__file__).resolve().parents[1] / "addons" / "script.py"
    process = subprocess.Popen(
        [str(mitmdump), "-s", str(script), "--listen-host", "127.0.0.1", "--listen-port", "0",
         "--set", f"confdir={tmp_path / 'ca'}", "--set", f"schoolgate_policy={tmp_path / 'policy.toml'}",
         "--set", "schoolgate_log_format=json", "--set", "schoolgate_lists_fetch=false"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "listening at" in line.lower() or len(lines) > 40:
                break
    finally:
        process.terminate()
        process.wait(timeout=30)
    after_our_addon = [line for line in lines if line.startswith("{")]
    assert after_our_addon, "".join(lines)
    for line in after_our_addon:
        assert {"ts", "level", "logger", "message"} <= json.loads(line).keys()
    assert any("listening" in json.loads(line)["message"].lower() for line in after_our_addon), "".join(lines)


def test_the_parser_loads_no_database_web_or_proxy_library() -> None:
    code = ("import sys, json; from schoolgate import cli; "
            "cli.build_parser(); "
            "print(json.dumps(sorted(m for m in ('sqlalchemy', 'alembic', 'httpx', 'mitmproxy', 'starlette', "
            "'argon2', 'jinja2') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert json.loads(done.stdout) == [], done.stderr


def test_classify_with_a_named_index_loads_only_the_index(tmp_path: Path) -> None:
    """`classify --index` needs the index and the URL code: not the policy (nor the grants
    code, asyncio, the HTTP client or package metadata the other commands use), so it starts at once."""
    from schoolgate.categories.index import compile_index
    from schoolgate.categories.sources import plain_source

    listed = tmp_path / "games.txt"
    listed.write_text("games.example\n")
    compile_index([plain_source(listed, "games")], tmp_path / "lists.idx", show_progress=False)
    (tmp_path / "urls.txt").write_text("https://www.games.example/play\n")
    code = ("import sys, json; from schoolgate.cli import main; "
            f"main(['classify', '--index', {str(tmp_path / 'lists.idx')!r}, {str(tmp_path / 'urls.txt')!r}]); "
            "print(json.dumps(sorted(m for m in ('schoolgate.policy', 'schoolgate.grants', 'asyncio', 'urllib.request', "
            "'http.client', 'tarfile', 'importlib.metadata', 'sqlalchemy', 'mitmproxy', 'ssl') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    classified, loaded = done.stdout.splitlines()
    assert classified == "https://www.games.example/play\tgames (games.example)"
    assert json.loads(loaded) == []
