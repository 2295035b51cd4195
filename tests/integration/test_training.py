"""Training on tiny data end to end: real TensorFlow, Faiss, Kafka announcements, bundles on disk."""

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest

from schemas import sample_log
from schemas.bundle import MANIFEST, REPORT, SERVED_MODELS, Registry
from schemas.config import Settings
from schemas.hyperparameters import Hyperparameters
from schemas.runtime.ann import ItemIndex
from schemas.runtime.sources.synthetic import SyntheticWorld, WorldSpec
from tests.conftest import REPO_ROOT, Stack, consume_all, consume_to_end
from tests.integration.test_feature_job import new_topic_named, publish
from tests.operator_harness import write_sample_log
from training.data import bootstrap_rows
from training.evaluation import PREVIOUS, SERVED
from training.pipeline import TrainingRun
from training.sources import Source, load

TINY = {"KF_TRAIN_EPOCHS": "1", "KF_TRAIN_BATCH_SIZE": "128", "KF_EVAL_MAX_QUERIES": "200"}
SCHEDULER_TIMEOUT_S = 420
LOAD_AND_SCORE = """
import sys, numpy as np
from pathlib import Path
from schemas.runtime.loaded_bundle import LoadedBundle
from schemas.events import EventType
from schemas.features import SequenceEntry
from schemas.runtime.pipeline import RankRequest, rank_batch
bundle = LoadedBundle(Path(sys.argv[1]), 50_000)
sequence = [SequenceEntry("e1", "i2", EventType.CLICK, 1_735_700_000_000),
            SequenceEntry("e2", "i3", EventType.CLICK, 1_735_700_060_000)]
request = RankRequest("u1", sequence, None, 1_735_700_100_000, [("i7", 3.0)], {"i2", "i3"}, 20, 50, explain=20)
[ranked] = rank_batch(bundle, [request])
print(bundle.version, len(ranked.items), ranked.candidates, sorted({r for item in ranked.items for r in item.reasons}))
print(sorted({item.item_id for item in ranked.items} & {"i2", "i3"}), bundle.similar("i2", 5)[0][0] != "i2")
"""

SYNTHETIC_EVENTS = "4000"


def trainer(stack: Stack, run_dir, **settings: str) -> Stack:
    return stack.with_env(KF_RUN_DIR=str(run_dir), **TINY, **settings)


def train_tiny(stack: Stack, *options: str):
    """One `python -m training` run on a small synthetic world."""
    return stack.run(
        "-m",
        "training",
        "--source",
        "synthetic",
        "--synthetic-events",
        SYNTHETIC_EVENTS,
        "--no-progress",
        *options,
        timeout=600,
    )


