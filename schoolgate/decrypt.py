"""Which HTTPS is decrypted: only what needs looking into.

Every connection is decided by name first (the CONNECT target and the TLS server
name), and a blocked name is refused whatever this module says. Of the allowed
ones, decrypting costs a TLS handshake each way and puts pupils' (and staff's)
pages in the gateway's hands, so a connection is decrypted only where that changes
a decision or a record (group `decrypt = "needed"`, the shipped default):

- the device has not signed in and its group must (`require_auth`: the request goes to sign in);
- the group's action for it is warn (the warning page) or monitor (the DSL wants the pages);
- search engines, video and social sites and AI chat (search terms, SafeSearch, prompts);
- sites that carry other sites (translators, archives, caches: the carried site is in the path);
- a site no list decides (its pages are content-scored, and DNS-over-HTTPS and web proxies
  are recognised by the shape of their requests), or one listed in a category whose pages are
  scored (`[content] categories`);
- a site whose requests are decided apart by path: URL entries on it in the school's lists,
  the category lists or the illegal-content list, or an exception for a path on it.

Everything else (a site a list allows by name: the school's allow list, an exception for
the whole site, a category the group allows and content scoring does not read) passes
through undecrypted, recorded by name with its bytes and duration. A group with
`decrypt = "all"` decrypts every connection; `[tls] no_intercept_*` and `intercept = false`
are never decrypted, whatever the group.

Plain Python, shared by the gateway (addons/connections.py) and `schoolgate explain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from schoolgate.addons.embedded import carries_sites
from schoolgate.addons.searchterms import AI_CHAT, engine_for_host
from schoolgate.decide import Rule, Verdict
from schoolgate.policy import Action, ContentSettings, Decrypt, Group

if TYPE_CHECKING:
    from schoolgate.engine import Engine


@dataclass(frozen=True, slots=True)
class Decryption:
    decrypt: bool
    reason: str  # one sentence for `explain` and the record's note


def decryption(engine: Engine, host: str, group: Group, verdict: Verdict, *,
               user: str | None = None, client_ip: str | None = None) -> Decryption:
    """Whether TLS to `host`, decided `verdict` for `group`, is decrypted, and why."""
    policy = engine.policy
    if not policy.intercepts(host, set(verdict.categories)):
        return Decryption(False, "never decrypted ([tls] intercept or no_intercept_*)")
    if verdict.action is Action.BLOCK:
        return Decryption(True, "blocked: decrypted so the block page can be shown")
    if policy.portal.enabled and host == policy.portal.host:
        return Decryption(True, "the sign-in page, answered by the gateway itself")
    if group.require_auth and user is None:
        return Decryption(True, "not signed in: decrypted so the request can be sent to sign in")
    if group.decrypt is Decrypt.ALL:
        return Decryption(True, f'[groups.{group.name}] decrypt = "all"')
    if verdict.action in (Action.WARN, Action.MONITOR):
        return Decryption(True, f"{verdict.action.value}: the pages are shown or recorded one by one")
    if (engine_name := engine_for_host(host)) is not None:
        return Decryption(True, f"{engine_name}: search terms, SafeSearch and prompts are read from each request")
    if carries_sites(host):
        return Decryption(True, "it carries other sites, named in each request's address")
    if verdict.rule is Rule.DEFAULT:
        return Decryption(True, "on no list: its pages are content-scored, and proxies and DNS-over-HTTPS "
                                "are recognised by their requests")
    if scores_content(host, verdict, group, policy.content):
        return Decryption(True, "its category's pages are content-scored ([content] categories)")
    if (why := engine.decider.path_rules(host, group, user, client_ip)) is not None:
        return Decryption(True, f"its pages are decided one by one: {why}")
    return Decryption(False, "allowed by name: passed through undecrypted")


def scores_content(host: str, verdict: Verdict, group: Group, settings: ContentSettings) -> bool:
    """Whether an allowed site's pages are content-scored for this group: a site no list
    decided, one listed in a category that carries risk, or an AI chat service."""
    if not settings.enabled or not group.content_scoring:
        return False
    if engine_for_host(host) in AI_CHAT:
        return True
    if verdict.rule is Rule.DEFAULT:
        return True
    return verdict.rule is Rule.CATEGORY and any(c in settings.categories for c in verdict.categories)
