"""The proxy auto-config (PAC) file that points browsers at the gateway.

Served as /proxy.pac and /wpad.dat (addons/health.py); GPO, Intune, macOS/iPadOS
profiles and the Chromebook admin console hand out its address. Only what cannot
be on the internet goes DIRECT: names without a dot (the school's own servers),
localhost, loopback and link-local addresses, and the networks and domains the
school lists as its own. Everything else, no-intercept sites included, goes
through the gateway: those are relayed undecrypted but still decided and
recorded, and a pupil's device never gets a way round the filter from the PAC.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

# Addresses that never leave the device or the link.
_ALWAYS_DIRECT_NETWORKS = ("127.0.0.0/8", "169.254.0.0/16")
_ALWAYS_DIRECT_NAMES = ("localhost",)


def pac_script(proxy: str, direct_domains: Iterable[str] = (), direct_networks: Iterable[str] = ()) -> str:
    """The PAC file: `proxy` ("host:port", as devices reach the gateway) for everything
    but local names and networks. `direct_domains` also covers their subdomains."""
    if not proxy or any(c in proxy for c in " ;\"'\\\n"):
        raise ValueError(f"not a proxy address: {proxy!r}")
    networks = [ipaddress.ip_network(n, strict=False) for n in (*_ALWAYS_DIRECT_NETWORKS, *direct_networks)]
    v4 = [(str(n.network_address), str(n.netmask)) for n in networks if n.version == 4]
    domains = sorted({d.strip().lower().lstrip(".") for d in (*_ALWAYS_DIRECT_NAMES, *direct_domains) if d.strip()})
    # Every value goes in through json.dumps: a PAC file is JavaScript, and a domain
    # written by an admin must never be able to end a string early.
    return f"""\
// schoolgate proxy auto-config: web traffic goes through the school's gateway.
// Generated from the gateway's policy; do not edit here.
function FindProxyForURL(url, host) {{
    var gateway = {json.dumps(f"PROXY {proxy}")};
    var directDomains = {json.dumps(domains)};
    var directNetworks = {json.dumps(v4)};
    host = host.toLowerCase();
    if (isPlainHostName(host) || host === "[::1]" || host === "::1")
        return "DIRECT";
    for (var i = 0; i < directDomains.length; i++) {{
        if (host === directDomains[i] || dnsDomainIs(host, "." + directDomains[i]))
            return "DIRECT";
    }}
    // Only literal addresses: resolving every name here would cost a DNS lookup per request.
    if (/^\\d+\\.\\d+\\.\\d+\\.\\d+$/.test(host)) {{
        for (var j = 0; j < directNetworks.length; j++) {{
            if (isInNet(host, directNetworks[j][0], directNetworks[j][1]))
                return "DIRECT";
        }}
    }}
    return gateway;
}}
"""
