"""The import contract: the deciding core is plain Python. Importing it loads no
database, HTTP or proxy library, so it is unit-testable, reusable by `explain` and
`classify`, and quick to start. Each module is imported in a fresh interpreter and
its sys.modules checked, so one module's imports cannot hide another's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PURE = [
    "schoolgate.policy",
    "schoolgate.accessrecord",
    "schoolgate.urls",
    "schoolgate.flags",
    "schoolgate.episodes",
    "schoolgate.partitions",
    "schoolgate.grants",
    "schoolgate.decide",
    "schoolgate.engine",
    "schoolgate.decrypt",
    "schoolgate.explain",
    "schoolgate.schedules",
    "schoolgate.identities",
    "schoolgate.mediatypes",
    "schoolgate.categories.taxonomy",
    "schoolgate.categories.index",
    "schoolgate.categories.lexicon",
    "schoolgate.categories.content",
    "schoolgate.categories.suffixes",
    "schoolgate.categories.illegal",
    "schoolgate.categories.health",
    "schoolgate.reports.selfcheck",
]
# I/O libraries the core must not load: the database, HTTP clients, the proxy, the console's web stack.
FORBIDDEN = ("sqlalchemy", "alembic", "aiosqlite", "asyncpg", "httpx", "mitmproxy", "starlette", "jinja2", "argon2",
             "ldap3")


def loaded_by(module: str) -> list[str]:
    code = (f"import sys, json; import {module}; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("module", PURE)
def test_the_core_imports_no_io_library(module: str) -> None:
    loaded = set(loaded_by(module))
    assert not loaded & set(FORBIDDEN), f"{module} loads {sorted(loaded & set(FORBIDDEN))}"


def test_the_check_itself_sees_a_forbidden_import() -> None:
    """The test can fail: a module that does import the database is caught."""
    assert "sqlalchemy" in loaded_by("schoolgate.db")
