"""The mitmproxy process `schoolgate run` starts: mitmdump's own command line and
options, with only the add-ons the gateway relies on.

mitmdump loads about thirty add-ons (replay, map-local, header and body rewriting,
sticky cookies, HAR export, the per-flow terminal printer...) and mitmproxy calls
every hook on every one of them, through an exception guard each: for each request
a dozen hook calls each visit all thirty. The gateway needs few of them: the proxy
servers and their modes, TLS (the school CA, the upstream certificate check), the
choice of protocol layers, DNS, the global-client block, h2c refusal, upstream-proxy
credentials, and script loading (the schoolgate add-ons are addons/script.py, loaded
with `-s` as before, so other scripts can sit beside it).

mitmproxy also follows every flow event with an `update` event for its flow lists (the
console, mitmweb): here it is sent only when a loaded add-on listens for it.

The options of the add-ons left out stay registered, so every mitmdump argument still
parses, but setting one is refused at start (it would do nothing): a school that needs
one of them runs mitmdump with `-s addons/script.py` instead.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from typing import Any

from mitmproxy import addonmanager, addons, exceptions, flow, hooks, master, options
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    dns_resolver,
    dumper,
    errorcheck,
    keepserving,
    next_layer,
    proxyserver,
    readfile,
    script,
    strip_dns_https_records,
    tlsconfig,
    upstream_auth,
)
from mitmproxy.tools import cmdline
from mitmproxy.tools.main import run

KEPT = (core.Core, block.Block, strip_dns_https_records.StripDnsHttpsRecords, disable_h2c.DisableH2C,
        proxyserver.Proxyserver, script.ScriptLoader, dns_resolver.DnsResolver, next_layer.NextLayer,
        tlsconfig.TlsConfig, upstream_auth.UpstreamAuth, keepserving.KeepServing, errorcheck.ErrorCheck)
# Left out without a word about its options: it only prints flows, which the gateway turns off anyway.
_QUIET = (dumper.Dumper,)


class _Addons(addonmanager.AddonManager):
    """mitmproxy's AddonManager looks for a hook on every add-on, each through an exception
    guard, for every event, and follows every flow event with an `update` event for its flow
    lists (the console, mitmweb). Here the add-ons that have each hook are found once and only
    they are called, in the same order and through the same guard (one per add-on of the
    chain): so `update`, which no gateway add-on has, costs nothing unless a school's own
    script listens for it. Found again whenever an add-on comes or goes (a script loaded or
    reloaded registers its add-ons) or an option changes (the scripts option reorders scripts
    without registering them again); a hook method added to an add-on after it was loaded
    is not seen."""

    def __init__(self, owner: master.Master) -> None:
        super().__init__(owner)
        # hook name -> (add-on of the chain, those within it that have the hook; None: one that
        # mitmproxy refuses, left to its own dispatch so the error is logged as before)
        self._implementers: dict[str, list[tuple[Any, list[Any] | None]]] = {}

    def register(self, addon):
        self._implementers.clear()
        return super().register(addon)

    def remove(self, addon):
        self._implementers.clear()
        super().remove(addon)

    def clear(self):
        self._implementers.clear()
        super().clear()

    def _configure_all(self, updated):
        self._implementers.clear()
        super()._configure_all(updated)

    def implementers(self, event: hooks.Hook) -> list[tuple[Any, list[Any] | None]]:
        found = self._implementers.get(event.name)
        if found is None:
            found = []
            for addon in self.chain:
                within: list[Any] | None
                try:
                    within = [hooked for hooked, _ in self._iter_hooks(addon, event)]
                except exceptions.AddonManagerError:
                    within = None
                if within != []:
                    found.append((addon, within))
            self._implementers[event.name] = found
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        args = event.args()
        for addon, within in self.implementers(event):
            try:
                with addonmanager.safecall():
                    if within is None:
                        await self.invoke_addon(addon, event)
                        continue
                    for hooked in within:
                        result = getattr(hooked, event.name)(*args)
                        if result is not None and inspect.isawaitable(result):
                            await result
            except exceptions.AddonHalt:
                return

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        message = event.args()[0]
        if isinstance(message, flow.Flow):
            update = hooks.UpdateHook([message])
            if self.implementers(update):
                await self.trigger_event(update)


class GatewayMaster(master.Master):
    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts, with_termlog=True)
        self.addons = _Addons(self)
        self.addons.add(self._termlog_addon)
        left_out: dict[str, str] = {}
        for addon in (*addons.default_addons(), dumper.Dumper(), readfile.ReadFileStdin(),
                      keepserving.KeepServing(), errorcheck.ErrorCheck()):
            if isinstance(addon, KEPT):
                self.addons.add(addon)
            elif hasattr(addon, "load"):
                before = set(self.options.keys())
                addon.load(addonmanager.Loader(self))  # its options only, so mitmdump's command line parses
                if not isinstance(addon, _QUIET):
                    left_out.update(dict.fromkeys(set(self.options.keys()) - before, type(addon).__name__))
        self.addons.add(LeftOutOptions(left_out))
        # aiosqlite logs two DEBUG lines per database call, and mitmproxy formats every record, whatever
        # its level, for its legacy add_log event, then wakes the event loop with it (as mitmdump quiets hpack).
        logging.getLogger("aiosqlite").setLevel(logging.INFO)


class LeftOutOptions:
    """Refuses, at start and on any later change, an option of an add-on the gateway does not load."""

    def __init__(self, owners: dict[str, str]) -> None:
        self.owners = owners

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx

        for name in sorted(updated & self.owners.keys()):
            if getattr(ctx.options, name) != ctx.options.default(name):
                raise exceptions.OptionsError(
                    f"{name} belongs to mitmproxy's {self.owners[name]} add-on, which schoolgate run does not load; "
                    "run mitmdump -s addons/script.py to use it")


def use_uvloop() -> None:
    """uvloop's event loop (libuv, in C): the same protocols and modes as asyncio's, for less of
    the loop's own CPU per request (bench_proxy.py: 1-9% less, the median about 7%). A dependency
    except on Windows, which uvloop does not support: there, or wherever it is missing, asyncio's."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> None:
    use_uvloop()
    run(GatewayMaster, cmdline.mitmdump, sys.argv[1:] if argv is None else argv)
