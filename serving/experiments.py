"""The experiment the service runs (schemas/EXPERIMENTS.md): each arm's models and each request's arm.

An arm serving the registry's live version shares the live holder, hot swaps included; an arm pinned
to a version has a holder of its own, loaded before the experiment starts, so no request meets an arm
without models. Every worker runs the registry's experiment (set by POST /v1/admin/experiments on
any worker), checked every KF_MODEL_POLL_S; while none was set, KF_EXPERIMENT.
"""

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from schemas.experiments import Experiment
from schemas.runtime.catalogue_topic import CatalogueChanges
from serving.models import ModelHolder

log = logging.getLogger("kingfisher.serving")


class ExperimentError(RuntimeError):
    """An experiment that cannot run: one of its arms' versions does not load."""


@dataclass(frozen=True)
class Assignment:
    """A request's arm (None outside an experiment), the models that answer it, and the shadow arms
    that rank it too (each for its share of requests), by name."""

    experiment: str | None
    arm: str | None
    holder: ModelHolder
    shadows: tuple[tuple[str, ModelHolder], ...] = ()


@dataclass(frozen=True)
class Running:
    experiment: Experiment | None = None
    holders: Mapping[str, ModelHolder] = field(default_factory=dict)
    """Arm name -> its models."""


class Experiments:
    def __init__(self, live: ModelHolder, pinned_holder: Callable[[int], ModelHolder], default: Experiment | None):
        """`pinned_holder(version)` makes a holder of one version; `default` is KF_EXPERIMENT."""
        self.live, self.pinned_holder, self.default = live, pinned_holder, default
        self.registry = live.registry
        self.running = Running()
        self.last_error: str | None = None
        self._lock = asyncio.Lock()

    def assign(self, user_id: str) -> Assignment:
        running = self.running  # one read: an experiment switching meanwhile cannot mix two
        if running.experiment is None:
            return Assignment(None, None, self.live)
        experiment, holders = running.experiment, running.holders
        arm = experiment.arm_of(user_id)
        shadows = tuple((shadow.name, holders[shadow.name]) for shadow in experiment.shadows
                        if random.random() < shadow.share)  # fmt: skip
        return Assignment(experiment.name, arm.name, holders[arm.name], shadows)

    async def start(self, experiment: Experiment | None) -> None:
        """Load the versions `experiment`'s arms are pinned to, then run it (None: stop the one running).
        Raises ExperimentError, and the running experiment stays, when a version does not load."""
        async with self._lock:
            await self._start(experiment)

    async def run(self, experiment: Experiment | None) -> None:
        """`start` it here, then write it into the registry for every worker, in one step: the
        registry's poll (`follow`) cannot stop it in between. If the registry cannot be written
        (OSError), the experiment that ran before runs again."""
        async with self._lock:
            previous = self.running.experiment
            await self._start(experiment)
            try:
                self.registry.set_experiment(experiment)
            except OSError:
                await self._start(previous)
                raise

    async def _start(self, experiment: Experiment | None) -> None:
        if experiment == self.running.experiment:
            return
        holders = {}
        for arm in experiment.arms if experiment else ():
            holders[arm.name] = self.live if arm.version is None else await self._loaded(arm.version)
        previous, self.running, self.last_error = self.running.experiment, Running(experiment, holders), None
        log.info("experiment %s running (was %s)", experiment.name if experiment else "none",
                 previous.name if previous else "none")  # fmt: skip

    async def _loaded(self, version: int) -> ModelHolder:
        """The running holder of `version` if there is one, else a new one, loaded."""
        for holder in self.running.holders.values():
            if holder.pinned == version:
                return holder
        holder = self.pinned_holder(version)
        await holder.refresh()
        if holder.bundle is None:
            raise ExperimentError(f"version {version} does not load: {holder.last_error}")
        return holder

    async def apply(self, changes: CatalogueChanges) -> None:
        """The catalogue's changes into every pinned arm's models (the live holder takes them itself)."""
        for holder in {id(h): h for h in self.running.holders.values() if h is not self.live}.values():
            await holder.apply(changes)

    async def follow(self, poll_s: float) -> None:
        """Run the registry's experiment, checked every `poll_s`."""
        while True:
            try:
                async with self._lock:  # the registry read and the start together: `run` cannot come between
                    await self._start(self.registry.experiment(self.default))
            except (ExperimentError, OSError, ValueError) as error:
                if str(error) != self.last_error:
                    log.error("experiment not started: %s", error)
                self.last_error = str(error)
            await asyncio.sleep(poll_s)
