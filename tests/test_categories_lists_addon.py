"""The lists add-on's hooks, in milliseconds with mitmproxy's taddons: what it exports
and when it starts a first-start download (the end-to-end side is in
test_categories_gateway.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from mitmproxy.test import taddons

from schoolgate import metrics
from schoolgate.addons.lists import Lists, publish
from schoolgate.categories.index import compile_index
from schoolgate.categories.sources import plain_source
from schoolgate.categories.status import health_of
from schoolgate.engine import Engine

POLICY = """\
[gateway]
default_group = "pupils"

[lists]
index = "lists.idx"
sources = [SOURCES]

[categories]
pornography = "block"
self-harm = "block"
games = "warn"

[groups.pupils]
title = "Pupils"
networks = ["10.20.0.0/16"]
"""


def engine_for(tmp_path: Path, sources: str = "", compiled: bool = False) -> Engine:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.replace("SOURCES", sources))
    if compiled:
        listed = tmp_path / "porn.txt"
        listed.write_text("a.example\nb.example\n")
        compile_index([plain_source(listed, "pornography")], tmp_path / "lists.idx", show_progress=False)
    return Engine.load(path, illegal_dir=tmp_path / "no-tier")


def gauge(metric, **labels: str) -> float | None:
    for sample in metric.collect()[0].samples:
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


@pytest.mark.parametrize(
    ("sources", "compiled", "option", "fetch"),
    [
        ('"/srv/ut1"', False, True, True),  # first start: no index yet, sources named
        ('"/srv/ut1"', False, False, False),  # turned off by the gateway option
        ("", False, True, False),  # nothing to fetch
        ('"/srv/ut1"', True, True, False),  # a good index serves: the nightly timer's job
    ],
)
def test_a_download_starts_only_at_first_start_with_sources(tmp_path: Path, sources: str, compiled: bool,
                                                           option: bool, fetch: bool) -> None:
    addon = Lists(SimpleNamespace(engine=None))
    with taddons.context(addon) as tctx:
        tctx.configure(addon, schoolgate_lists_fetch=option)
        assert addon._wants_fetch(engine_for(tmp_path, sources, compiled)) is fetch


def test_health_is_exported(tmp_path: Path) -> None:
    publish(health_of(engine_for(tmp_path, compiled=True)))
    assert gauge(metrics.CATEGORY_INDEX_OK, problem="none") == 1
    assert gauge(metrics.CATEGORY_ENTRIES, category="pornography", action="block") == 2
    assert gauge(metrics.CATEGORY_ENTRIES, category="self-harm", action="block") == 0
    assert gauge(metrics.CATEGORY_ENTRIES, category="games", action="warn") == 0
    assert gauge(metrics.CATEGORY_LISTS_STALE) == 0
    assert 0 <= gauge(metrics.CATEGORY_LISTS_AGE) < 60
    (tmp_path / "fresh").mkdir()
    publish(health_of(engine_for(tmp_path / "fresh")))
    assert gauge(metrics.CATEGORY_INDEX_OK, problem="missing") == 0
    assert gauge(metrics.CATEGORY_INDEX_OK, problem="none") is None  # the old series is gone, not left at 1
    assert gauge(metrics.CATEGORY_LISTS_AGE) == -1
