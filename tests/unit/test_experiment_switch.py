"""Starting an experiment on one worker and writing it into the registry is one step: the
registry's poll, running meanwhile, cannot stop it (it did, for one poll interval)."""

import asyncio
from pathlib import Path
from types import SimpleNamespace

from schemas.bundle import Registry
from schemas.experiments import Experiment
from serving.experiments import Experiments

AB = Experiment.model_validate(
    {"name": "ab", "arms": [{"name": "champion", "share": 0.5}, {"name": "challenger", "version": 1, "share": 0.5}]}
)


class SlowPinnedHolder:
    """A pinned arm's models that load once `loaded` is set (as a load awaits Redis and disk)."""

    def __init__(self, version: int, loaded: asyncio.Event):
        self.pinned, self.loaded, self.bundle, self.last_error = version, loaded, None, None

    async def refresh(self) -> bool:
        await self.loaded.wait()
        self.bundle = object()
        return True


def test_a_poll_of_the_registry_during_a_start_does_not_stop_the_experiment(tmp_path: Path):
    async def scenario():
        loaded = asyncio.Event()
        live = SimpleNamespace(registry=Registry(tmp_path))
        experiments = Experiments(live, lambda version: SlowPinnedHolder(version, loaded), default=None)
        running = asyncio.create_task(experiments.run(AB))
        await asyncio.sleep(0)  # the start is loading the challenger's models
        poll = asyncio.create_task(experiments.follow(poll_s=3600))
        await asyncio.sleep(0)  # the poll reads the registry, which holds no experiment yet
        loaded.set()
        await running
        await asyncio.sleep(0.01)
        poll.cancel()
        return experiments.running.experiment, experiments.registry.experiment(None)

    assert asyncio.run(scenario()) == (AB, AB)