@pytest.fixture(scope="module")
def published(stack: Stack, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("training")
    configured = trainer(stack, run_dir, KF_TRAINING__MODEL__RANKER_WIDTH="24")
    result = train_tiny(configured, "--full-report")
    return configured, run_dir, result


def test_the_trainer_publishes_a_verified_bundle_with_its_report_and_announces_it(published):
    stack, run_dir, result = published
    registry = Registry(run_dir / "models")

    assert result.returncode == 0, result.stderr[-3000:]
    assert registry.current() == 1
    report = orjson.loads((registry.path(1) / REPORT / "report.json").read_bytes())
    test = report["splits"]["time"]["test"]
    assert {"DIN", "Embedding+MLP"} <= test["rankers"].keys()
    assert {SERVED, "sequential retrieval alone", "popularity", "item co-occurrence", "EASE",
            PREVIOUS} <= test["pipelines"].keys()  # fmt: skip
    assert 0.0 <= test["pipelines"][SERVED]["ndcg@10"] <= 1.0
    assert 0.0 < test["true_click_share_top10"][SERVED] <= 1.0  # the synthetic world's ground truth
    assert all((registry.path(1) / REPORT / name).stat().st_size > 0 for name in ("report.md", "pipelines.png"))
    announced = [
        orjson.loads(m.value()) for m in consume_all(stack, stack.settings.stack.topic_model_updates, expected=1)
    ]
    assert any(update["version"] == 1 and update["path"] == str(registry.path(1)) for update in announced)


def test_the_manifest_records_the_hyperparameters_the_models_were_trained_with(published):
    _, run_dir, _ = published

    manifest = orjson.loads((Registry(run_dir / "models").path(1) / MANIFEST).read_bytes())

    assert (
        manifest["hyperparameters"]
        == Hyperparameters(train_epochs=1, train_batch_size=128, ranker_width=24).model_dump()
    )


def test_a_published_bundle_loads_and_scores_in_a_fresh_process(published):
    stack, run_dir, _ = published

    loaded = stack.run("-c", LOAD_AND_SCORE, str(Registry(run_dir / "models").path(1)))

    assert loaded.returncode == 0, loaded.stderr[-3000:]
    ranked, unseen = loaded.stdout.splitlines()[-2:]
    assert ranked.startswith("1 20 ") and ranked.endswith("['i2', 'i3']")  # 20 items, reasons from the sequence
    assert unseen == "[] True"  # the excluded items never come back; an item is not its own neighbour


def test_the_bundles_numpy_models_equal_the_trained_models(published):
    _, run_dir, _ = published

    index = orjson.loads((Registry(run_dir / "models").path(1) / REPORT / "report.json").read_bytes())["index"]

    assert index["exported_user_tower_max_difference"] < 1e-4
    assert index["exported_ranker_max_difference"] < 1e-4


def test_a_bundle_with_one_corrupted_file_is_refused_with_a_clear_error(published, tmp_path):
    stack, run_dir, _ = published
    copy = tmp_path / "v000001"
    shutil.copytree(Registry(run_dir / "models").path(1), copy)
    model = copy / SERVED_MODELS
    data = model.read_bytes()
    model.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))

    loaded = stack.run("-c", LOAD_AND_SCORE, str(copy))

    assert loaded.returncode != 0
    assert f"BundleError: {model}: checksum mismatch" in loaded.stderr


@pytest.fixture(scope="module")
def worse_than_popularity(published):
    """A training run whose measured models are broken on purpose, with the run dir of `published`."""
    stack, run_dir, _ = published
    settings = stack.settings.updated(eval_last_n=0)
    run = TrainingRun(settings, load(settings, Source.SYNTHETIC, int(SYNTHETIC_EVENTS)), progress=False)
    measured = run.measure(run.splits[0])
    broken = measured.recommender
    # Retrieval finds no item a validation query could catch, and DIN scores every candidate alike,
    # so each answer is retrieval's order: NDCG@10 0 by construction. A permuted index (noise) was
    # not broken enough: it beat popularity in one run.
    relevant = set().union(*(query.relevant for query in measured.split.validation))
    ids = list(run.vocabulary.item_ids)
    kept = [row for row, item in enumerate(ids) if item not in relevant]
    broken.index = ItemIndex(settings.pipeline.faiss_exact_max_items).index(
        broken.embeddings[kept], [ids[row] for row in kept]
    )
    for variable in broken.ranker.trainable_variables:
        variable.assign(np.zeros(variable.shape, np.float32))
    return run, measured, run_dir


def gate(run: TrainingRun, measured, force: bool):
    """The gate's verdict on a split's models, as a from-scratch run asks for it."""
    return run.gate(measured.recommender, measured.split, measured.counts, force)


def gated_against(run: TrainingRun, measured, registry: Registry) -> tuple[bool, str]:
    """The gate's verdict on `measured` with `registry` as the live one, the run's own restored after."""
    own, run.registry = run.registry, registry
    try:
        verdict = gate(run, measured, force=False)
    finally:
        run.registry = own
    return verdict.allowed, verdict.text


