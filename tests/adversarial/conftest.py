"""One real gateway per adversarial module (the attempts of a module share it; each
attempt comes from its own client address), wired to the session's loopback upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.gateway import Gateway, OptionValue
from support.upstream import Upstream


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory, upstream_servers: Upstream) -> Iterator[Callable[..., Gateway]]:
    """Start gateways that live as long as the module; each must exit 0 when stopped."""
    started: list[Gateway] = []

    def start(policy_text: str, *, options: dict[str, OptionValue] | None = None, directory: Path | None = None) -> Gateway:
        gateway = Gateway(directory or tmp_path_factory.mktemp("adversary"), policy_text,
                          loopback_http_port=upstream_servers.http_port, loopback_https_port=upstream_servers.https_port,
                          options=options)
        started.append(gateway)
        return gateway.start()

    yield start
    for gateway in started:
        gateway.stop()
