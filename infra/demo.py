"""`make demo`: the whole system on local defaults, ending with the URL of the web page.

Kafka and Redis → the demo history (MovieLens, else synthetic) published into Kafka → the feature job
applies it → the first models trained from the stream's sample log → the service and the retraining
scheduler. Every step is skipped when its result is already there, so a second run is quick and
changes nothing; `make down` stops every process, `make status` shows each one.
"""

import argparse
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from infra.stack import (
    FeatureJob,
    RecommendationService,
    Retrainer,
    StackError,
    console,
    exit_code,
    log_tail,
    start_all,
    up,
)
from schemas import sample_log
from schemas.bundle import EXPERIMENT, Registry
from schemas.config import Settings
from schemas.experiments import Arm, Experiment
from schemas.runtime.sources.movielens import SHARED_DATASET
from streams.publish import progress_bar
from streams.replay import group_consumer, plan, replayed_so_far

DOWNLOAD_TIMEOUT_S = 20
CATCH_UP_POLL_S = 1.0
MOVIELENS_CITATION = (
    "MovieLens ml-latest-small, GroupLens Research (research use; cite F. M. Harper and J. A. Konstan, "
    "The MovieLens Datasets: History and Context, ACM TiiS 5(4), 2015)"
)


@dataclass(frozen=True)
class History:
    """The demo's catalogue and events: a MovieLens directory, or the synthetic generator (path None)."""

    source: str
    path: Path | None
    why: str

    def publish_arguments(self, what: str, settings: Settings) -> list[str]:
        arguments = ["publish", what, self.source, "--no-progress"]
        if self.path is not None:
            arguments += ["--path", str(self.path)]
        if self.source == "synthetic" and what == "events":
            arguments += ["--limit", str(settings.demo.demo_synthetic_events)]
        return arguments


def choose_history(settings: Settings) -> History:
    """KF_MOVIELENS_PATH, then ../shared/datasets/ml-latest-small, then a download, then synthetic."""
    if settings.demo.demo_source == "synthetic":
        return History("synthetic", None, "KF_DEMO_SOURCE=synthetic")
    if settings.stack.movielens_path is not None:
        if not settings.stack.movielens_path.is_dir():
            raise StackError(f"KF_MOVIELENS_PATH={settings.stack.movielens_path} is not a directory")
        return History("movielens", settings.stack.movielens_path, "KF_MOVIELENS_PATH")
    if SHARED_DATASET.is_dir():
        return History("movielens", SHARED_DATASET, f"found {SHARED_DATASET}")
    downloaded = download_movielens(settings)
    if downloaded is not None:
        return History("movielens", downloaded, f"downloaded from {settings.demo.movielens_url}")
    if settings.demo.demo_source == "movielens":
        raise StackError("KF_DEMO_SOURCE=movielens, but no MovieLens directory is on disk and the download failed")
    return History("synthetic", None, "no MovieLens on disk and no download: the synthetic generator")