def test_the_gate_refuses_a_model_worse_than_popularity_unless_forced(worse_than_popularity):
    run, measured, _ = worse_than_popularity
    refused, forced = gate(run, measured, force=False), gate(run, measured, force=True)
    why, why_forced = refused.text, forced.text

    # v1 learnt from this same data, so no validation query is new to it: popularity is the bar.
    assert not refused.allowed and why.startswith("refused: NDCG@10 ") and "popularity's" in why, why
    assert forced.allowed and why_forced.startswith("published with --force although NDCG@10")


def test_with_no_live_version_the_gate_still_holds_popularitys_floor(worse_than_popularity, tmp_path):
    run, measured, _ = worse_than_popularity
    allowed, why = gated_against(run, measured, Registry(tmp_path / "models"))

    assert not allowed and "popularity's" in why and "no live version yet" in why, why


def test_with_a_live_version_that_cannot_be_loaded_the_gate_still_holds_popularitys_floor(
    worse_than_popularity, tmp_path
):
    run, measured, run_dir = worse_than_popularity
    shutil.copytree(run_dir / "models", tmp_path / "models")
    registry = Registry(tmp_path / "models")
    damaged = registry.path(registry.current()) / SERVED_MODELS
    damaged.write_bytes(damaged.read_bytes() + b"x")
    allowed, why = gated_against(run, measured, registry)

    assert not allowed and "popularity's" in why and "cannot be loaded" in why, why


def test_the_scheduler_survives_a_failed_run_skips_while_little_is_new_and_continues_the_live_version(
    stack: Stack, tmp_path
):
    world = SyntheticWorld(WorldSpec(seed=11))
    catalogue = list(world.catalogue(1_735_689_600_000))
    added = catalogue[0].model_copy(update={"item_id": "zz-new-film"})
    items_topic = new_topic_named(stack, "items", partitions=1)
    publish(stack, items_topic, [(item.kafka_key, item.to_json()) for item in catalogue])
    configured = trainer(stack, tmp_path, KF_TOPIC_ITEMS=items_topic, KF_GATE_MARGIN="1.0").with_env(
        KF_INCREMENTAL_MIN_ROWS="300"
    )
    registry, log = Registry(tmp_path / "models"), tmp_path / "scheduler.log"
    directory = sample_log.log_directory(configured.settings.stack.samples_dir, configured.settings.stack.namespace)
    events = sorted(world.events(5000), key=lambda event: event.ts)

    def wait_for(condition) -> None:
        while not condition() and time.monotonic() < deadline and scheduler.poll() is None:
            time.sleep(0.5)

    with log.open("w") as output:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "training.scheduler", "--every", "1s", "--no-progress"],
            env=configured.env,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + SCHEDULER_TIMEOUT_S
            wait_for(lambda: "training run failed" in log.read_text())
            write_sample_log(directory, events[:4000], configured.settings)
            wait_for(lambda: "skipped: 0 sample rows since live v1's data" in log.read_text())
            publish(stack, items_topic, [(added.kafka_key, added.to_json())])
            write_sample_log(directory, events, configured.settings)
            wait_for(lambda: len(registry.versions()) >= 2)
        finally:
            scheduler.send_signal(signal.SIGTERM)
            scheduler.wait(timeout=300)

    text = log.read_text()
    assert registry.versions() == [1, 2] and registry.current() == 2, text[-3000:]
    assert "too little data" in text and "version 1: published" in text and "version 2: published" in text
    assert scheduler.returncode == 0
    # v1 from scratch: it trains and evaluates only what it serves, no comparison.
    report = orjson.loads((registry.path(1) / REPORT / "report.json").read_bytes())
    assert report["splits"]["time"]["test"]["pipelines"].keys() == {SERVED}
    assert report["splits"]["time"]["test"]["rankers"].keys() == {"DIN"}
    assert not [stage for stage in report["timings_s"] if "previous design" in stage or "Embedding+MLP" in stage]
    # v2 continues v1 on the events since v1's data, but for the newest part, held out for the gate.
    v1, v2 = registry.manifest(1), registry.manifest(2)
    assert (v1.parent_version, v1.from_scratch_at) == (None, None)
    assert (v2.parent_version, v2.from_scratch_at) == (1, v1.created_at)
    assert v1.trained_until == events[3999].ts < v2.trained_until < events[-1].ts
    incremental = orjson.loads((registry.path(2) / REPORT / "report.json").read_bytes())["incremental"]
    rows = bootstrap_rows(events, configured.settings.pipeline.features)  # the log: a row per labelled event
    assert incremental["new_rows"] == len([row for row in rows if v1.trained_until < row.event.ts <= v2.trained_until])
    # Every item keeps its index; the film published since is appended to the vocabulary.
    old_ids = orjson.loads((registry.path(1) / "vocabulary.json").read_bytes())["item_ids"]
    assert orjson.loads((registry.path(2) / "vocabulary.json").read_bytes())["item_ids"] == [*old_ids, added.item_id]
    # Continued, not retrained: a few steps at the final learning rate leave the known items' vectors
    # close to v1's, which a model trained from a fresh start would not be.
    before, after = (np.load(registry.path(v) / "item_embeddings.npy")[: len(old_ids)] for v in (1, 2))
    cosine = np.sum(before * after, axis=1) / np.linalg.norm(before, axis=1) / np.linalg.norm(after, axis=1)
    assert np.median(cosine) > 0.9, np.median(cosine)


