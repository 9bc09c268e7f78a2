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

import sys

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
    """mitmproxy follows every flow event with an `update` event, for its flow lists (the console,
    mitmweb): a second pass over every add-on. The gateway's add-ons have no `update`, so it is
    sent only while one that has is loaded (a school's own script may be)."""

    _listened: bool | None = None  # worked out again after any add-on comes or goes

    def register(self, addon):
        self._listened = None
        return super().register(addon)

    def remove(self, addon):
        self._listened = None
        super().remove(addon)

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        message = event.args()[0]
        if isinstance(message, flow.Flow):
            if self._listened is None:
                self._listened = any(hasattr(addon, "update") for addon in addonmanager.traverse(self.chain))
            if self._listened:
                await self.trigger_event(hooks.UpdateHook([message]))


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


def main(argv: list[str] | None = None) -> None:
    run(GatewayMaster, cmdline.mitmdump, sys.argv[1:] if argv is None else argv)
