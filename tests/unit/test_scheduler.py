import argparse
import threading
from types import SimpleNamespace

import pytest

from schemas.config import Settings
from training import scheduler
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
    monkeypatch.setattr(scheduler, "train_once", lambda settings, data, progress: started.append(data) or OUTCOME)
    return started


def test_a_delay_holds_the_first_run_back_until_stopped(runs):
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()

    scheduler.run_periodically(Settings(), Source.SAMPLES, 3600, stop, 0, False, delay_s=3600)

    assert runs == []


def test_without_a_delay_the_first_run_starts_at_once(runs, monkeypatch):
    stop = threading.Event()
    monkeypatch.setattr(
        scheduler, "train_once", lambda settings, data, progress: runs.append(data) or stop.set() or OUTCOME
    )

    scheduler.run_periodically(Settings(), Source.SAMPLES, 3600, stop, 0, False)

    assert runs == [Source.SAMPLES]