def download_movielens(settings: Settings) -> Path | None:
    """ml-latest-small unpacked under KF_RUN_DIR/datasets, or None when it cannot be fetched."""
    target = (settings.stack.run_dir / "datasets").resolve()
    directory = target / Path(settings.demo.movielens_url).stem
    if (directory / "ratings.csv").exists():
        return directory
    archive = target / Path(settings.demo.movielens_url).name
    target.mkdir(parents=True, exist_ok=True)
    console.print(f"downloading {settings.demo.movielens_url} …")
    try:
        with urllib.request.urlopen(settings.demo.movielens_url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            archive.write_bytes(response.read())
        with zipfile.ZipFile(archive) as unpacked:
            unpacked.extractall(target)
    except (urllib.error.URLError, OSError, zipfile.BadZipFile) as error:
        console.print(f"[yellow]download failed ({error}); using the synthetic generator")
        return None
    return directory if (directory / "ratings.csv").exists() else None


def run_quietly(settings: Settings, name: str, *arguments: str, expected: tuple[int, ...] = (0,)) -> int:
    """Run `python arguments` with its progress bars (stdout) on the terminal and its logs and the
    libraries' start-up warnings (stderr) in KF_RUN_DIR/logs/`name`.log, shown when it exits with a
    code not `expected`."""
    settings.stack.logs_dir.mkdir(parents=True, exist_ok=True)
    log = settings.stack.logs_dir / f"{name}.log"
    with log.open("w") as output:
        result = subprocess.run([sys.executable, *arguments], stderr=output, check=False)
    if result.returncode not in expected:
        console.print(f"[red]{name} failed; the end of {log}:[/]\n{log_tail(log)}")
    return result.returncode


def kingfisher(settings: Settings, *arguments: str) -> None:
    """Run the operators' CLI (`kingfisher ...`) with this process's settings; stop the demo if it fails."""
    if code := run_quietly(settings, f"kingfisher-{arguments[0]}", "-m", "streams.cli", *arguments):
        raise StackError(f"`kingfisher {' '.join(arguments)}` failed with exit code {code}")


def publish_history(settings: Settings, history: History) -> None:
    for what, topic in (("catalogue", settings.stack.topic_items), ("events", settings.stack.topic_events)):
        held = plan(settings, topic, settings.stack.namespace, None).events  # records from first to latest offset
        if held:
            console.print(f"{topic!r} already holds {held:,} records: not published again")
        else:
            kingfisher(settings, *history.publish_arguments(what, settings))


def wait_for_stream(settings: Settings, job: FeatureJob) -> None:
    """Until the feature job has committed (checkpointed) every offset of the events topic that
    existed when this started, with a progress bar."""
    target = plan(settings, settings.stack.topic_events, settings.stack.namespace, None)
    offsets = group_consumer(settings, target.group_id)
    try:
        with progress_bar(enabled=True) as progress:
            task = progress.add_task("stream applying the history", total=target.events)
            while (applied := replayed_so_far(offsets, target)) < target.events:
                if job.running_process() is None:
                    raise StackError(f"the feature job stopped; see {job.log_file}:\n{log_tail(job.log_file)}")
                progress.update(task, completed=applied)
                time.sleep(CATCH_UP_POLL_S)
            progress.update(task, completed=target.events)
    finally:
        offsets.close()
    wait_for_sample_log(settings)


def wait_for_sample_log(settings: Settings) -> None:
    """Until the files of the checkpoint that covered the history are committed: Flink commits the
    offsets and the sample log on the same checkpoint's completion, but one after the other.
    Bounded, as a stream that keeps receiving events always has a file in progress."""
    directory = sample_log.log_directory(settings.stack.samples_dir, settings.stack.namespace)
    deadline = time.monotonic() + 3 * settings.stream.checkpoint_interval_s
    while sample_log.in_progress_files(directory) and time.monotonic() < deadline:
        time.sleep(CATCH_UP_POLL_S)


GATE_REFUSED = 2
DEMO_EXPERIMENT = Experiment(name="demo-aa", arms=(Arm(name="a", share=0.5), Arm(name="b", share=0.5)))
"""`python -m training`'s exit code when the gate refuses the new models."""


def train_first_models(settings: Settings) -> int:
    registry = Registry(settings.stack.models_dir)
    if not registry.servable():  # none yet, or one of an older bundle format
        console.print(
            "training quick first models from the stream's sample log (the full ones follow in the background) …"
        )
        code = run_quietly(settings, "first-training", "-m", "training", "--quick", expected=(0, GATE_REFUSED))
        if code == GATE_REFUSED:  # e.g. on little data, where a few quick steps stay below popularity
            console.print("[yellow]the quick models did not pass the gate: training the full ones …")
            code = run_quietly(settings, "first-training-full", "-m", "training")
        if code != 0 or not registry.servable():
            raise StackError(f"the first training run failed (exit code {code})")
    return registry.current()


def start_demo_experiment(settings: Settings) -> None:
    """An A/A test between two arms of the live model, unless an experiment was configured or set before:
    the page shows each user's arm and the stream's counts, and both arms should agree."""
    registry = Registry(settings.stack.models_dir)
    if settings.serving.experiment is None and not (registry.root / EXPERIMENT).exists():
        registry.set_experiment(DEMO_EXPERIMENT)
        console.print(f"experiment {DEMO_EXPERIMENT.name}: an A/A test, both arms serve the live model "
                      "(schemas/EXPERIMENTS.md to try a challenger)")  # fmt: skip


def demo(settings: Settings) -> str:
    """Bring everything up; returns the page's URL."""
    started = time.monotonic()
    up(settings)
    history = choose_history(settings)
    console.print(f"history: {history.source} ({history.why})")
    if history.source == "movielens":
        console.print(f"[dim]{MOVIELENS_CITATION}")
    publish_history(settings, history)
    job = FeatureJob(settings)
    start_all(settings, [job])
    wait_for_stream(settings, job)
    version = train_first_models(settings)
    start_demo_experiment(settings)
    service = RecommendationService(settings)
    start_all(settings, [service, Retrainer(settings)])
    console.print(
        f"\n[bold green]Kingfisher is running[/] (model v{version}, ready in {time.monotonic() - started:.0f} s)\n"
        f"  open   [bold]{service.url}[/]  (or {service.url}?user_id=<id>)\n"
        f"  status make status     logs {settings.stack.logs_dir.resolve()}\n"
        f"  stop   make down"
    )
    return service.url


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m infra.demo", description=__doc__).parse_args(argv)
    return exit_code(lambda: demo(Settings()))


if __name__ == "__main__":
    sys.exit(main())
