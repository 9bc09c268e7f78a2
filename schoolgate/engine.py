"""A loaded policy with its category index: everything needed to decide, as one
immutable value that the gateway swaps whole on reload."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from schoolgate.categories.index import CategoryIndex, builtin_index
from schoolgate.decide import Decider, Verdict
from schoolgate.live import EMPTY, LiveState
from schoolgate.policy import Group, Policy, load_policy
from schoolgate.urls import Target

log = logging.getLogger("schoolgate.engine")


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
    decider: Decider
    stamps: tuple[tuple[Path, tuple[int, int] | None], ...]
    live: LiveState = EMPTY  # exceptions and managed list entries from the database

    @classmethod
    def load(cls, policy_path: str | Path, previous: Engine | None = None) -> Engine:
        """Load policy and index; raises PolicyInvalid, or OSError/ValueError for a
        broken index file. An unchanged index file is reused, not reopened."""
        policy = load_policy(policy_path)
        index = _open_index(policy.lists_index, previous)
        live = previous.live if previous else EMPTY
        watched = (policy.path, *policy.watched_files, *((policy.lists_index,) if policy.lists_index else ()))
        return cls(
            policy=policy,
            index=index,
            decider=Decider(policy, index, live.entries, live.grants),
            stamps=tuple((p, _stamp(p)) for p in watched),
            live=live,
        )

    def with_live(self, live: LiveState) -> Engine:
        return replace(self, live=live, decider=Decider(self.policy, self.index, live.entries, live.grants))

    def changed_on_disk(self) -> bool:
        return any(_stamp(path) != stamp for path, stamp in self.stamps)

    def decide(self, target: Target, group: Group, **context: Any) -> Verdict:
        """See Decider.decide for the context (user, client_ip, search_hit, seen_as)."""
        return self.decider.decide(target, group, **context)

    def listed_categories(self, target: Target) -> set[str]:
        return {hit.category for hit in self.index.lookup(target.host, target.match_path)}


def _open_index(path: Path | None, previous: Engine | None) -> CategoryIndex:
    if path is None:
        return builtin_index()
    if not path.exists():
        log.warning("category index %s does not exist yet (run `schoolgate lists update`); using the built-in list", path)
        return builtin_index()
    if previous is not None and previous.index.path == path and previous.policy.lists_index == path:
        old = dict(previous.stamps).get(path)
        if old is not None and old == _stamp(path):
            return previous.index
    return CategoryIndex.open(path)