def test_5_a_model_trained_on_shuffled_items_is_refused_at_the_default_margin_and_never_announced(
    stack: Stack, tmp_path
):
    world = SyntheticWorld(WorldSpec(seed=13))
    items_topic, updates = new_topic_named(stack, "items", 1), new_topic_named(stack, "updates", 1)
    publish(stack, items_topic, [(item.kafka_key, item.to_json()) for item in world.catalogue(1_735_689_600_000)])
    # 200 validation queries: the comparison with the live version needs 100 that are new to it.
    configured = trainer(stack, tmp_path, KF_TOPIC_ITEMS=items_topic, KF_TOPIC_MODEL_UPDATES=updates).with_env(
        KF_EVAL_MAX_QUERIES="400"
    )
    assert configured.settings.training.gate_margin == Settings().training.gate_margin  # the default margin
    registry = Registry(tmp_path / "models")
    directory = sample_log.log_directory(configured.settings.stack.samples_dir, configured.settings.stack.namespace)
    events = sorted(world.events(6000), key=lambda event: event.ts)
    # v1 learns from the older 80 %, so the next run's validation (80-90 % by time) is new to it.
    older, newer = events[:4800], events[4800:]
    write_sample_log(directory, older, configured.settings)
    # --force: a model this tiny may trail popularity, the bar with no live version; v2 is what is gated here.
    first = configured.run("-m", "training", "--no-progress", "--force", timeout=600)
    # The same users, times and item frequencies, but which user did what at the older moments is noise.
    shuffled_items = np.random.default_rng(0).permutation([event.item_id for event in older])
    noise = [event.model_copy(update={"item_id": item}) for event, item in zip(older, shuffled_items, strict=True)]
    write_sample_log(directory, noise + newer, configured.settings)

    second = configured.run("-m", "training", "--no-progress", timeout=600)

    assert first.returncode == 0 and registry.versions() == [1], first.stderr[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stdout.startswith("refused: DIN's AUC within its pools") or second.stdout.startswith(
        "refused: the served pipeline's NDCG@10"
    ), second.stdout
    assert "validation queries after live v1's data" in second.stdout, second.stdout
    assert registry.versions() == [1] and registry.current() == 1
    assert not list(registry.root.glob(".staging-*"))
    announced = [orjson.loads(m.value())["version"] for m in consume_to_end(stack, updates)]
    assert announced == [1]
