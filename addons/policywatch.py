"""The policy in force: loads policy.toml and the category index into an `Engine`,
reloads them when they change (a broken edit is refused and the last good policy
keeps serving), and picks up exceptions and managed list entries from the database.

First in addons/script.py: every other schoolgate add-on reads `PolicyWatch.engine`.
It also owns the gateway secret and the metrics endpoint, set once per process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from mitmproxy import ctx, exceptions

from schoolgate import metrics
from schoolgate.addons.signing import Signer
from schoolgate.categories import illegal
from schoolgate.db import create_engine, dispose_within, upgrade
from schoolgate.engine import Engine
from schoolgate.keys import load_or_create_secret
from schoolgate.live import LiveStore
from schoolgate.policy import Action, PolicyInvalid

log = logging.getLogger("schoolgate")


class PolicyWatch:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.signer: Signer | None = None  # from the policy's gateway secret file, shared by all gateway processes
        self.live_store: LiveStore | None = None
        self._watchers: list[asyncio.Task] = []
        self._live_failing = False
        self._refused_stamps: object = None
        self._served_metrics: tuple[str, int] | None = None

    def load(self, loader) -> None:
        loader.add_option("schoolgate_policy", str, "policy.toml", "Path to the school's policy file.")
        loader.add_option(
            "schoolgate_reload_ms", int, 2000, "Milliseconds between checks of the policy and list files for changes."
        )
        loader.add_option(
            "schoolgate_live_ms", int, 1000,
            "Milliseconds between checks of the database for new exceptions and list changes.",
        )
        loader.add_option(
            "schoolgate_illegal_dir", str, str(illegal.default_dir()),
            "Directory of the locked illegal-content lists (iwf/, ctiru/); a gateway option, not a policy "
            "setting, so no policy edit can switch the tier off.",
        )
        loader.add_option(
            "schoolgate_metrics_port", int, -1,
            "Metrics port of this process, overriding the policy's (set per worker by `schoolgate run --workers`).",
        )

    def configure(self, updated: set[str]) -> None:
        if not updated & {"schoolgate_policy", "schoolgate_illegal_dir"}:
            return
        try:
            engine = Engine.load(ctx.options.schoolgate_policy, self.engine, Path(ctx.options.schoolgate_illegal_dir))
        except PolicyInvalid as e:
            raise exceptions.OptionsError(f"policy {ctx.options.schoolgate_policy} is invalid:\n{e}") from e
        except (OSError, ValueError) as e:
            raise exceptions.OptionsError(f"cannot load policy {ctx.options.schoolgate_policy}: {e}") from e
        self._install(engine)
        if self.signer is None:
            assert engine.policy.gateway.secret_file is not None
            self.signer = Signer(load_or_create_secret(engine.policy.gateway.secret_file))
        if self.live_store is None:
            self.live_store = LiveStore(create_engine(engine.policy.gateway.database))
        self._serve_metrics(engine)

    async def running(self) -> None:
        assert self.engine is not None
        await upgrade(self.engine.policy.gateway.database)  # exceptions are read from the current schema
        await self._refresh_live()
        self._watchers = [asyncio.create_task(self._watch_policy()), asyncio.create_task(self._watch_live())]
        assert self.engine is not None
        log.info(
            "schoolgate enforcing %s: %d groups, %d category entries, %d local entries",
            self.engine.policy.path, len(self.engine.policy.groups), self.engine.index.entry_count,
            len(self.engine.policy.local),
        )

    async def done(self) -> None:
        for task in self._watchers:
            task.cancel()
        if self.live_store:
            await dispose_within(self.live_store.engine)

    def _install(self, engine: Engine) -> None:
        if self.engine is not None and engine.policy.gateway.database != self.engine.policy.gateway.database:
            log.warning("the database setting changed; it takes effect when the gateway restarts")
        if self.engine is not None and engine.policy.alerts != self.engine.policy.alerts:
            log.warning("the [alerts] settings changed; they take effect when the gateway restarts")
        self.engine = engine
        self._refused_stamps = None
        metrics.POLICY_RELOADS.labels("ok").inc()
        metrics.POLICY_VALID.set(1)
        metrics.POLICY_LOADED_AT.set(time.time())
        for category, count in engine.index.sizes().items():
            metrics.LIST_ENTRIES.labels(category).set(count)
        for action in (Action.ALLOW, Action.BLOCK):
            metrics.LIST_ENTRIES.labels(f"local-{action.value}").set(sum(e.action is action for e in engine.policy.local))

    def _serve_metrics(self, engine: Engine) -> None:
        port = ctx.options.schoolgate_metrics_port
        wanted = (engine.policy.gateway.metrics_address, port if port >= 0 else engine.policy.gateway.metrics_port)
        if self._served_metrics is not None:
            if wanted != self._served_metrics:
                log.warning("the metrics address changed; it takes effect when the gateway restarts")
            return
        if wanted[1]:
            try:
                metrics.serve(*wanted)
            except OSError as e:
                raise exceptions.OptionsError(f"cannot serve metrics on {wanted[0]}:{wanted[1]}: {e}") from e
        self._served_metrics = wanted

    @property
    def metrics_port(self) -> int | None:
        return self._served_metrics[1] if self._served_metrics else None

    async def _watch_policy(self) -> None:
        """Reload when the policy, its list files or the index change; a broken edit
        is refused and the last good policy keeps serving."""
        while True:
            await asyncio.sleep(ctx.options.schoolgate_reload_ms / 1000)
            engine = self.engine
            if engine is None:
                continue
            if engine.illegal is not None and engine.illegal.changed_on_disk():
                # First and on its own: the tier loads whatever happens to the policy below
                # (the lists add-on reports what it holds).
                engine = self.engine = await asyncio.to_thread(engine.with_current_illegal)
            if not engine.changed_on_disk():
                continue
            stamps = [p.stat().st_mtime_ns if p.exists() else None for p, _ in engine.stamps]
            if stamps == self._refused_stamps:
                continue
            try:
                new = await asyncio.to_thread(Engine.load, engine.policy.path, engine)
            except (PolicyInvalid, OSError, ValueError) as e:
                self._refused_stamps = stamps
                metrics.POLICY_RELOADS.labels("failed").inc()
                metrics.POLICY_VALID.set(0)
                log.error("policy change refused, still enforcing the policy loaded earlier:\n%s", e)
                continue
            self._install(new)
            log.info("policy reloaded from %s", new.policy.path)

    async def _watch_live(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.schoolgate_live_ms / 1000)
            await self._refresh_live()

    async def _refresh_live(self) -> None:
        """Pick up exceptions and list changes made by any console, CLI or gateway.
        While the database is unreachable the last known state keeps applying."""
        assert self.live_store is not None and self.engine is not None
        try:
            if await self.live_store.version() == self.engine.live.version:
                return
            live = await self.live_store.load()
        except Exception as e:  # the database being down must not stop filtering
            if not self._live_failing:
                log.error("cannot read exceptions from the database (%s); the last known ones still apply", e)
            self._live_failing = True
            return
        if self._live_failing:
            log.info("reading exceptions from the database again")
        self._live_failing = False
        self.engine = self.engine.with_live(live)
        log.info("live policy version %d: %d exceptions, %d managed list entries",
                 live.version, len(live.grants), len(live.entries))
