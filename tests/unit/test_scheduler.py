import argparse
import threading
from types import SimpleNamespace

import pytest

from schemas.bundle import CURRENT, MANIFEST, Manifest, Registry
from schemas.config import Settings
from schemas.hyperparameters import Hyperparameters
from training import scheduler
from training.pipeline import quick
from training.sources import Source


def test_durations_read_units_and_zero_only_when_allowed():
    assert scheduler.duration_s("15m") == 900
    assert scheduler.duration_s("2h") == 7200
    assert scheduler.duration_s("90") == 90
    assert scheduler.duration_s("0s", allow_zero=True) == 0
    with pytest.raises(argparse.ArgumentTypeError, match="not a positive duration"):
        scheduler.duration_s("0s")
    with pytest.raises(argparse.ArgumentTypeError):
        scheduler.duration_s("soon")


OUTCOME = SimpleNamespace(version=1, verdict="published")


@pytest.fixture
def runs(monkeypatch) -> list[str]:
    started: list[str] = []
    monkeypatch.setattr(scheduler, "load", lambda settings, source, events: source)
    monkeypatch.setattr(
        scheduler, "train_once", lambda settings, data, progress, incremental: started.append(data) or OUTCOME
    )
    return started


def test_a_delay_holds_the_first_run_back_until_stopped(runs):
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()

    scheduler.run_periodically(Settings(), Source.SAMPLES, 3600, stop, 0, False, delay_s=3600)

    assert runs == []


def test_without_a_delay_the_first_run_starts_at_once(runs, monkeypatch):
    stop = threading.Event()
    monkeypatch.setattr(
        scheduler,
        "train_once",
        lambda settings, data, progress, incremental: runs.append(data) or stop.set() or OUTCOME,
    )

    scheduler.run_periodically(Settings(), Source.SAMPLES, 3600, stop, 0, False)

    assert runs == [Source.SAMPLES]


def live_version_trained_with(settings: Settings, hyperparameters: Hyperparameters) -> None:
    """A registry whose live version's manifest records `hyperparameters` (the only file the scheduler reads)."""
    registry = Registry(settings.stack.models_dir)
    registry.path(1).mkdir(parents=True)
    manifest = Manifest(version=1, parent_version=None, created_at=0, feature_spec=settings.pipeline.features,
                        hyperparameters=hyperparameters, trained_until=0)  # fmt: skip
    (registry.path(1) / MANIFEST).write_bytes(manifest.model_dump_json().encode())
    (registry.root / CURRENT).write_text("v000001\n")


def test_with_no_live_version_or_one_trained_as_configured_the_first_run_keeps_its_delay(tmp_path):
    settings = Settings(run_dir=tmp_path)
    assert scheduler.first_run_delay_s(settings, 3600) == 3600

    live_version_trained_with(settings, settings.training.model)

    assert scheduler.first_run_delay_s(settings, 3600) == 3600


def test_a_quick_first_model_live_is_retrained_at_once(tmp_path):
    settings = Settings(run_dir=tmp_path)
    live_version_trained_with(settings, quick(settings).training.model)

    assert quick(settings).training.model.train_epochs == 3 < settings.training.model.train_epochs
    assert scheduler.first_run_delay_s(settings, 3600) == 0
