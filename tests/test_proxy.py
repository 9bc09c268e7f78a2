"""The lean proxy process (schoolgate.proxy): each hook goes only to the add-ons that have it,
found once, yet in mitmproxy's order, through its guard, and found again when add-ons
come, go or are reloaded (a school's own script beside addons/script.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import time
from pathlib import Path

import pytest
from mitmproxy import exceptions, master, options
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import tflow

from schoolgate.proxy import GatewayMaster, _Addons

from support.clients import curl
from support.waiting import wait_for

POLICY = """\
[gateway]
default_group = "pupils"

[groups.pupils]
networks = ["127.0.0.1/32"]
"""

SCHOOL_SCRIPT = """\
import asyncio

def response(flow):
    flow.response.headers["x-school-script"] = "{mark}"
    flow.response.headers["x-event-loop"] = type(asyncio.get_running_loop()).__module__
"""


class Seen:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def request(self, _flow) -> None:
        self.calls.append(self.name)


class Fails(Seen):
    def request(self, _flow) -> None:
        self.calls.append(self.name)
        raise RuntimeError("a broken add-on")


class Halts(Seen):
    def request(self, _flow) -> None:
        self.calls.append(self.name)
        raise exceptions.AddonHalt()


class Holder:
    """An add-on holding others, as mitmproxy's script loader holds a script's add-ons."""

    def __init__(self, *addons: object) -> None:
        self.name = "holder"
        self.addons = list(addons)


def _dispatch(*addons: object) -> _Addons:
    gateway = master.Master(options.Options(), event_loop=asyncio.new_event_loop())
    gateway.addons = _Addons(gateway)
    gateway.addons.add(*addons)
    return gateway.addons


def _request(manager: _Addons) -> None:
    manager.master.event_loop.run_until_complete(manager.handle_lifecycle(HttpRequestHook(tflow.tflow())))


def test_hooks_reach_only_their_addons_in_order_through_the_guard(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    manager = _dispatch(Seen("first", calls), Holder(Fails("inner-fails", calls), Seen("inner-skipped", calls)),
                           Seen("after", calls))
    with caplog.at_level(logging.ERROR):
        _request(manager)
    # mitmproxy's guard is per add-on of the chain: a failure skips the rest of that add-on, not the next ones
    assert calls == ["first", "inner-fails", "after"]
    assert "Addon error: a broken add-on" in caplog.text
    assert [addon.name for addon, _ in manager.implementers(HttpRequestHook(tflow.tflow()))] == \
        ["first", "holder", "after"]
    assert manager.implementers(HttpResponseHook(tflow.tflow())) == []


def test_a_halt_stops_the_hook_for_every_later_addon() -> None:
    calls: list[str] = []
    manager = _dispatch(Seen("first", calls), Halts("halts", calls), Seen("never", calls))
    _request(manager)
    assert calls == ["first", "halts"]


def test_addons_that_come_or_go_after_the_first_event_are_found_again() -> None:
    calls: list[str] = []
    first = Seen("first", calls)
    manager = _dispatch(first)
    _request(manager)
    late = Holder(Seen("late", calls))
    manager.add(late)
    _request(manager)
    manager.remove(first)
    _request(manager)
    assert calls == ["first", "first", "late", "late"]


def test_addons_reordered_by_an_option_change_are_called_in_their_new_order() -> None:
    class Reorders(Holder):
        def configure(self, updated: set[str]) -> None:
            if "listen_port" in updated:
                self.addons.reverse()  # as mitmproxy's script loader reorders scripts, registering nothing

    calls: list[str] = []
    manager = _dispatch(Reorders(Seen("a", calls), Seen("b", calls)))
    _request(manager)
    manager.master.options.update(listen_port=8081)
    _request(manager)
    assert calls == ["a", "b", "b", "a"]


def test_a_hook_mitmproxy_refuses_is_still_reported_on_every_event(caplog: pytest.LogCaptureFixture) -> None:
    class NotCallable:
        request = "not a function"

    calls: list[str] = []
    manager = _dispatch(NotCallable(), Seen("after", calls))
    with caplog.at_level(logging.ERROR):
        _request(manager)
        _request(manager)
    assert caplog.text.count("Addon error: Addon handler request") == 2
    assert calls == ["after", "after"]


def _write_script(path: Path, mark: str) -> None:
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(SCHOOL_SCRIPT.format(mark=mark))
    mtime = max(time.time_ns(), previous + 2_000_000_000)  # mitmproxy reloads a script whose mtime moved
    os.utime(path, ns=(mtime, mtime))


def test_a_school_script_beside_the_gateway_is_called_and_so_is_its_reloaded_version(gateway_factory,
                                                                                      tmp_path: Path) -> None:
    script = tmp_path / "school.py"
    _write_script(script, "first")
    gateway = gateway_factory(POLICY, lean=True, args=["-s", str(script)])

    def answered() -> dict[str, str]:
        done = curl(gateway, "http://school.test/lessons")
        assert done.status == 200, done.stderr
        return done.headers

    wait_for(lambda: answered().get("x-school-script") == "first", timeout=20)  # scripts load once the proxy runs
    _write_script(script, "second")
    wait_for(lambda: answered().get("x-school-script") == "second", timeout=20)
    # uvloop's event loop where it is installed (a dependency; asyncio's without it)
    expected_loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio.unix_events"
    assert answered()["x-event-loop"] == expected_loop


def test_the_gateway_process_leaves_out_the_database_drivers_debug_lines() -> None:
    async def start() -> None:
        GatewayMaster(options.Options())

    logging.getLogger("aiosqlite").setLevel(logging.NOTSET)
    asyncio.run(start())
    assert logging.getLogger("aiosqlite").level == logging.INFO
