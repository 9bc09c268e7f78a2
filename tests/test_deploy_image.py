"""The container image and the Python package as shipped: the build context lets in no
virtualenv, git history or CA key; the image builds from the hash-pinned lock file on a base
pinned by digest, runs as a non-root user and has a HEALTHCHECK; the sdist holds everything
the package needs; the lock file pins every runtime dependency with hashes."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from support.gateway import REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        candidates = [bare, bare.removeprefix("**/")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, c) for c in candidates for p in prefixes) or (
            bare.startswith("**/") and any(fnmatch.fnmatchcase(part, bare[3:]) for part in parts)
        ):
            ignored = not negate
    return ignored


def test_build_context_keeps_secrets_and_local_state_out() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", ".git/config", "var/ca/mitmproxy-ca.pem", "var/gateway.secret",
                 "var/schoolgate.db", "tests/test_gateway.py", "schoolgate/__pycache__/cli.cpython-312.pyc",
                 "addons/var/ca/mitmproxy-ca.pem", "deploy/compose/policy.toml", "bench/bench_load.py"):
        assert _ignored(path, patterns), f"{path} would be sent to the image build"
    for path in ("pyproject.toml", "requirements.lock", "LICENSE", "schoolgate/cli.py", "addons/script.py",
                 "categories/builtin/gambling/domains", "reports/console/app.py", "deploy/docker-entrypoint.sh", "policy.toml"):
        assert not _ignored(path, patterns), f"{path} is needed by the image build"


def test_dockerfile_is_multi_stage_pinned_non_root_and_checks_health() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and re.search(r"@sha256:[0-9a-f]{64}$", base.group(1)), "the base image must be pinned by digest"
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2
    assert "--require-hashes -r /src/requirements.lock" in text
    assert re.search(r"^COPY --from=build /opt/schoolgate /opt/schoolgate$", text, re.MULTILINE)
    user = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0")), "the image must run as a non-root user"
    assert re.search(r"^HEALTHCHECK .*\n.*/readyz", text, re.MULTILINE)
    assert not re.search(r"^COPY \. ", text, re.MULTILINE), "copying the whole context bakes in whatever is there"


def test_image_builds_and_runs_as_non_root(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no Docker daemon on this machine: the image build is checked where Docker runs")
    tag = "schoolgate:test-build"
    subprocess.run([docker, "build", "-f", str(DOCKERFILE), "-t", tag, str(REPO)], check=True, timeout=1800)
    user = subprocess.run([docker, "run", "--rm", "--entrypoint", "id", tag, "-u"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert user != "0"
    listing = subprocess.run([docker, "run", "--rm", "--entrypoint", "sh", tag, "-c",
                              "ls -a /opt/schoolgate /var/lib/schoolgate; find / -name 'mitmproxy-ca*' 2>/dev/null"],
                             capture_output=True, text=True, check=True).stdout
    assert "mitmproxy-ca" not in listing and ".git" not in listing


def test_lock_file_pins_every_runtime_dependency_with_hashes() -> None:
    lock = (REPO / "requirements.lock").read_text()
    pinned = {m.group(1).lower().replace("_", "-") for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==\S+", lock, re.MULTILINE)}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["postgres"]]
    for requirement in wanted:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")
        assert name in pinned, f"{name} is a dependency but requirements.lock does not pin it (./dev lock)"
    for block in re.split(r"\n(?=[A-Za-z])", lock.split("\n", 2)[2]):
        assert "--hash=sha256:" in block, f"no hash for {block.splitlines()[0]}"


def test_package_metadata_and_a_complete_sdist(tmp_path: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "mitmproxy>=12.2.2,<13" in project["dependencies"]  # 12.2.1 and older carry the LDAP auth bypass
    assert project["license"] == "AGPL-3.0-or-later" and "GNU AFFERO GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text()
    assert "bcrypt" in " ".join(project["dependencies"])
    assert project["urls"] and project["classifiers"]
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                            str(REPO)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    sdist = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; import sys; "
                            f"print(b.build_sdist({str(tmp_path)!r}))"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert sdist.returncode == 0, sdist.stderr
    with tarfile.open(tmp_path / sdist.stdout.strip().splitlines()[-1]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("LICENSE", "README.md", "pyproject.toml", "addons/script.py", "addons/templates/page.html",
                   "schoolgate/migrations/alembic.ini", "categories/builtin/gambling/domains",
                   "reports/console/templates", "deploy/systemd/schoolgate.service", "requirements.lock"):
        assert any(n == needed or n.startswith(needed + "/") for n in names), f"the sdist lacks {needed}"
