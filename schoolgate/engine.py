"""A loaded policy with its category index: everything needed to decide, as one
immutable value that the gateway swaps whole on reload."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from schoolgate.categories import illegal
from schoolgate.categories.health import IndexStatus, Serving
from schoolgate.categories.index import CategoryIndex, IndexInvalid, builtin_index
from schoolgate.decide import Decider, Verdict
from schoolgate.grants import EMPTY, LiveState
from schoolgate.layers import Layered
from schoolgate.policy import Group, Policy, load_policy
from schoolgate.urls import Target, normalise_entry, parse_target

log = logging.getLogger("schoolgate.engine")


def _decider(policy: Policy, index: CategoryIndex, live: LiveState, tier: illegal.IllegalTier | None) -> Decider | Layered:
    """The school's decider, held to the trust's baseline when `[baseline] file` names one
    (the baseline layer has no exceptions or live lists: those are the school's)."""
    school = Decider(policy, index, live.entries, live.grants, tier)
    return Layered(school, Decider(policy.trust, index, (), (), tier), policy.trust) if policy.trust else school


def _stamp(path: Path | None) -> tuple[int, int] | None:
    """What a reload compares: modification time and size (None when missing)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class Engine:
    policy: Policy
    index: CategoryIndex
    decider: Decider | Layered  # Layered when the policy has a trust baseline
    stamps: tuple[tuple[Path, tuple[int, int] | None], ...]
    live: LiveState = EMPTY  # exceptions and managed list entries from the database
    index_status: IndexStatus = IndexStatus(Serving.BUILTIN)  # whether `index` is the one the policy names
    illegal: illegal.IllegalTier | None = None  # the locked IWF/CTIRU tier (from the gateway's options, not the policy)

    @classmethod
    def load(cls, policy_path: str | Path, previous: Engine | None = None, illegal_dir: Path | None = None) -> Engine:
        """Load policy, index and illegal-content tier; raises PolicyInvalid. An unchanged
        index file is reused, not reopened; a missing or broken one never raises (see
        _open_index). The tier's directory is `illegal_dir`, else the previous engine's,
        else illegal.default_dir()."""
        policy = load_policy(policy_path)
        index, index_status = _open_index(policy.lists.index, previous, frozenset(policy.lists.builtin_skip))
        tier = _load_illegal(illegal_dir, previous)
        live = previous.live if previous else EMPTY
        watched = (policy.path, *policy.watched_files, *((policy.lists.index,) if policy.lists.index else ()))
        return cls(
            policy=policy,
            index=index,
            decider=_decider(policy, index, live, tier),
            stamps=tuple((p, _stamp(p)) for p in watched),
            live=live,
            index_status=index_status,
            illegal=tier,
        )

    def with_live(self, live: LiveState) -> Engine:
        decider = _decider(self.policy, self.index, live, self.illegal)
        return replace(self, live=live, decider=decider)

    def with_current_illegal(self) -> Engine:
        """This engine with the illegal-content tier as it is on disk now, whatever state
        policy.toml is in (a refused edit must not hold back new IWF/CTIRU entries)."""
        tier = _load_illegal(None, self)
        if tier is self.illegal:
            return self
        return replace(self, illegal=tier, decider=_decider(self.policy, self.index, self.live, tier))

    def changed_on_disk(self) -> bool:
        return any(_stamp(path) != stamp for path, stamp in self.stamps) or bool(
            self.illegal and self.illegal.changed_on_disk()
        )

    def decide(self, target: Target, group: Group, **context: Any) -> Verdict:
        """See Decider.decide for the context (user, client_ip, search_hit, seen_as)."""
        return self.decider.decide(target, group, **context)

    def listed_categories(self, target: Target) -> set[str]:
        listed = {hit.category for hit in self.index.lookup(target.host, target.match_path)}
        if self.illegal is not None and self.illegal.lookup(target.host, target.match_path):
            listed.add("illegal")  # so an exception for it is refused up front ("nobody opens illegal content")
        return listed


def grant_categories(policy: Policy, target: str) -> set[str]:
    """Categories an exception's target (`example.com`, `example.com/page`, `category:x`) is listed
    in, so a grant is checked against what it really opens. Opens the category index."""
    if target.startswith("category:"):
        return set()
    host, path = normalise_entry(target)
    return Engine.load(policy.path).listed_categories(parse_target(f"http://{host}{path}"))


def _load_illegal(directory: Path | None, previous: Engine | None) -> illegal.IllegalTier:
    old = previous.illegal if previous else None
    directory = directory or (old.directory if old else None) or illegal.default_dir()
    if old is not None and old.directory == directory and not old.changed_on_disk():
        return old
    return illegal.load(directory)  # its problems are logged and exported by the lists add-on and `check`


def _open_index(path: Path | None, previous: Engine | None,
                builtin_skip: frozenset[str] = frozenset()) -> tuple[CategoryIndex, IndexStatus]:
    """The index to serve and why. A missing, unreadable or corrupt file never opens
    the filter: the last good index keeps serving; only when there has been none
    since start does the built-in list serve, and the status says so (log, metric,
    `schoolgate check`)."""
    if path is None:
        return builtin_index(builtin_skip), IndexStatus(Serving.BUILTIN, detail="no [lists] index configured: the built-in list serves")
    if previous is not None and previous.policy.lists.index == path:
        old = dict(previous.stamps).get(path)
        if old == _stamp(path):
            return previous.index, previous.index_status
    try:
        return CategoryIndex.open(path), IndexStatus(Serving.INDEX)
    except IndexInvalid as e:
        if previous is not None and previous.index.path == path:
            log.warning("category index refused (%s); the last good index keeps serving", e)
            return previous.index, IndexStatus(
                Serving.PREVIOUS, e.problem, f"{e}; the last good index (compiled {previous.index.header['created']}) keeps serving"
            )
        fallback = builtin_index(builtin_skip)  # the stopgap until an index exists, even with `builtin = false`
        if e.problem == "missing":
            detail = (f"{path} is not compiled yet: the built-in list ({fallback.entry_count} entries) serves until "
                      "`schoolgate lists update` (or the first-start download) writes it")
        else:
            detail = f"{e}; the built-in list ({fallback.entry_count} entries) serves until a good index is compiled"
        log.warning("category index: %s", detail)
        return fallback, IndexStatus(Serving.BUILTIN, e.problem, detail)
