"""Shared fixtures: loopback upstream servers, real gateways, and the `data` marker's skip rule.

Deliberately imports nothing from schoolgate, so the harness works while the add-on is in flux.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from support.alerts import SmtpSink, WebhookReceiver, served_from_a_thread
from support.gateway import REPO, Gateway, GatewayError, GatewayFactory, OptionValue
from support.upstream import Upstream

SHARED_DATA = REPO.parent / "shared" / "data"
# The reserved `.test` domains the tests browse to (adult.test, casino.test...) join the
# built-in list only through this variable, inherited by every gateway and CLI the tests
# start; a production index never holds them (categories/sources.py, builtin_tree).
os.environ["SCHOOLGATE_TEST_LISTS"] = str(REPO / "tests" / "fixtures" / "test-lists")
_GATEWAYS = pytest.StashKey[list[Gateway]]()
# The PostgreSQL fixtures (`postgres`: one server per test process, `database_url`: a fresh
# database on it) for every test module, without importing them into each.
pytest_plugins = ("support.postgres",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs ../shared/data (not found at {SHARED_DATA})")
    for item in items:
        if item.get_closest_marker("data"):
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    """The shared data directory; use with @pytest.mark.data so its absence skips the test."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def upstream_servers() -> Iterator[Upstream]:
    with Upstream() as servers:
        yield servers


@pytest.fixture
def upstream(upstream_servers: Upstream) -> Upstream:
    """The session's upstream servers, with the request log emptied for this test."""
    upstream_servers.clear()
    return upstream_servers


@pytest.fixture
def gateway_factory(request: pytest.FixtureRequest, tmp_path: Path, upstream: Upstream) -> Iterator[GatewayFactory]:
    """Start gateways wired to `upstream` (see GatewayFactory); all must exit 0 when stopped at teardown."""
    gateways = request.node.stash.setdefault(_GATEWAYS, [])

    def start(
        policy_text: str = "",
        *,
        with_schoolgate: bool = True,
        options: Mapping[str, OptionValue] | None = None,
        args: Sequence[str] = (),
        lean: bool | None = None,
    ) -> Gateway:
        gateway = Gateway(
            tmp_path / f"gateway{len(gateways)}",
            policy_text,
            loopback_http_port=upstream.http_port,
            loopback_https_port=upstream.https_port,
            with_schoolgate=with_schoolgate,
            options=options,
            args=args,
            lean=lean,
        )
        gateways.append(gateway)
        return gateway.start()

    yield start

    errors: list[GatewayError] = []
    for gateway in gateways:
        try:
            gateway.stop()
        except GatewayError as e:
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: pytest.TestReport = yield
    # A failing end-to-end test is rarely readable without what the gateway logged.
    if report.failed and report.when == "call":
        for gateway in item.stash.get(_GATEWAYS, []):
            report.sections.append((f"mitmdump log: {gateway.log_path}", gateway.log_text()))
    return report


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with served_from_a_thread(WebhookReceiver()) as receiver:
        yield receiver


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with served_from_a_thread(SmtpSink()) as sink:
        yield sink
