"""The category lists in a running gateway: says loudly (log and metrics) which
index serves, which blocked categories are empty and whether the lists are stale,
and the same for the locked illegal-content tier;
and at first start, with no good index yet, downloads and compiles the policy's
`[lists] sources` in the background while the built-in list serves.

The download runs `schoolgate lists update` as a child process: the compile's
CPU and memory stay out of the proxy process, its progress lines go to this log,
and its lock keeps several workers (and the nightly timer) from compiling at once.
PolicyWatch notices the new index file and swaps to it while serving.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from mitmproxy import ctx

from schoolgate import metrics
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.categories import illegal
from schoolgate.categories.health import Health, Serving
from schoolgate.categories.illegal import IllegalTier
from schoolgate.categories.status import health_of
from schoolgate.engine import Engine

log = logging.getLogger("schoolgate.lists")

_RETRY_SECONDS = 15 * 60  # after a failed first-start download
_SWAP_SECONDS = 60  # after a good one: the engine loads the new index on its next reload check
_UPDATE_IN_PROGRESS = 3  # `lists update` exit status: another process holds the lock


class Lists:
    def __init__(self, policy: PolicyWatch) -> None:
        self.policy = policy
        self._task: asyncio.Task | None = None
        self._fetch: asyncio.Task | None = None
        self._next_fetch_at = 0.0  # monotonic time before which no first-start download starts
        self._reported: object = None  # what was last logged, so a problem is logged when it changes, not every tick
        self._tier_reported: object = None

    def load(self, loader) -> None:
        loader.add_option(
            "schoolgate_lists_fetch", bool, True,
            "At start, with no good category index yet, download and compile the policy's [lists] sources "
            "in the background (the built-in list serves meanwhile).",
        )

    async def running(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def done(self) -> None:
        for task in (self._task, self._fetch):
            if task is not None:
                task.cancel()

    async def _watch(self) -> None:
        # At start problems are warnings: mitmdump exits on an error logged during start-up,
        # and a gateway that filters with the built-in list beats no gateway at all.
        level = logging.WARNING
        while True:
            engine = self.policy.engine
            if engine is not None:
                self.tick(engine, level)
            await asyncio.sleep(ctx.options.schoolgate_reload_ms / 1000)
            level = logging.ERROR

    def tick(self, engine: Engine, level: int = logging.ERROR) -> Health:
        health = health_of(engine)
        publish(health)
        self._report(engine, health, level)
        self._watch_tier(engine.illegal, level)
        if self._wants_fetch(engine):
            self._fetch = asyncio.create_task(self._run_update(engine))
        return health

    def _report(self, engine: Engine, health: Health, level: int) -> None:
        problems = health.problems()
        key = (id(engine.index), engine.index_status, tuple(problems[1:] if health.stale else problems))
        if key == self._reported:
            return
        self._reported = key
        index = engine.index
        where = index.path or "the built-in list"
        log.info("category lists: %s, %s entries, %d categories acted on", where, f"{index.entry_count:,}", len(health.entries))
        for line in problems:
            log.log(level, "category lists: %s", line)

    def _watch_tier(self, tier: IllegalTier | None, level: int) -> None:
        """The tier's problems as loaded, plus its age as time passes (a provider's feed
        that stops is only seen by watching the clock)."""
        problems = list(tier.problems) if tier else ["the illegal-content tier is not loaded"]
        oldest = tier.oldest() if tier else None
        age = None if oldest is None else time.time() - oldest
        if age is not None and age > illegal.MAX_AGE_HOURS * 3600 and not any("hours old" in p for p in problems):
            problems.append(f"the oldest list is {age / 3600:.0f} hours old (more than {illegal.MAX_AGE_HOURS}): "
                            "is the provider's update reaching this gateway?")
        by_provider = tier.entries_by_provider() if tier else dict.fromkeys(illegal.PROVIDERS, 0)
        for provider, count in by_provider.items():
            metrics.ILLEGAL_TIER_ENTRIES.labels(provider).set(count)
        metrics.ILLEGAL_TIER_AGE.set(-1 if age is None else age)
        metrics.ILLEGAL_TIER_OK.set(0 if problems else 1)
        key = (id(tier), tuple(problems))
        if key == self._tier_reported:
            return
        self._tier_reported = key
        if tier is not None:
            log.info("illegal-content tier: %s, %s", tier.directory,
                     ", ".join(f"{provider} {count:,} entries" for provider, count in by_provider.items()))
        for problem in problems:
            log.log(level, "illegal-content tier: %s", problem)

    def _wants_fetch(self, engine: Engine) -> bool:
        policy = engine.policy
        if not ctx.options.schoolgate_lists_fetch or policy.lists.index is None or not policy.lists.sources:
            return False
        if self._fetch is not None and not self._fetch.done():
            return False
        if engine.index_status.serving is not Serving.BUILTIN:
            return False  # a compiled index serves; the nightly timer keeps it fresh
        return time.monotonic() >= self._next_fetch_at

    async def _run_update(self, engine: Engine) -> None:
        policy = engine.policy
        log.warning(
            "no category index yet: downloading and compiling %s into %s in the background; "
            "the built-in list (%d entries) serves until it is ready", ", ".join(policy.lists.sources),
            policy.lists.index, engine.index.entry_count,
        )
        started = time.monotonic()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "schoolgate", "lists", "update", "--policy", str(policy.path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        assert child.stdout is not None
        async for raw in child.stdout:
            if line := raw.decode(errors="replace").rstrip():
                log.info("lists update: %s", line)
        status = await child.wait()
        if status == 0:
            # The built-in list still serves until the reload check swaps the index in: not a reason to fetch again.
            self._next_fetch_at = time.monotonic() + _SWAP_SECONDS
            metrics.LISTS_FETCHES.labels("ok").inc()
            log.info("category lists compiled in %.0f s; the gateway swaps to them within seconds", time.monotonic() - started)
        elif status == _UPDATE_IN_PROGRESS:
            self._next_fetch_at = time.monotonic() + 60  # look again in a minute
        else:
            self._next_fetch_at = time.monotonic() + _RETRY_SECONDS
            metrics.LISTS_FETCHES.labels("failed").inc()
            log.error("category lists could not be fetched (exit %d, see above); the built-in list still serves; "
                      "retrying in %d minutes", status, _RETRY_SECONDS // 60)


def publish(health: Health) -> None:
    status = health.status
    metrics.CATEGORY_INDEX_OK.clear()
    metrics.CATEGORY_INDEX_OK.labels(status.problem or "none").set(1 if status.ok else 0)
    metrics.CATEGORY_ENTRIES.clear()
    for category, count in health.entries.items():
        metrics.CATEGORY_ENTRIES.labels(category, health.actions[category]).set(count)
    age = health.age_days
    metrics.CATEGORY_LISTS_AGE.set(-1 if age is None else age * 86400)
    metrics.CATEGORY_LISTS_STALE.set(1 if health.stale else 0)
